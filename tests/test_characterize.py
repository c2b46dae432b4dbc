"""Update characterization on the tiny lineage: planted structure shows, metrics match numpy, streaming
reads each tensor once, resume skips finished matrices, mismatches fail clearly, plots are written."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

import frankeneval.characterization.characterize as ch
from frankeneval.characterization.characterize import characterize
from frankeneval.characterization.compare import LineageRef, compare
from frankeneval.characterization.measure import CharacterizeSettings
from frankeneval.characterization.plan import plan_matrices
from frankeneval.characterization.schema import COMPARE_FILE, MATRICES_FILE
from frankeneval.core.results import read_jsonl
from frankeneval.errors import ArchitectureMismatch, SpecError
from frankeneval.miniature.lineage import planted_rl_layers
from frankeneval.weights.checkpoint import Checkpoint
from frankeneval.weights.tensor_stream import stream_tensors


@pytest.fixture(scope="module")
def full_run(tiny_lineage, tmp_path_factory):
    out = tmp_path_factory.mktemp("char")
    summary = characterize(tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl, out, device="cpu", progress=False)
    return out, summary, {r["name"]: r for r in read_jsonl(out / MATRICES_FILE)}


def test_every_analysed_matrix_is_measured_once(full_run, tiny_lineage):
    out, summary, records = full_run
    plan = plan_matrices(Checkpoint.open(tiny_lineage.base))
    assert sorted(records) == sorted(p.name for p in plan)
    assert len(read_jsonl(out / MATRICES_FILE)) == len(plan)
    assert summary["complete"] and summary["n_matrices"] == len(plan)
    for r in records.values():
        assert len(r["shape"]) >= 2 and r["component"] != "norm" and r["name"].endswith(".weight")
    # off-axis matrices are measured and listed
    assert "model.embed_tokens.weight" in summary["off_axis"]
    assert "visual.patch_embed.proj.weight" in records  # conv weight, flattened
    conv = records["visual.patch_embed.proj.weight"]
    assert conv["matrix_shape"] == [conv["shape"][0], math.prod(conv["shape"][1:])]


def test_planted_rl_structure_shows(full_run, tiny_lineage):
    _, summary, records = full_run
    spec = tiny_lineage.spec
    late = set(planted_rl_layers(spec))
    assert late == {4, 5}
    for r in records.values():
        if r["section"] == "llm" and r["block"] in late:
            assert r["delta_rl"]["stable_rank"] == pytest.approx(spec.rl_rank, rel=1e-3), r["name"]
            assert r["delta_rl"]["effective_rank"] == pytest.approx(spec.rl_rank, rel=1e-3), r["name"]
        if r["section"] in ("vision", "projector"):  # RL leaves the vision tower untouched
            assert r["delta_rl"]["fro"] == 0.0 and r["delta_rl"]["stable_rank"] is None
        # ΔIN is dense: far above the planted rank everywhere
        assert r["delta_in"]["stable_rank"] > 2 * spec.rl_rank, r["name"]
        assert r["delta_in"]["effective_rank"] > 4 * spec.rl_rank, r["name"]
    by_layer = summary["aggregates"]["by_layer"]
    for j in range(spec.num_hidden_layers):
        sr = by_layer[str(j + 1)]["delta_rl"]["stable_rank"]["mean"]
        assert (sr == pytest.approx(spec.rl_rank, rel=1e-3)) == (j in late)
    for layer in range(-spec.vision_depth, 1):
        assert by_layer[str(layer)]["energy"]["delta_rl_fro"] == 0.0
        assert by_layer[str(layer)]["energy"]["delta_in_fro"] > 0.0
    regions = summary["aggregates"]["by_region"]
    assert regions["late"]["energy"]["delta_rl_rel_fro"] > 100 * regions["early"]["energy"]["delta_rl_rel_fro"]


@pytest.mark.parametrize("name", ["model.layers.5.mlp.down_proj.weight", "visual.blocks.1.attn.qkv.weight",
                                  "visual.patch_embed.proj.weight"])
def test_record_matches_independent_numpy(full_run, tiny_lineage, name):
    _, _, records = full_run
    rec = records[name]
    w = {k: Checkpoint.open(p).read(name).numpy().astype(np.float64) for k, p in tiny_lineage.paths.items()}
    w = {k: v.reshape(v.shape[0], -1) for k, v in w.items()}
    for d, (a, b) in {"delta_in": ("base", "in"), "delta_rl": ("in", "rl")}.items():
        m = (w[b].astype(np.float32) - w[a].astype(np.float32)).astype(np.float64)  # float32 delta
        fro = np.linalg.norm(m)
        assert rec[d]["fro"] == pytest.approx(fro, rel=1e-5, abs=1e-30)
        assert rec[d]["rel_fro"] == pytest.approx(fro / np.linalg.norm(w["in"]), rel=1e-5, abs=1e-30)
        if fro == 0:
            continue
        s = np.linalg.svd(m, compute_uv=False)
        good = s > 1e-5 * s[0]  # the numerical null space is round-off for any method
        np.testing.assert_allclose(rec[d]["sigma_top"][: good[:50].sum()], s[:50][good[:50]], rtol=1e-5)
        assert rec[d]["spectral_norm"] == pytest.approx(s[0], rel=1e-5)
        assert rec[d]["nuclear_norm"] == pytest.approx(s.sum(), rel=1e-5)
        assert rec[d]["stable_rank"] == pytest.approx(fro**2 / s[0] ** 2, rel=1e-5)
        pos = s[s > 1e-12]
        p = pos / pos.sum()
        assert rec[d]["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)
        if good.all():
            assert rec[d]["condition_number"] == pytest.approx(s[0] / (s[-1] + 1e-12), rel=1e-4)
            assert rec[d]["log_spectral_volume"] == pytest.approx(np.log(s[:50] + 1e-12).sum(), rel=1e-5)
    assert rec["norm_in"] == pytest.approx(np.linalg.norm(w["in"]), rel=1e-6)


def test_aggregates_are_means_and_sums_of_records(full_run):
    _, summary, records = full_run
    llm_attn = [r for r in records.values() if r["section"] == "llm" and r["component"] == "attention"]
    g = summary["aggregates"]["by_section_component"]["llm/attention"]
    assert g["n"] == len(llm_attn)
    vals = [r["delta_in"]["stable_rank"] for r in llm_attn]
    assert g["delta_in"]["stable_rank"]["sum"] == pytest.approx(sum(vals))
    assert g["delta_in"]["stable_rank"]["mean"] == pytest.approx(sum(vals) / len(vals))
    assert g["energy"]["delta_rl_fro"] == pytest.approx(math.sqrt(sum(r["delta_rl"]["fro"] ** 2 for r in llm_attn)))


def test_energy_only_matches_full_run(tiny_lineage, tmp_path, full_run):
    _, _, full = full_run
    characterize(tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl, tmp_path,
                 settings=CharacterizeSettings(spectra=False, sections=("llm",)), device="cpu", progress=False)
    recs = read_jsonl(tmp_path / MATRICES_FILE)
    assert recs and all(r["section"] == "llm" for r in recs)
    for r in recs:
        assert "stable_rank" not in r["delta_rl"]
        assert r["delta_rl"]["fro"] == pytest.approx(full[r["name"]]["delta_rl"]["fro"], rel=1e-12)
        assert r["delta_in"]["fro"] == pytest.approx(full[r["name"]]["delta_in"]["fro"], rel=1e-12)


def test_stream_reads_each_tensor_once_in_stored_dtype(tiny_lineage):
    ckpts = [Checkpoint.open(p) for p in (tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl)]
    names = [p.name for p in plan_matrices(ckpts[0])]
    with stream_tensors(ckpts, names, torch.device("cpu"), queue_depth=1) as (items, bytes_read):
        seen = []
        for name, tensors in items:
            seen.append(name)
            for c, t in zip(ckpts, tensors):
                assert torch.equal(t, c.read(name))
        total = bytes_read()
    assert seen == names
    expected = sum(c.read(n).numel() * c.read(n).element_size() for c in ckpts for n in names)
    assert total == expected


def test_missing_tensor_fails_clearly(tiny_lineage, tmp_path):
    broken = tmp_path / "rl"
    shutil.copytree(tiny_lineage.rl, broken)
    index_path = broken / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["model.layers.2.self_attn.o_proj.weight"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(ArchitectureMismatch, match=r"rl lacks model\.layers\.2\.self_attn\.o_proj\.weight"):
        characterize(tiny_lineage.base, tiny_lineage.in_, broken, tmp_path / "out", device="cpu", progress=False)
    from frankeneval.cli import main

    rc = main(["characterize", "--base", str(tiny_lineage.base), "--in", str(tiny_lineage.in_), "--rl", str(broken),
               "--out", str(tmp_path / "out2"), "--no-progress"])
    assert rc == 1


def test_resume_skips_finished_matrices(tiny_lineage, tmp_path, monkeypatch, full_run):
    _, _, full = full_run
    real = ch.measure_update
    calls: list[int] = []
    k = 9

    def interrupted(*args, **kwargs):
        if len(calls) == k:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ch, "measure_update", interrupted)
    args = (tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl, tmp_path)
    llm = CharacterizeSettings(sections=("llm",))
    n_llm = sum(r["section"] == "llm" for r in full.values())
    with pytest.raises(KeyboardInterrupt):
        characterize(*args, settings=llm, device="cpu", progress=False)
    assert len(read_jsonl(tmp_path / MATRICES_FILE)) == k
    # a torn last line (killed mid-write) is dropped on resume
    with open(tmp_path / MATRICES_FILE, "a") as f:
        f.write('{"name": "model.layers.0.mlp.up_pro')

    calls.clear()

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ch, "measure_update", counting)
    summary = characterize(*args, settings=llm, device="cpu", progress=False)
    assert len(calls) == n_llm - k
    recs = read_jsonl(tmp_path / MATRICES_FILE)
    assert len(recs) == n_llm and len({r["name"] for r in recs}) == n_llm
    assert summary["complete"]
    for r in recs:
        assert r["delta_rl"]["fro"] == pytest.approx(full[r["name"]]["delta_rl"]["fro"], rel=1e-12)
    # a finished run reruns for free
    calls.clear()
    characterize(*args, settings=llm, device="cpu", progress=False)
    assert calls == []
    # other settings in the same directory are refused
    with pytest.raises(SpecError, match="different settings"):
        characterize(*args, settings=CharacterizeSettings(top_k=10, sections=("llm",)), device="cpu", progress=False)


def test_compare_detects_shared_and_opposite_rl_updates(tiny_lineage, tmp_path, full_run):
    run_dir, _, _ = full_run
    same = LineageRef("A", str(tiny_lineage.in_), str(tiny_lineage.rl))
    flipped = LineageRef("B", str(tiny_lineage.rl), str(tiny_lineage.in_))  # ΔRL_B = -ΔRL_A
    summary = compare([same, flipped, str(run_dir)], tmp_path, rank_r=4, sections=["llm"], device="cpu", progress=False)
    recs = read_jsonl(tmp_path / COMPARE_FILE)
    assert recs and summary["complete"]
    label_c = run_dir.name
    for r in recs:
        pairs = {(p["a"], p["b"]): p for p in r["pairs"]}
        assert pairs[("A", "B")]["cosine"] == pytest.approx(-1.0, abs=1e-9)
        assert pairs[("A", label_c)]["cosine"] == pytest.approx(1.0, abs=1e-9)
        if r["block"] in planted_rl_layers(tiny_lineage.spec):  # planted rank 4: top-4 subspaces are exact
            assert pairs[("A", "B")]["overlap_left"] == pytest.approx(1.0, abs=1e-6)
            assert pairs[("A", "B")]["overlap_right"] == pytest.approx(1.0, abs=1e-6)
    layer6 = summary["aggregates"]["by_layer"]["6"]["pairs"]
    assert layer6["A|B"]["cosine"] == pytest.approx(-1.0, abs=1e-9)
    with pytest.raises(SpecError):
        compare([same], tmp_path / "x", device="cpu", progress=False)


def test_plots_are_written(full_run, tmp_path, tiny_lineage):
    from frankeneval.reports.characterization_plots import plot_run

    run_dir, _, _ = full_run
    written = plot_run(run_dir, tmp_path / "plots")
    names = {p.name for p in written}
    assert {"energy_per_layer.png", "rank_per_layer.png", "spectra.png"} <= names
    cmp_dir = tmp_path / "cmp"
    compare([LineageRef("A", str(tiny_lineage.in_), str(tiny_lineage.rl)),
             LineageRef("B", str(tiny_lineage.rl), str(tiny_lineage.in_))],
            cmp_dir, rank_r=2, sections=["llm"], device="cpu", progress=False)
    from frankeneval.cli import main

    assert main(["plot", str(cmp_dir), "--out", str(tmp_path / "plots2")]) == 0
    written += sorted((tmp_path / "plots2").glob("*.png"))
    assert {"compare_cosine.png", "compare_overlap_left.png"} <= {p.name for p in written}
    for p in written:
        assert p.is_file() and p.stat().st_size > 1000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
