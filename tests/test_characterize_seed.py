"""``characterize --seed-compatible`` reproduces the paper's reference scripts (github.com/xirui-li/Frankenstein,
scripts/characterisation_energy.py + characterisation_diversity.py), and differs from the default exactly where
the reference deviates from docs/method.md: fp16 subtraction, the 1e8-element skip, the 1-D merger ln_q in the
projector's energy, and the energy plot's mean of per-matrix ratios."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import frankeneval.characterization.characterize as ch
from frankeneval.characterization import reference
from frankeneval.characterization.aggregate import summarize
from frankeneval.characterization.characterize import characterize
from frankeneval.characterization.measure import CharacterizeSettings, measure_update
from frankeneval.characterization.schema import MATRICES_FILE, RUN_FILE, SUMMARY_FILE
from frankeneval.cli import main
from frankeneval.core.results import read_jsonl
from frankeneval.errors import SpecError
from frankeneval.reports.characterization_plots import energy_per_layer_values, plot_energy_per_layer

LN_Q = "visual.merger.ln_q.weight"


# -- a bf16 copy of the tiny lineage ---------------------------------------------------------------------
def _bf16_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    total = 0
    for f in sorted(dst.glob("*.safetensors")):
        tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(f).items()}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, f, metadata={"format": "pt"})
    index_path = dst / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["metadata"]["total_size"] = total
    index_path.write_text(json.dumps(index))
    cfg_path = dst / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["torch_dtype"] = "bfloat16"
    cfg_path.write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def bf16_lineage(tiny_lineage, tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    paths = {m: _bf16_copy(Path(p), root / m) for m, p in tiny_lineage.paths.items()}
    assert {str(v.dtype) for v in load_file(next(paths["in"].glob("*.safetensors"))).values()} == {"torch.bfloat16"}
    return paths


def _cli(paths, out: Path, *extra: str) -> dict:
    rc = main(["characterize", "--base", str(paths["base"]), "--in", str(paths["in"]), "--rl", str(paths["rl"]),
               "--out", str(out), "--no-progress", "--device", "cpu", *extra])
    assert rc == 0
    return json.loads((out / SUMMARY_FILE).read_text())


@pytest.fixture(scope="module")
def bf16_runs(bf16_lineage, tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16runs")
    seed = _cli(bf16_lineage, root / "seed", "--seed-compatible")
    default = _cli(bf16_lineage, root / "default")
    return {
        "seed": (seed, {r["name"]: r for r in read_jsonl(root / "seed" / MATRICES_FILE)}),
        "default": (default, {r["name"]: r for r in read_jsonl(root / "default" / MATRICES_FILE)}),
    }


# -- the reference computation, re-implemented from docs/method.md + the reference's four rules ----------------------
def _load_fp16(member: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(member.glob("*.safetensors")):
        sd.update(load_file(f))
    return {k: v.to(torch.float16) for k, v in sd.items()}  # from_pretrained(torch_dtype=torch.float16)


def _unified_layer(name: str, n_vision: int) -> int | None:
    m = re.search(r"visual\.(?:blocks|layers)\.(\d+)\.", name)
    if m:
        return int(m.group(1)) - n_vision
    if "merger" in name:
        return 0
    m = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else None


def _svd_metrics(d: torch.Tensor) -> dict[str, float] | None:
    if d.dim() < 2 or d.numel() > 100_000_000:
        return None
    d = d.flatten(1) if d.dim() > 2 else d
    s = torch.linalg.svdvals(d)
    fro = torch.linalg.norm(d).item()
    pos = s[s > 1e-12]
    eff = math.exp(-(pos / pos.sum() * torch.log(pos / pos.sum())).sum().item()) if len(pos) else 0.0
    return {"stable_rank": fro**2 / (s[0].item() ** 2 + 1e-12), "effective_rank": eff}


def reference_characterization(paths: dict[str, Path]) -> tuple[dict, dict]:
    """Per-matrix and per-layer values of the reference scripts (plain torch on the safetensors files)."""
    n_vision = json.loads((paths["base"] / "config.json").read_text())["vision_config"]["depth"]
    base, in_, rl = (_load_fp16(paths[m]) for m in ("base", "in", "rl"))
    keys = [k for k in in_ if k in base and "weight" in k and "norm" not in k.lower()
            and _unified_layer(k, n_vision) is not None]
    per_matrix: dict[str, dict] = {}
    layers: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for k in keys:
        w_norm = torch.norm(in_[k].float()).item() + 1e-8
        entry = {"layer": _unified_layer(k, n_vision)}
        for d, delta in (("delta_in", in_[k] - base[k]), ("delta_rl", rl[k] - in_[k])):  # fp16 - fp16, in fp16
            delta = delta.float()
            fro = torch.norm(delta).item()
            entry[d] = {"fro": fro, "rel_fro": fro / w_norm, "svd": _svd_metrics(delta)}
        per_matrix[k] = entry
        lay = layers[entry["layer"]]
        for d in ("delta_in", "delta_rl"):
            lay[f"{d}/fro"].append(entry[d]["fro"])
            lay[f"{d}/rel_fro"].append(entry[d]["rel_fro"])
        if entry["delta_in"]["svd"] is not None and entry["delta_rl"]["svd"] is not None:  # the diversity script's skip
            for d in ("delta_in", "delta_rl"):
                for m in ("stable_rank", "effective_rank"):
                    lay[f"{d}/{m}"].append(entry[d]["svd"][m])
    return per_matrix, layers


def _rel_err(got: float, want: float) -> float:
    return 0.0 if got == want else abs(got - want) / max(abs(want), 1e-300)


def test_seed_compatible_reproduces_the_reference(bf16_lineage, bf16_runs):
    summary, records = bf16_runs["seed"]
    want, want_layers = reference_characterization(bf16_lineage)
    on_axis = {n: r for n, r in records.items() if r["layer"] is not None}
    assert set(records) == set(want)  # same selection: ln_q in; norms, biases, patch_embed, embed_tokens, lm_head out
    assert not summary.get("off_axis")
    errors: list[float] = []
    for name, ref in want.items():
        rec = on_axis[name]
        assert rec["seed_compatible"] is True and rec["layer"] == ref["layer"]
        for d in ("delta_in", "delta_rl"):
            errors += [_rel_err(rec[d]["fro"], ref[d]["fro"]), _rel_err(rec[d]["rel_fro"], ref[d]["rel_fro"])]
            if ref[d]["svd"] is None:
                assert "stable_rank" not in rec[d] and rec["spectra_skipped"] == reference.SKIP_VECTOR
                continue
            errors += [_rel_err(rec[d][m], ref[d]["svd"][m]) for m in ("stable_rank", "effective_rank")]
    by_layer = summary["aggregates"]["by_layer"]
    assert set(by_layer) == {str(k) for k in want_layers}
    for layer, vals in want_layers.items():
        g = by_layer[str(layer)]
        for key, xs in vals.items():
            d, m = key.split("/")
            assert g[d][m]["n"] == len(xs), (layer, key)
            errors.append(_rel_err(g[d][m]["mean"], sum(xs) / len(xs)))
            if m == "fro":
                errors.append(_rel_err(g[d][m]["sum"], sum(xs)))
    # the projector's layer-0 energy mean counts the 1-D ln_q (3 tensors), its spectra do not (2 matrices)
    g0 = by_layer["0"]
    assert g0["n"] == 3 and g0["delta_in"]["fro"]["n"] == 3 and g0["delta_in"]["stable_rank"]["n"] == 2
    assert on_axis[LN_Q]["delta_in"]["fro"] > 0
    worst = max(errors)
    print(f"seed-compatible vs independent reference: {len(errors)} values, max relative error {worst:.3g}")
    assert worst <= 1e-6


def test_every_output_records_the_switch(bf16_runs, tmp_path):
    for mode, flag in (("seed", True), ("default", False)):
        summary, records = bf16_runs[mode]
        assert summary["seed_compatible"] is flag and summary["run"]["seed_compatible"] is flag
        assert summary["run"]["settings"]["seed_compatible"] is flag
        assert all(r["seed_compatible"] is flag for r in records.values())
        assert (reference.DEVIATIONS if flag else reference.DEFAULT_DEVIATIONS) == summary["run"]["reference_deviation"]
    seed_summary, _ = bf16_runs["seed"]
    assert seed_summary["spectra_skipped"] == {LN_Q: reference.SKIP_VECTOR}
    assert seed_summary["skipped_by_reference_rule"] == []


# -- where the two behaviours differ ---------------------------------------------------------------------
def test_fp16_subtraction_rounds_where_float32_does_not():
    g = torch.Generator().manual_seed(0)
    base = 1000.0 + torch.randn((8, 16), generator=g)  # fp16 spacing 0.5 here
    in_ = base + 0.1  # below fp16 resolution at this magnitude
    rl = in_ + 0.3 * torch.randn((8, 16), generator=g)
    default = measure_update(base, in_, rl, CharacterizeSettings(rank_r=0))
    seed = measure_update(base, in_, rl, CharacterizeSettings(rank_r=0, seed_compatible=True))
    f32 = (in_ - base).norm().item()
    assert (default["delta_in"]["fro"] == pytest.approx(f32, rel=1e-6)
            and f32 == pytest.approx(0.1 * math.sqrt(128), rel=1e-3))
    fp16 = (in_.half() - base.half()).float()
    assert seed["delta_in"]["fro"] == pytest.approx(fp16.norm().item(), rel=1e-7)
    assert abs(seed["delta_in"]["fro"] - default["delta_in"]["fro"]) > 0.5 * default["delta_in"]["fro"]
    assert torch.equal(fp16 * 4, (fp16 * 4).round())  # the fp16 delta lives on the fp16 grid (steps of 0.25 / 0.5)
    assert seed["delta_rl"]["stable_rank"] != pytest.approx(default["delta_rl"]["stable_rank"], rel=1e-3)
    assert seed["svd_method"] == reference.SVD_METHOD and default["svd_method"] == "gram"
    # a float32 weight that is exact in fp16 (no rounding): the two agree
    small = torch.randn((8, 16), generator=g).half().float()
    same_d = measure_update(small, small * 2, small * 3, CharacterizeSettings(rank_r=0))
    same_s = measure_update(small, small * 2, small * 3, CharacterizeSettings(rank_r=0, seed_compatible=True))
    assert same_s["delta_in"]["fro"] == pytest.approx(same_d["delta_in"]["fro"], rel=1e-6)


def test_over_limit_matrices_skipped_only_under_the_switch(tiny_lineage, tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "REFERENCE_MAX_ELEMENTS", 5000)
    args = (tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl)
    kw = dict(device="cpu", progress=False)
    default = characterize(*args, tmp_path / "d", settings=CharacterizeSettings(sections=("llm",)), **kw)
    seed = characterize(*args, tmp_path / "s", settings=CharacterizeSettings(sections=("llm",), seed_compatible=True),
                        **kw)
    d_recs = {r["name"]: r for r in read_jsonl(tmp_path / "d" / MATRICES_FILE)}
    s_recs = {r["name"]: r for r in read_jsonl(tmp_path / "s" / MATRICES_FILE)}
    big = sorted(n for n, r in d_recs.items() if r["numel"] > 5000)
    assert big and len(big) < len(d_recs)
    assert sorted(default["over_reference_limit"]) == big and default["skipped_by_reference_rule"] == []
    assert sorted(seed["skipped_by_reference_rule"]) == big
    for n in big:
        assert "stable_rank" in d_recs[n]["delta_rl"]  # default: measured (and said so)
        assert "stable_rank" not in s_recs[n]["delta_rl"] and s_recs[n]["spectra_skipped"] == reference.SKIP_OVER_LIMIT
        assert s_recs[n]["delta_rl"]["fro"] > 0  # the energy script has no limit
    layer = str(d_recs[big[0]]["layer"])
    n_small = sum(1 for r in s_recs.values() if str(r["layer"]) == layer and r["numel"] <= 5000)
    assert seed["aggregates"]["by_layer"][layer]["delta_in"]["stable_rank"]["n"] == n_small
    assert (default["aggregates"]["by_layer"][layer]["delta_in"]["stable_rank"]["n"]
            == default["aggregates"]["by_layer"][layer]["n"])


def test_ln_q_counted_only_under_the_switch(bf16_runs):
    d_summary, d_recs = bf16_runs["default"]
    s_summary, s_recs = bf16_runs["seed"]
    assert LN_Q not in d_recs and LN_Q in s_recs
    assert s_recs[LN_Q]["layer"] == 0 and s_recs[LN_Q]["matrix_shape"] == s_recs[LN_Q]["shape"]
    d0, s0 = d_summary["aggregates"]["by_layer"]["0"], s_summary["aggregates"]["by_layer"]["0"]
    assert (d0["n"], s0["n"]) == (2, 3)
    mats = [r["delta_in"]["fro"] for n, r in s_recs.items() if r["layer"] == 0 and n != LN_Q]
    assert s0["delta_in"]["fro"]["mean"] == pytest.approx((sum(mats) + s_recs[LN_Q]["delta_in"]["fro"]) / 3)
    assert s0["delta_in"]["fro"]["mean"] != pytest.approx(d0["delta_in"]["fro"]["mean"], rel=1e-3)


def _record(name: str, layer: int, fro: float, norm_in: float) -> dict:
    return {"name": name, "layer": layer, "section": "llm", "component": "mlp", "region": "early", "norm_in": norm_in,
            "cos_in_rl": None, "delta_in": {"fro": fro, "rel_fro": fro / norm_in},
            "delta_rl": {"fro": fro / 2, "rel_fro": fro / 2 / norm_in}}


def test_energy_plot_mean_of_ratios_vs_ratio_of_means(tmp_path):
    # layer 1: a small matrix that changed a lot and a large one that hardly changed
    recs = [_record("a", 1, 1.0, 1.0), _record("b", 1, 1.0, 100.0), _record("c", 2, 3.0, 4.0)]
    table = {flag: summarize(recs, {"seed_compatible": flag, "settings": {}}, n_planned=3) for flag in (False, True)}
    xs, default = energy_per_layer_values(table[False])
    assert xs == [1, 2]
    assert default["delta_in"][0] == pytest.approx(math.sqrt(2) / math.sqrt(1 + 100**2))  # ratio of aggregates
    _, seed = energy_per_layer_values(table[True])  # follows the run's flag
    assert seed["delta_in"][0] == pytest.approx((1.0 + 0.01) / 2)  # mean of per-matrix ratios
    assert seed["delta_rl"][0] == pytest.approx((0.5 + 0.005) / 2)
    assert seed["delta_in"][1] == default["delta_in"][1] == pytest.approx(0.75)  # one matrix: the same
    _, absolute = energy_per_layer_values(table[True], relative=False)
    assert absolute["delta_in"][0] == pytest.approx(1.0)  # mean ‖Δ‖, not sqrt(Σ‖Δ‖²) = 1.414
    _, forced = energy_per_layer_values(table[True], seed_compatible=False)
    assert forced == default
    for flag in (False, True):
        png = plot_energy_per_layer(table[flag], tmp_path / f"e{flag}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the cache / resume keys on the switch ----------------------------------------------------------------
def test_resume_never_mixes_the_two(tiny_lineage, tmp_path, monkeypatch):
    args = (tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl)
    kw = dict(device="cpu", progress=False)
    plain, seed = (CharacterizeSettings(sections=("projector",)),
                   CharacterizeSettings(sections=("projector",), seed_compatible=True))
    characterize(*args, tmp_path / "a", settings=plain, **kw)
    with pytest.raises(SpecError, match="different settings"):
        characterize(*args, tmp_path / "a", settings=seed, **kw)
    characterize(*args, tmp_path / "b", settings=seed, **kw)
    with pytest.raises(SpecError, match="different settings"):
        characterize(*args, tmp_path / "b", settings=plain, **kw)
    calls: list[int] = []
    real = ch.measure_update
    monkeypatch.setattr(ch, "measure_update", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert characterize(*args, tmp_path / "b", settings=seed, **kw)["seed_compatible"] is True and calls == []
    # records of the other mode in a directory whose run.json was lost are refused, not reused
    (tmp_path / "b" / RUN_FILE).unlink()
    with pytest.raises(SpecError, match="seed_compatible=True"):
        characterize(*args, tmp_path / "b", settings=plain, **kw)
    # a run written before the switch existed (no seed_compatible anywhere) resumes as the default
    run = json.loads((tmp_path / "a" / RUN_FILE).read_text())
    del run["resume_key"]["settings"]["seed_compatible"]
    (tmp_path / "a" / RUN_FILE).write_text(json.dumps(run))
    lines = [json.loads(x) for x in (tmp_path / "a" / MATRICES_FILE).read_text().splitlines()]
    (tmp_path / "a" / MATRICES_FILE).write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "seed_compatible"}) + "\n" for r in lines))
    assert characterize(*args, tmp_path / "a", settings=plain, **kw)["seed_compatible"] is False and calls == []
    with pytest.raises(SpecError, match="different settings"):
        characterize(*args, tmp_path / "a", settings=seed, **kw)


def test_switch_refuses_what_the_reference_cannot_do(tiny_lineage, tmp_path):
    with pytest.raises(SpecError, match="svdvals"):
        CharacterizeSettings(seed_compatible=True, svd_method="gram")
    rc = main(["characterize", "--compare", f"A={tiny_lineage.in_},{tiny_lineage.rl}",
               f"B={tiny_lineage.rl},{tiny_lineage.in_}",
               "--out", str(tmp_path / "cmp"), "--seed-compatible", "--no-progress"])
    assert rc != 0


def test_reference_axis_labels_shown_where_they_differ():
    from frankeneval.characterization.aggregate import reference_axis

    shallow = [{"section": "vision", "layer": -2 + b, "block": b} for b in range(2)] + [
        {"section": "llm", "layer": 1, "block": 0}]
    assert reference_axis(shallow)["labels"] == {"-2": -32, "-1": -31}
    full = [{"section": "vision", "layer": -32 + b, "block": b} for b in range(32)]
    assert reference_axis(full) is None
