"""Necessity as an experiment (issue 33): the miniature RL stage re-run from IN with LLM blocks frozen, cached by
content; the TRL / verl configs for a real model carry the masks; TRL's GRPOTrainer launched on the tiny lineage on
the CPU.

A few-step smoke lineage stands in for the default build. Its GRPO stage is trained with a reward that varies
between completions (the correctness reward is 0 for every sample of a few-step model, and GRPO then moves nothing),
so the frozen / unfrozen checks compare real updates.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from frankeneval.cli import main
from frankeneval.errors import FrankenevalError
from frankeneval.miniature import necessity as ne
from frankeneval.miniature import training as tl
from frankeneval.necessity import settings as ns
from frankeneval.necessity.freeze import (
    FreezeMask,
    freeze_mask,
    frozen_parameters,
    model_parameter_names,
    module_regex,
    parameter_regex,
)
from frankeneval.weights.checkpoint import Checkpoint
from frankeneval.weights.layermap import canonical_name

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = {"perception": 4, "alignment": 4, "reasoning": 4, "alignment_blackdesc": 4}


def parity_reward(completions, **_):
    """A reward that differs between samples of a prompt (so GRPO's advantages are not all zero)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(len(t) % 2) for t in texts]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private frankeneval cache (lineages, fingerprints, necessity runs) and the varying reward."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FRANKENEVAL_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("FRANKENEVAL_THREADS", "1")
        mp.setattr(tl, "correctness_reward", parity_reward)
        yield mp


@pytest.fixture(scope="module")
def lineage(env, tmp_path_factory):
    return tl.build_trained_lineage(tmp_path_factory.mktemp("lineage"), seed=0, recipe=tl.SMOKE_RECIPE,
                                    evaluate_members=False, progress=False)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    ck = Checkpoint.open(path)
    return {canonical_name(n): ck.read(n) for n in ck.names}


def _llm_layer(name: str) -> int | None:
    m = re.match(r"model\.layers\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else None  # unified layer


def test_settings_are_unified_layer_masks():
    got = {s.name: s.mask.layers for s in ns.parse_settings(ns.SETTINGS, n_layers=5)}
    assert got == {"none": (), "early": (1,), "middle": (2, 3), "late": (4, 5), "middle+late": (2, 3, 4, 5)}
    assert ns.parse_settings(["middle+late"], n_layers=5)[0].slug == "middle_late"
    assert ns.parse_settings(["1-2"], n_layers=5, cuts=(2, 4))[0].mask.layers == (1, 2)
    assert ns.parse_settings(["late"], n_layers=5, cuts=(2, 4))[0].mask.layers == (5,)
    with pytest.raises(FrankenevalError, match="same parameters"):
        ns.parse_settings(["late", "4-5"], n_layers=5)
    with pytest.raises(FrankenevalError):
        ns.parse_settings(["0-2"], n_layers=5)  # 0-based forms are refused


def test_frozen_layers_stay_bit_identical_and_the_others_move(lineage, tmp_path):
    res = ne.run_necessity(lineage, ["late", "early"], eval_sizes=SIZES, cache_dir=tmp_path / "cache",
                           progress=False, log=lambda s: None)
    start = _tensors(lineage.in_)
    for row in res.data["settings"]:
        after = _tensors(Path(row["cache"]))
        frozen = set(row["mask"]["layers"])
        assert frozen == {"late": {4, 5}, "early": {1}}[row["name"]]
        llm = [n for n in start if _llm_layer(n) is not None]
        same = {n for n in llm if torch.equal(start[n], after[n])}
        frozen_names = {n for n in llm if _llm_layer(n) in frozen}
        assert frozen_names and frozen_names <= same, "a frozen tensor moved"
        moved = [n for n in llm if n not in frozen_names and n not in same]
        assert len(moved) > 0.8 * (len(llm) - len(frozen_names)), "the unfrozen layers did not train"
        # embeddings, the final norm and the vision tower train as in the lineage's RL
        assert not torch.equal(start["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
        check = row["check"]
        assert check["frozen_unchanged"] and check["frozen_max_abs_change"] == 0.0
        assert check["trainable_tensors_moved"] > 0
        assert len(row["mask"]["frozen_parameters"]) == 12 * len(frozen)  # 12 tensors per Qwen2 decoder layer


def test_apply_freeze_turns_off_exactly_the_masked_parameters(lineage):
    model, _ = tl.load_member(lineage.in_)
    frozen = ns.apply_freeze(model, freeze_mask("middle", n_layers=5))
    off = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert off == set(frozen) and len(off) == 24
    assert all(re.match(r".*language_model\.layers\.[12]\.", n) for n in off)


def test_the_unfrozen_run_reproduces_the_lineage_rl_member(lineage, tmp_path):
    """'none' is the lineage's RL stage from the written IN: the same computation gives the same bits."""
    res = ne.run_necessity(lineage, ["none"], eval_sizes=SIZES, cache_dir=tmp_path / "cache", progress=False,
                           log=lambda s: None)
    assert res.data["none_vs_lineage_rl"]["identical"], res.data["none_vs_lineage_rl"]
    a, b = _tensors(Path(res.data["settings"][0]["cache"])), _tensors(lineage.rl)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.4.mlp.down_proj.weight"],
                           _tensors(lineage.in_)["model.layers.4.mlp.down_proj.weight"])  # RL moved it


def test_an_rl_stage_resumed_from_a_cached_in_member_equals_the_whole_build(lineage, tmp_path):
    """build_trained_lineage with Base and IN cached (RL trained from the loaded IN) gives the RL member of a build
    that trained IN in the same process: the loaded member samples with the config's defaults, as the trained one
    (before the fix its generation_config.json also stopped GRPO's samples at the pad token: every tensor differed)."""
    root = tmp_path / "resumed"
    root.mkdir()
    for member in ("base", "in"):
        shutil.copytree(lineage.root / member, root / member)
    resumed = tl.build_trained_lineage(root, seed=0, recipe=tl.SMOKE_RECIPE, evaluate_members=False, progress=False)
    a, b = _tensors(resumed.rl), _tensors(lineage.rl)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_matching_stamp_is_reused_and_a_changed_in_member_is_rebuilt(lineage, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    cache = tmp_path / "cache"
    first = ne.run_necessity(lineage, ["late"], eval_sizes=SIZES, cache_dir=cache, progress=False,
                             log=lambda s: None)
    assert not first.data["settings"][0]["reused"]
    calls = []
    real = tl.train_grpo
    monkeypatch.setattr(tl, "train_grpo", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = ne.run_necessity(lineage, ["late"], eval_sizes=SIZES, cache_dir=cache, progress=False,
                             log=lambda s: None)
    row = again.data["settings"][0]
    assert calls == [] and row["reused"] and row["times"]["eval_reused"]
    assert row["correct"] == first.data["settings"][0]["correct"]
    # other cuts: another mask, another run
    ne.run_necessity(lineage, ["late"], eval_sizes=SIZES, cuts=(2, 4), cache_dir=cache, progress=False,
                     log=lambda s: None)
    assert calls == [1]
    # the same lineage with IN's weights changed in place (one tensor, same file names): rebuilt
    root = tmp_path / "changed"
    shutil.copytree(lineage.root, root)
    shard = sorted((root / "in").glob("model-*.safetensors"))[0]
    tensors = load_file(str(shard))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(shard), metadata={"format": "pt"})
    third = ne.run_necessity(root, ["late"], eval_sizes=SIZES, cache_dir=cache, progress=False, log=lambda s: None)
    assert calls == [1, 1] and not third.data["settings"][0]["reused"]
    assert third.data["lineage"]["in_identity"] != first.data["lineage"]["in_identity"]


def test_necessity_command_end_to_end_on_the_smoke_recipe(env, tmp_path, capsys):
    """The CI path: `frankeneval necessity --recipe smoke` builds the smoke lineage, runs the five settings, and
    writes the table, the plot and a JSON from which every number is recomputed."""
    out = tmp_path / "nec"
    assert main(["necessity", "--recipe", "smoke", "--eval-items", "6", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| late |" in printed and "Against unfrozen RL" in printed
    data = json.loads((out / "necessity.json").read_text())
    assert [r["name"] for r in data["settings"]] == list(ns.SETTINGS)
    assert data["recipe"]["rl"]["steps"] == tl.SMOKE_RECIPE.rl.steps and data["recipe_name"] == "smoke"
    assert (out / "necessity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "necessity.md").read_text()
    assert "RL gain over IN" in md and "| middle+late |" in md
    masks = {r["name"]: r["mask"]["layers"] for r in data["settings"]}
    assert masks == {"none": [], "early": [1], "middle": [2, 3], "late": [4, 5], "middle+late": [2, 3, 4, 5]}
    # every interval is recomputed from the stored per-item correctness
    none = next(r for r in data["settings"] if r["name"] == "none")
    for row in data["settings"]:
        for axis in data["axes"]:
            assert len(row["correct"][axis]) == data["eval"]["sizes"].get(axis, 6)
            d, lo, hi = tl.paired_bootstrap_diff(row["correct"][axis], data["in"]["correct"][axis], seed=data["seed"])
            assert row["gain_over_in"][axis] == {"diff": d, "lo": lo, "hi": hi}
            assert row["accuracy"][axis]["acc"] == pytest.approx(np.mean(row["correct"][axis]))
            if row["name"] != "none":
                d, lo, hi = tl.paired_bootstrap_diff(row["correct"][axis], none["correct"][axis], seed=data["seed"])
                assert row["vs_unfrozen"][axis] == {"diff": d, "lo": lo, "hi": hi}
        assert row["check"]["frozen_unchanged"]
        assert row["stamp"]["in"] == data["lineage"]["in_identity"] and row["stamp"]["seed"] == 0
    # a rerun trains nothing
    assert main(["necessity", "--recipe", "smoke", "--eval-items", "6", "--out", str(out), "--no-progress"]) == 0
    assert all(r["reused"] for r in json.loads((out / "necessity.json").read_text())["settings"])


def test_necessity_output_folder_is_guarded(env, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "necessity.md").write_text("my notes")
    assert main(["necessity", "--recipe", "smoke", "--settings", "none", "--out", str(out), "--no-progress"]) == 1
    assert "not an output folder of frankeneval" in capsys.readouterr().err
    assert (out / "necessity.md").read_text() == "my notes"


def test_the_launchers_rows_keep_line_separators_inside_their_strings(tmp_path):
    """A JSONL row is one "\\n"-ended line: U+2028, U+0085 or U+001E inside a prompt (written unescaped, as
    ``ensure_ascii=False`` writes them) stay in the prompt instead of cutting the row in two."""
    from frankeneval.necessity import trl_grpo

    prompts = ["first\u2028second", "a\x85b", "c\x1ed"]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": i}, ensure_ascii=False) + "\n"
                            for i, p in enumerate(prompts)), encoding="utf-8")
    rows = trl_grpo.load_rows(path)
    assert [r["prompt"][0]["content"] for r in rows] == prompts and [r["answer"] for r in rows] == ["0", "1", "2"]
    path.write_text('{"prompt": "x", "answer": 1}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows.jsonl:2: not a JSON line"):
        trl_grpo.load_rows(path)


# -- real models: configs and the TRL launch ---------------------------------------------------
def test_written_configs_carry_the_masks(tiny_lineage, tmp_path, capsys):
    from frankeneval.necessity import trl_grpo

    cfg = tmp_path / "cfg"
    assert main(["necessity", "--model", str(tiny_lineage.in_), "--freeze", "late", "--settings", "middle+late,none",
                 "--write-configs", str(cfg)]) == 0
    names, n_layers = model_parameter_names(tiny_lineage.in_)
    assert (cfg / "trl_grpo.py").read_bytes() == Path(trl_grpo.__file__).read_bytes()
    for setting, spec in (("middle+late", "middle,late"), ("late", "late"), ("none", None)):
        slug = setting.replace("+", "_")
        conf = json.loads((cfg / f"trl_grpo_{slug}.json").read_text())
        mask = freeze_mask(spec, n_layers=n_layers) if spec else FreezeMask(n_layers=n_layers, layers=())
        frozen = frozen_parameters(mask, names)
        assert conf["freeze_parameter_regex"] == parameter_regex(mask) and conf["expected_frozen"] == len(frozen)
        assert conf["mask"]["layers"] == list(mask.layers) and conf["model"] == str(Path(tiny_lineage.in_).absolute())
        assert [n for n in names if re.fullmatch(conf["freeze_parameter_regex"], n)] == frozen
        listed = (cfg / f"frozen_{slug}.txt").read_text().split()
        assert listed == frozen and (len(frozen) > 0) == (spec is not None)
        verl = (cfg / f"verl_{slug}.txt").read_text()
        assert f"exclude_modules='{module_regex(mask)}'" in verl
        assert f"actor_rollout_ref.model.path={Path(tiny_lineage.in_).absolute()}" in verl
        assert "algorithm.adv_estimator=grpo" in verl
    late = {_llm_layer(canonical_name(n)) for n in (cfg / "frozen_late.txt").read_text().split()}
    assert late == set(freeze_mask("late", n_layers=n_layers).layers)


def _dataset(tmp_path: Path, n: int = 2) -> Path:
    from frankeneval.miniature import world

    rows = []
    for i, it in enumerate(world.world_items("train", ("multiply",), n, seed=0)):
        it.image().save(tmp_path / f"img{i}.png")
        rows.append({"prompt": it.prompt, "answer": it.answer, "images": [f"img{i}.png"]})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_launch_without_a_gpu_is_refused_in_one_line(tiny_lineage, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "runs"
    rc = main(["necessity", "--model", str(tiny_lineage.in_), "--freeze", "late", "--launch",
               "--dataset", str(_dataset(tmp_path)), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "needs a CUDA GPU" in err[0] and "--allow-cpu" in err[0]
    assert not out.exists()


def test_trl_launch_on_the_tiny_lineage_on_cpu(tiny_lineage, tmp_path, capsys, monkeypatch):
    """TRL's GRPOTrainer, launched by the command with the written config, trains the tiny IN for one step on
    the CPU; the late layers come out bit-identical."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "runs"
    assert main(["necessity", "--model", str(tiny_lineage.in_), "--freeze", "late", "--launch", "--allow-cpu",
                 "--dataset", str(_dataset(tmp_path)), "--out", str(out), "--steps", "1", "--num-generations", "2",
                 "--max-completion-length", "4", "--learning-rate", "1e-3"]) == 0
    run = out / "trl-late"
    record = json.loads((run / "necessity_launch.json").read_text())
    assert record["global_step"] == 1 and record["frozen_verified"]
    conf = json.loads((out / "configs" / "trl_grpo_late.json").read_text())
    assert len(record["frozen"]) == conf["expected_frozen"] > 0
    assert conf["grpo"]["use_cpu"] is True and conf["output_dir"] == str(run.absolute())
    start, after = _tensors(tiny_lineage.in_), _tensors(run)
    n_layers = model_parameter_names(tiny_lineage.in_)[1]
    late = set(freeze_mask("late", n_layers=n_layers).layers)
    frozen = [n for n in start if _llm_layer(n) in late]
    assert frozen and all(torch.equal(start[n], after[n]) for n in frozen)
    assert "1 GRPO steps" in capsys.readouterr().out
    # the written script again on the same config: the finished run's folder is never trained into (nor a user's)
    from frankeneval.necessity import trl_grpo

    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    monkeypatch.setattr(trl_grpo, "load_model", lambda *a, **k: pytest.fail("loaded a model for a refused run"))
    with pytest.raises(SystemExit, match="exists and is not empty"):
        trl_grpo.main(out / "configs" / "trl_grpo_late.json")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_demo_necessity_stage_puts_the_table_and_plot_in_the_report(lineage, env, tmp_path, monkeypatch):
    from test_transfer import CountingRunner

    from frankeneval.commands import _demo as demo

    monkeypatch.setattr(demo, "_lineage", lambda out, kind, log: lineage)
    monkeypatch.setattr(demo, "NECESSITY_FAST_ITEMS", 4)
    res = demo.run_demo(tmp_path / "demo", fast=True, runner=CountingRunner(), localization=False, necessity=True,
                        progress=lambda s: None)
    assert not res.failed_stages, res.failed_stages
    assert "## Necessity: RL with frozen LLM blocks" in res.markdown and "| middle+late |" in res.markdown
    html = res.report["html"].read_text()
    assert 'id="necessity"' in html and "necessity.png" in html
    assert "## Necessity" in res.report["md"].read_text()
    assert (tmp_path / "demo" / "necessity" / "necessity.json").is_file()
