"""The reference's diversity view (github.com/xirui-li/Frankenstein scripts/characterisation_diversity.py):
spectral norm σ₁ and log spectral volume Σ_{i≤k} log(σᵢ + 1e-12) per matrix (hand-computed on small matrices) and
per layer, the representative spectra of the early / middle / late LLM thirds, the --weight-filter / --llm-only
selection (recorded, and never mixed on resume), and the two plots on the tiny lineage."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import frankeneval.characterization.characterize as ch
from frankeneval.characterization import reference
from frankeneval.characterization.aggregate import diversity, summarize
from frankeneval.characterization.characterize import characterize
from frankeneval.characterization.measure import CharacterizeSettings, measure_update
from frankeneval.characterization.plan import plan_matrices
from frankeneval.characterization.schema import MATRICES_FILE, RUN_FILE, SUMMARY_FILE
from frankeneval.characterization.spectra import singular_values, spectral_metrics
from frankeneval.core.results import read_jsonl
from frankeneval.errors import FrankenevalError, SpecError
from frankeneval.weights.architecture import default_architecture
from frankeneval.weights.checkpoint import Checkpoint

LOG_EPS = math.log(1e-12)  # what a zero singular value adds to the log spectral volume
PNG = b"\x89PNG\r\n\x1a\n"


def logvol(*sigmas: float) -> float:
    """The reference's log spectral volume, by hand: Σ log(σ + 1e-12)."""
    return sum(math.log(s + 1e-12) for s in sigmas)


# -- per matrix: hand-computed values ----------------------------------------------------------------------------
def _rect() -> torch.Tensor:
    m = torch.zeros(3, 5, dtype=torch.float64)  # σ = 4, 2, 0.5 (a permuted diagonal), fewer σ than volume_k
    m[0, 4], m[1, 0], m[2, 2] = 0.5, -4.0, 2.0
    return m


CASES = [  # (matrix, its singular values, descending)
    (torch.diag(torch.tensor([0.5, 4.0, 2.0], dtype=torch.float64)), [4.0, 2.0, 0.5]),
    (torch.tensor([[0.0, -2.0], [3.0, 0.0]], dtype=torch.float64), [3.0, 2.0]),  # a signed permutation: σ = 3, 2
    (torch.diag(torch.tensor([3.0, 0.0], dtype=torch.float64)), [3.0, 0.0]),  # a zero σ counts as log(1e-12)
    (_rect(), [4.0, 2.0, 0.5]),
    (torch.zeros(3, 4, dtype=torch.float64), [0.0, 0.0, 0.0]),  # Δ = 0: σ₁ = 0, volume = 3 log(1e-12)
]


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_spectral_norm_and_log_volume_by_hand(case, method):
    m, sigma = CASES[case]
    s = singular_values(m, method=method)
    for k in (50, 2, 1):
        got = spectral_metrics(s, volume_k=k)
        assert got["spectral_norm"] == pytest.approx(sigma[0], rel=1e-12, abs=1e-300)
        assert got["log_spectral_volume"] == pytest.approx(logvol(*sigma[:k]), rel=1e-12)
        assert got["sigma_top"] == pytest.approx(sigma, rel=1e-12, abs=1e-300)
    # the closed forms: the top 50 of (4, 2, 0.5) multiply to 4; of (3, 0) to 3 · 1e-12
    if sigma == [4.0, 2.0, 0.5]:
        assert spectral_metrics(s)["log_spectral_volume"] == pytest.approx(math.log(4.0), abs=1e-11)
        assert spectral_metrics(s, volume_k=2)["log_spectral_volume"] == pytest.approx(math.log(8.0), abs=1e-11)
    if sigma == [3.0, 0.0]:
        assert spectral_metrics(s)["log_spectral_volume"] == pytest.approx(math.log(3.0) + LOG_EPS, abs=1e-11)
    if sigma[0] == 0.0:
        assert spectral_metrics(s)["log_spectral_volume"] == pytest.approx(3 * LOG_EPS, rel=1e-15)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_reference_arithmetic_by_hand(case):
    """The reference's own arithmetic (float32 svdvals, float32 log): σ of these matrices are exact in float32."""
    m, sigma = CASES[case]
    m32 = m.to(torch.float32)
    got = reference.spectral_metrics(reference.singular_values(m32), float(torch.linalg.norm(m32)), volume_k=50)
    assert got["spectral_norm"] == sigma[0]  # exact: the σ are small powers of 2 and 3
    expected = float(torch.log(torch.tensor(sigma, dtype=torch.float32) + 1e-12).sum())
    assert got["log_spectral_volume"] == pytest.approx(expected, rel=1e-6)
    assert got["log_spectral_volume"] == pytest.approx(logvol(*sigma), rel=1e-6)


@pytest.mark.parametrize("seed", [False, True])
def test_measure_update_by_hand(seed):
    """ΔIN = diag(4, 2, 0.5) - 0 and ΔRL = [[0, -2, 0], [3, 0, 0], [0, 0, 0]] (σ = 3, 2, 0) through measure_update,
    with frankeneval's and the reference's arithmetic (fp16 holds these values exactly)."""
    base = torch.zeros(3, 3)
    in_ = torch.diag(torch.tensor([4.0, 2.0, 0.5]))
    rl = in_ + torch.tensor([[0.0, -2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    rec = measure_update(base, in_, rl, CharacterizeSettings(rank_r=0, seed_compatible=seed))
    tol = {"rel": 1e-6} if seed else {"rel": 1e-12}
    assert rec["delta_in"]["spectral_norm"] == pytest.approx(4.0, **tol)
    assert rec["delta_in"]["log_spectral_volume"] == pytest.approx(math.log(4.0), abs=1e-5 if seed else 1e-11)
    assert rec["delta_rl"]["spectral_norm"] == pytest.approx(3.0, **tol)
    assert rec["delta_rl"]["log_spectral_volume"] == pytest.approx(math.log(6.0) + LOG_EPS, **tol)


# -- per layer and per third: synthetic records ---------------------------------------------------------------------
def _record(name: str, layer: int | None, *, section: str = "llm", region: str | None = None,
            sn: tuple[float, float] = (1.0, 1.0), lv: tuple[float, float] = (0.0, 0.0), spectra: bool = True):
    def delta(i: int) -> dict:
        d = {"fro": 1.0, "rel_fro": 1.0}
        if spectra:
            d.update(spectral_norm=sn[i], log_spectral_volume=lv[i], sigma_top=[sn[i], sn[i] / 2])
        return d

    return {"name": name, "layer": layer, "section": section, "component": "mlp", "region": region, "norm_in": 1.0,
            "cos_in_rl": None, "delta_in": delta(0), "delta_rl": delta(1)}


def test_per_layer_values_are_means_over_the_layers_matrices():
    recs = [
        _record("visual.blocks.0.mlp.down_proj.weight", -2, section="vision", sn=(1.0, 0.0), lv=(-1.0, -30.0)),
        _record("visual.blocks.0.mlp.up_proj.weight", -2, section="vision", sn=(3.0, 0.0), lv=(-3.0, -50.0)),
        _record("visual.blocks.0.attn.qkv.weight", -2, section="vision", spectra=False),  # spectra skipped: left out
        _record("visual.merger.mlp.0.weight", 0, section="projector", sn=(2.5, 0.5), lv=(7.0, 8.0)),
        _record("model.embed_tokens.weight", None, section="embeddings", sn=(9.0, 9.0)),  # off the axis
    ]
    div = diversity(recs, volume_k=50)
    assert set(div["by_layer"]) == {"-2", "0"}
    assert div["by_layer"]["-2"] == {"n": 2, "delta_in": {"spectral_norm": 2.0, "log_spectral_volume": -2.0},
                                     "delta_rl": {"spectral_norm": 0.0, "log_spectral_volume": -40.0}}
    assert div["by_layer"]["0"] == {"n": 1, "delta_in": {"spectral_norm": 2.5, "log_spectral_volume": 7.0},
                                    "delta_rl": {"spectral_norm": 0.5, "log_spectral_volume": 8.0}}
    assert div["region_spectra"] == {"early": None, "middle": None, "late": None}
    assert div["volume_k"] == 50
    assert diversity([_record("x", 1, spectra=False)]) is None  # energy only: no diversity view


def _llm_records(n_layers: int, subs: tuple[str, ...]) -> list[dict]:
    from frankeneval.weights.layermap import llm_region

    paths = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "down_proj": "mlp.down_proj"}
    recs = [_record(f"model.layers.{j}.{paths[s]}.weight", j + 1, region=llm_region(j, n_layers), sn=(j + 1.0, 1.0))
            for j in range(n_layers) for s in subs]
    return sorted(recs, key=lambda r: r["name"])  # file order: alphabetical (mlp.down_proj before self_attn.q_proj)


def test_representative_of_each_third_is_the_middle_entry_sorted_by_layer_then_module_order():
    """6 layers (thirds 1-2 | 3-4 | 5-6), q_proj and down_proj per layer: each third has 4 candidates, sorted
    (layer 1 q, layer 1 down, layer 2 q, layer 2 down) -- q_proj is registered before down_proj, which is the
    reference's state_dict order -- and index 4 // 2 = 2 is layer 2's q_proj."""
    recs = _llm_records(6, ("q_proj", "down_proj"))
    order = default_architecture().tensor_names(0, 6)
    spectra = diversity(recs, module_order=order)["region_spectra"]
    assert {k: (v["name"], v["layer"], v["index"], v["n_candidates"]) for k, v in spectra.items()} == {
        "early": ("model.layers.1.self_attn.q_proj.weight", 2, 2, 4),
        "middle": ("model.layers.3.self_attn.q_proj.weight", 4, 2, 4),
        "late": ("model.layers.5.self_attn.q_proj.weight", 6, 2, 4),
    }
    assert spectra["late"]["delta_in"] == [6.0, 3.0] and spectra["late"]["delta_rl"] == [1.0, 0.5]
    # without a module order, ties keep the records' order (here alphabetical: down_proj first)
    plain = diversity(recs)["region_spectra"]
    assert plain["early"]["name"] == "model.layers.1.mlp.down_proj.weight"


def test_representative_thirds_follow_the_region_rule_for_uneven_depths():
    """7 layers: t = 7 // 3 = 2, thirds 1-2 | 3-4 | 5-7 (the late third takes the remainder); one matrix per layer:
    early [1, 2] -> 2, middle [3, 4] -> 4, late [5, 6, 7] -> 6."""
    spectra = diversity(_llm_records(7, ("down_proj",)))["region_spectra"]
    assert {k: v["layer"] for k, v in spectra.items()} == {"early": 2, "middle": 4, "late": 6}
    assert spectra["late"]["n_candidates"] == 3 and spectra["late"]["index"] == 1


def test_summary_holds_the_diversity_view():
    recs = _llm_records(3, ("k_proj",))
    s = summarize(recs, {"settings": {"volume_k": 7}}, n_planned=3)
    assert s["diversity"]["volume_k"] == 7
    assert s["diversity"]["by_layer"]["2"]["delta_in"]["spectral_norm"] == 2.0
    assert s["diversity"]["by_layer"]["2"]["delta_in"]["spectral_norm"] == \
        s["aggregates"]["by_layer"]["2"]["delta_in"]["spectral_norm"]["mean"]


# -- the tiny lineage ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(tiny_lineage, tmp_path_factory):
    out = tmp_path_factory.mktemp("char_div")
    summary = characterize(tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl, out, device="cpu", progress=False,
                           settings=CharacterizeSettings(rank_r=0))
    return out, summary, read_jsonl(out / MATRICES_FILE)


def test_tiny_lineage_diversity_invariants(full_run, tiny_lineage):
    _, summary, records = full_run
    div = summary["diversity"]
    layers = sorted({r["layer"] for r in records if r["layer"] is not None})
    assert sorted(int(k) for k in div["by_layer"]) == layers
    for layer in layers:
        group = [r for r in records if r["layer"] == layer]
        got = div["by_layer"][str(layer)]
        assert got["n"] == len(group)
        for d in ("delta_in", "delta_rl"):
            for m in ("spectral_norm", "log_spectral_volume"):
                assert got[d][m] == pytest.approx(sum(r[d][m] for r in group) / len(group), rel=1e-12)
    # RL leaves the vision tower and the projector untouched: ΔRL = 0, so σ₁ = 0 and every σ adds log(1e-12)
    for r in records:
        if r["section"] in ("vision", "projector"):
            assert r["delta_rl"]["spectral_norm"] == 0.0
            k = min(50, r["delta_rl"]["n_sigma"])
            assert r["delta_rl"]["log_spectral_volume"] == pytest.approx(k * LOG_EPS, rel=1e-15)
    # 6 LLM layers, 7 matrices each: every third has 14 candidates; index 7 is the first (q_proj) of its 2nd layer
    spectra = div["region_spectra"]
    assert {k: (v["name"], v["n_candidates"], v["index"]) for k, v in spectra.items()} == {
        "early": ("model.layers.1.self_attn.q_proj.weight", 14, 7),
        "middle": ("model.layers.3.self_attn.q_proj.weight", 14, 7),
        "late": ("model.layers.5.self_attn.q_proj.weight", 14, 7),
    }
    by_name = {r["name"]: r for r in records}
    for rep in spectra.values():
        assert rep["delta_in"] == by_name[rep["name"]]["delta_in"]["sigma_top"]
        assert rep["delta_rl"] == by_name[rep["name"]]["delta_rl"]["sigma_top"]
    # the planted late ΔRL has rank rl_rank: its representative spectrum drops after rl_rank values
    late = spectra["late"]["delta_rl"]
    r = tiny_lineage.spec.rl_rank
    assert min(late[:r]) > 1e4 * max(late[r:])


def test_plots_on_the_tiny_lineage(full_run, tmp_path):
    from frankeneval.reports.characterization_plots import plot_run

    run_dir, _, _ = full_run
    written = plot_run(run_dir, tmp_path / "plots")
    names = {p.name for p in written}
    assert {"diversity_per_layer.png", "region_spectra.png"} <= names
    # a summary.json written before the diversity view existed: computed from matrices.jsonl
    old = tmp_path / "old"
    old.mkdir()
    for f in (RUN_FILE, MATRICES_FILE):
        shutil.copy(run_dir / f, old / f)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    del summary["diversity"]
    (old / SUMMARY_FILE).write_text(json.dumps(summary))
    written_old = plot_run(old, tmp_path / "plots_old")
    assert {"diversity_per_layer.png", "region_spectra.png"} <= {p.name for p in written_old}
    # drawing again into the same folder replaces our own figures
    again = plot_run(run_dir, tmp_path / "plots")
    for p in [*written, *written_old, *again]:
        assert p.is_file() and p.stat().st_size > 1000 and p.read_bytes()[:8] == PNG


# -- the selection: --weight-filter and --llm-only ------------------------------------------------------------------
def test_weight_filter_is_a_plain_substring_of_any_name_the_tensor_goes_by(tiny_lineage):
    ckpt = Checkpoint.open(tiny_lineage.base)
    every = plan_matrices(ckpt)
    down = {p.name for p in plan_matrices(ckpt, weight_filter="down_proj")}
    assert down == {p.name for p in every if "down_proj" in p.name}
    n_llm, n_vis = tiny_lineage.spec.num_hidden_layers, tiny_lineage.spec.vision_depth
    assert len(down) == n_llm + n_vis  # the vision blocks have an mlp.down_proj too
    assert {p.name for p in plan_matrices(ckpt, weight_filter="down_proj", llm_only=True)} == {
        f"model.layers.{j}.mlp.down_proj.weight" for j in range(n_llm)}
    assert plan_matrices(ckpt, weight_filter="down_.*") == []  # not a regex
    # transformers' in-memory names (model.language_model.*) count too, as the reference's state_dict may use them
    lm = {p.name for p in plan_matrices(ckpt, weight_filter="language_model")}
    assert lm == {p.name for p in every if p.role.section == "llm"} | {"model.embed_tokens.weight"}
    llm_only = plan_matrices(ckpt, llm_only=True)
    assert llm_only and {p.role.section for p in llm_only} == {"llm"} and all(p.role.layer > 0 for p in llm_only)
    assert llm_only == plan_matrices(ckpt, ["llm"])


def test_settings_refuse_an_empty_filter_or_an_empty_selection(tiny_lineage, tmp_path):
    with pytest.raises(SpecError, match="non-empty"):
        CharacterizeSettings(weight_filter="")
    with pytest.raises(SpecError, match="--llm-only"):
        CharacterizeSettings(llm_only=True, sections=("vision",))
    with pytest.raises(FrankenevalError, match=r"--weight-filter 'down_\.\*'"):
        characterize(tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl, tmp_path / "none", device="cpu",
                     progress=False, settings=CharacterizeSettings(weight_filter="down_.*"))
    assert not (tmp_path / "none" / MATRICES_FILE).exists()


def test_filtered_run_is_recorded_and_never_reused_with_another_selection(full_run, tiny_lineage, tmp_path,
                                                                          monkeypatch):
    _, _, full = full_run
    full = {r["name"]: r for r in full}
    args = (tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl, tmp_path)
    settings = CharacterizeSettings(rank_r=0, weight_filter="down_proj", llm_only=True)
    summary = characterize(*args, settings=settings, device="cpu", progress=False)
    recs = read_jsonl(tmp_path / MATRICES_FILE)
    n_llm = tiny_lineage.spec.num_hidden_layers
    assert sorted(r["name"] for r in recs) == sorted(f"model.layers.{j}.mlp.down_proj.weight" for j in range(n_llm))
    for r in recs:  # the same numbers as the unfiltered run
        for d in ("delta_in", "delta_rl"):
            for m in ("fro", "spectral_norm", "log_spectral_volume"):
                assert r[d][m] == pytest.approx(full[r["name"]][d][m], rel=1e-12)
    # the selection is recorded in run.json, its resume key and summary.json
    run = json.loads((tmp_path / RUN_FILE).read_text())
    for st in (run["settings"], run["resume_key"]["settings"], summary["run"]["settings"]):
        assert st["weight_filter"] == "down_proj" and st["llm_only"] is True
    assert {k: v["name"] for k, v in summary["diversity"]["region_spectra"].items()} == {
        "early": "model.layers.1.mlp.down_proj.weight", "middle": "model.layers.3.mlp.down_proj.weight",
        "late": "model.layers.5.mlp.down_proj.weight"}
    # the same selection resumes for free
    calls: list[int] = []
    real = ch.measure_update
    monkeypatch.setattr(ch, "measure_update", lambda *a, **k: calls.append(1) or real(*a, **k))
    characterize(*args, settings=settings, device="cpu", progress=False)
    assert calls == []
    # another selection in the same folder is refused, and nothing there changes
    before = {f: (tmp_path / f).read_bytes() for f in (RUN_FILE, MATRICES_FILE, SUMMARY_FILE)}
    others = [CharacterizeSettings(rank_r=0, weight_filter="up_proj", llm_only=True),
              CharacterizeSettings(rank_r=0, weight_filter="down_proj"),
              CharacterizeSettings(rank_r=0, llm_only=True),
              CharacterizeSettings(rank_r=0)]
    for other in others:
        with pytest.raises(SpecError, match="different settings"):
            characterize(*args, settings=other, device="cpu", progress=False)
    assert calls == []
    assert {f: (tmp_path / f).read_bytes() for f in before} == before


def test_a_run_from_before_the_filters_resumes_only_unfiltered(tiny_lineage, tmp_path, monkeypatch):
    """A run.json written before weight_filter / llm_only existed was measured with neither."""
    args = (tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl, tmp_path)
    plain = CharacterizeSettings(spectra=False, sections=("projector",))
    characterize(*args, settings=plain, device="cpu", progress=False)
    run = json.loads((tmp_path / RUN_FILE).read_text())
    for st in (run["settings"], run["resume_key"]["settings"]):
        del st["weight_filter"], st["llm_only"]
    (tmp_path / RUN_FILE).write_text(json.dumps(run))
    calls: list[int] = []
    real = ch.measure_update
    monkeypatch.setattr(ch, "measure_update", lambda *a, **k: calls.append(1) or real(*a, **k))
    characterize(*args, settings=plain, device="cpu", progress=False)
    assert calls == []
    with pytest.raises(SpecError, match="different settings"):
        characterize(*args, settings=CharacterizeSettings(spectra=False, sections=("projector",),
                                                          weight_filter="mlp"), device="cpu", progress=False)


def test_cli_filters_and_plot(tiny_lineage, tmp_path, capsys):
    from frankeneval.cli import main

    lineage = ["--base", str(tiny_lineage.base), "--in", str(tiny_lineage.in_), "--rl", str(tiny_lineage.rl)]
    out = tmp_path / "down"
    assert main(["characterize", *lineage, "--out", str(out), "--weight-filter", "down_proj", "--llm-only",
                 "--rank-r", "0", "--no-progress"]) == 0
    assert "selection: names containing 'down_proj', LLM layers only" in capsys.readouterr().out
    st = json.loads((out / RUN_FILE).read_text())["settings"]
    assert st["weight_filter"] == "down_proj" and st["llm_only"] is True
    assert main(["characterize", *lineage, "--out", str(out), "--rank-r", "0", "--no-progress"]) == 1  # refused
    assert "different settings" in capsys.readouterr().err
    assert main(["plot", str(out)]) == 0
    for name in ("diversity_per_layer.png", "region_spectra.png"):
        assert (out / "plots" / name).read_bytes()[:8] == PNG
    assert main(["characterize", "--compare", str(out), str(out), "--out", str(tmp_path / "cmp"),
                 "--weight-filter", "down_proj"]) == 1
    assert "--compare takes --sections" in capsys.readouterr().err


def test_seed_compatible_diversity_leaves_out_matrices_without_spectra(tiny_lineage, tmp_path):
    """Seed-compatible, the projector's 1-D ln_q.weight has energy only (the reference's diversity script drops it):
    layer 0's diversity means are over the two merger matrices alone, in float32 arithmetic."""
    summary = characterize(tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl, tmp_path, device="cpu",
                           progress=False, settings=CharacterizeSettings(rank_r=0, sections=("projector",),
                                                                         seed_compatible=True))
    recs = read_jsonl(tmp_path / MATRICES_FILE)
    assert sorted(summary["spectra_skipped"]) == ["visual.merger.ln_q.weight"]
    with_spectra = [r for r in recs if "spectral_norm" in r["delta_in"]]
    assert len(recs) == 3 and len(with_spectra) == 2
    layer0 = summary["diversity"]["by_layer"]["0"]
    assert layer0["n"] == 2
    assert layer0["delta_in"]["spectral_norm"] == pytest.approx(
        sum(r["delta_in"]["spectral_norm"] for r in with_spectra) / 2, rel=1e-12)
    for r in with_spectra:  # ΔRL = 0 on the projector: float32 log(0 + 1e-12) per σ
        k = min(50, r["delta_rl"]["n_sigma"])
        assert r["delta_rl"]["log_spectral_volume"] == pytest.approx(k * LOG_EPS, rel=1e-6)
    assert summary["diversity"]["region_spectra"] == {"early": None, "middle": None, "late": None}
