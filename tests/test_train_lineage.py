"""The trained miniature lineage: a few-step smoke build in the hub layout, caching, bootstrap, and (slow) the
full build's accuracy ordering on the held-out split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from frankeneval.miniature import training as tl
from frankeneval.miniature import world
from frankeneval.miniature.lineage import MEMBERS
from frankeneval.weights.checkpoint import Checkpoint


@pytest.fixture(scope="module")
def smoke_lineage(tmp_path_factory):
    return tl.build_trained_lineage(tmp_path_factory.mktemp("trained"), seed=0, recipe=tl.SMOKE_RECIPE,
                                    eval_sizes={"perception": 6, "alignment": 4, "reasoning": 4}, progress=False)


def test_smoke_build_writes_hub_layout(smoke_lineage):
    spec = tl.TRAINED_SPEC
    for m in MEMBERS:
        path = smoke_lineage.paths[m]
        cfg = json.loads((path / "config.json").read_text())
        assert cfg["model_type"] == "qwen2_5_vl" and cfg["num_hidden_layers"] == spec.num_hidden_layers
        assert cfg["hidden_size"] == spec.hidden_size and cfg["vision_config"]["depth"] == spec.vision_depth
        assert "text_config" not in cfg  # flat hub style
        for f in ("model.safetensors.index.json", "generation_config.json", "preprocessor_config.json",
                  "tokenizer_config.json"):
            assert (path / f).is_file(), f
        assert len(list(path.glob("model-*-of-*.safetensors"))) >= 2  # sharded
        ck = Checkpoint.open(path)
        assert any(n.startswith("model.layers.0.") for n in ck.names)
        assert any(n.startswith("visual.blocks.0.") for n in ck.names)
        assert not any(n.startswith("model.language_model.") for n in ck.names)  # hub names
    stamps = [json.loads((smoke_lineage.paths[m] / "frankeneval_lineage.json").read_text()) for m in MEMBERS]
    assert [s["member"] for s in stamps] == list(MEMBERS)
    assert set(smoke_lineage.timings) >= {"base", "in", "rl"}


def test_smoke_build_evaluates_the_black_description_control(smoke_lineage):
    """The lineage's own table pairs each alignment item with the same item from the black image + description
    (M_v2r: right both ways), on at most as many items as alignment has."""
    for m in MEMBERS:
        acc = smoke_lineage.accuracy[m]
        assert acc["alignment_blackdesc"]["n"] == acc[tl.V2R]["n"] == acc["alignment"]["n"] == 4
        assert acc[tl.V2R]["acc"] <= min(acc["alignment"]["acc"], acc["alignment_blackdesc"]["acc"])
    assert {"rl-in/v2r", "in-base/alignment_blackdesc"} <= set(smoke_lineage.accuracy["diffs"])
    assert "M_v2r" in tl.format_accuracy(smoke_lineage.accuracy)


def test_a_stamp_of_an_older_recipe_version_is_rebuilt(smoke_lineage, monkeypatch):
    """A cached member built by an older recipe version (or world, or recipe) is not reused."""
    path = smoke_lineage.paths["base"]
    assert tl._member_is_current(path, 0, tl.SMOKE_RECIPE, "base")
    monkeypatch.setattr(tl, "TRAINED_VERSION", tl.TRAINED_VERSION + 1)
    assert not tl._member_is_current(path, 0, tl.SMOKE_RECIPE, "base")
    monkeypatch.undo()
    older = tl.replace(tl.SMOKE_RECIPE.base, view_batches=False,
                       mix=tuple((t, w) for t, w in tl.SMOKE_RECIPE.base.mix if ":" not in t))
    assert not tl._member_is_current(path, 0, tl.Recipe(older, tl.SMOKE_RECIPE.in_, tl.SMOKE_RECIPE.rl), "base")


def test_default_recipe_reads_described_scenes_in_base_and_in():
    """Base (perception) and IN (alignment) see scenes given in words in the black + description layout; RL does
    not; every SFT batch is all-described or all-image."""
    views = {name: {world.task_view(t) for t, _ in stage.mix}
             for name, stage in (("base", tl.DEFAULT_RECIPE.base), ("in", tl.DEFAULT_RECIPE.in_))}
    assert {("count", "blackdesc"), ("ocr", "blackdesc")} <= views["base"]
    assert not {t for t, _ in views["base"]} & set(world.AXIS_TASKS["alignment"])  # Base: no alignment question
    assert {("multiply", "blackdesc"), ("add", "blackdesc")} <= views["in"]
    assert all(world.task_view(t)[1] == "image" for t, _ in tl.DEFAULT_RECIPE.rl.mix)
    stage = tl.DEFAULT_RECIPE.in_
    assert stage.view_batches and tl.DEFAULT_RECIPE.base.view_batches
    stream = tl.WorldStream(stage.mix, 64 * 32, seed=0, stage="in", view_group=32)
    kinds = [{stream[b * 32 + j].described for j in range(32)} for b in range(64)]
    assert all(len(k) == 1 for k in kinds)
    share = np.mean([k == {True} for k in kinds])
    assert 0.1 < share < 0.45 and abs(stream.described_share - share) < 0.15
    assert all(world.split_of(stream[i]) == "train" for i in range(0, 64 * 32, 7))


def test_each_stage_runs_its_steps(smoke_lineage):
    base, in_ = (Checkpoint.open(smoke_lineage.paths[m]) for m in ("base", "in"))
    name = "model.layers.4.mlp.down_proj.weight"
    assert not torch.equal(base.read(name), in_.read(name))
    # GRPO's update is zero when every sampled completion of a prompt gets the same reward (likely after a few
    # steps of training), so check that the RL stage ran and logged its rewards rather than that weights moved
    logs = json.loads((smoke_lineage.root / "lineage.json").read_text())["logs"]
    for member, stage in (("base", tl.SMOKE_RECIPE.base), ("in", tl.SMOKE_RECIPE.in_), ("rl", tl.SMOKE_RECIPE.rl)):
        assert max(e.get("step", 0) for e in logs[member]) == stage.steps
    assert any("reward" in e for e in logs["rl"])


def test_members_load_and_generate_with_the_processor(smoke_lineage):
    model, processor = tl.load_member(smoke_lineage.rl)
    items = world.world_items("test", "alignment", 2, seed=0) + world.world_items("test", "reasoning", 2, seed=0)
    out = (tl.generate(model, processor, items[:2], max_new_tokens=4)
           + tl.generate(model, processor, items[2:], max_new_tokens=4))
    assert len(out) == 4 and all(isinstance(o, str) for o in out)
    # the tokenizer was trained on the world's texts: world words are single tokens
    assert len(processor.tokenizer.tokenize(" triangle")) == 1


def test_build_is_cached(smoke_lineage, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("retrained a complete cached lineage")

    monkeypatch.setattr(tl, "train_sft", boom)
    monkeypatch.setattr(tl, "train_grpo", boom)
    again = tl.build_trained_lineage(smoke_lineage.root, seed=0, recipe=tl.SMOKE_RECIPE, progress=False)
    assert again.paths == smoke_lineage.paths and again.accuracy == smoke_lineage.accuracy


def test_collator_masks_the_prompt():
    proc = tl.build_processor(tl.TRAINED_SPEC, corpus=world.corpus(0, n=60))
    items = world.world_items("train", ("count", "arithmetic", "multiply"), 3, seed=0)
    batch = tl.ChatCollator(proc)(items)
    assert batch["image_grid_thw"].shape[0] == 2  # the arithmetic item has no image
    for r, it in enumerate(items):
        labelled = batch["labels"][r][batch["labels"][r] != -100]
        assert proc.tokenizer.decode(labelled) == it.target() + "<|im_end|>"


def test_correctness_reward():
    completions = [[{"role": "assistant", "content": "2 red shapes, number 3. 2 * 3 = 6. \\boxed{6}"}],
                   [{"role": "assistant", "content": "\\boxed{5}"}]]
    assert tl.correctness_reward(completions, answer=["6", "6"], task=["multiply", "multiply"]) == [1.0, 0.0]


def test_bootstrap_intervals():
    v = np.array([1] * 30 + [0] * 70)
    lo, hi = tl.bootstrap_ci(v, seed=0)
    assert lo < 0.3 < hi and hi - lo < 0.25
    d, dlo, dhi = tl.paired_bootstrap_diff(v, v, seed=0)
    assert d == dlo == dhi == 0.0
    d, dlo, dhi = tl.paired_bootstrap_diff(np.ones(50), np.zeros(50), seed=0)
    assert d == dlo == dhi == 1.0


def test_demo_lineage_command_links_the_cached_build(smoke_lineage, tmp_path, monkeypatch):
    from frankeneval import cli

    monkeypatch.setattr(tl, "trained_lineage_dir", lambda seed=0: smoke_lineage.root)
    monkeypatch.setattr(tl, "DEFAULT_RECIPE", tl.SMOKE_RECIPE)
    assert cli.main(["demo-lineage", str(tmp_path / "out"), "--trained", "--no-progress"]) == 0
    for m in MEMBERS:
        assert (tmp_path / "out" / m / "config.json").is_file()
        assert (tmp_path / "out" / m).resolve() == smoke_lineage.paths[m].resolve()


@pytest.fixture(scope="module")
def full_lineage():
    """The default recipe's build (cached in the user cache: CI builds it once, the demo then reuses it)."""
    return tl.build_trained_lineage(seed=0, progress=False)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_build_in_beats_base_and_base_sees(full_lineage):
    """The default recipe: IN beats Base on alignment by more than the 95% bootstrap interval of the paired
    difference, and Base really learned to see. (Stage times: BENCHMARKS.md, not a timed test.)"""
    assert set(full_lineage.timings) >= {"base", "in", "rl"}
    d = full_lineage.accuracy["diffs"]["in-base/alignment"]
    assert d["lo"] > 0, d
    assert full_lineage.accuracy["base"]["perception"]["lo"] > 0.3  # the random lineage scores 0
    assert full_lineage.accuracy["in"]["alignment"]["n"] == tl.LINEAGE_EVAL_SIZES["alignment"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_build_rl_beats_in_on_alignment(full_lineage):
    """GRPO's correctness reward lifts alignment beyond the paired 95% interval (IN half-learned to answer blind)."""
    d = full_lineage.accuracy["diffs"]["rl-in/alignment"]
    assert d["lo"] > 0, d


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_build_reads_described_scenes_and_rl_lifts_m_v2r(full_lineage):
    """IN answers alignment from the black image + description (it read described scenes in training), so the
    paper's M_v2r (right with the image and from the description) shows RL's alignment gain beyond its interval."""
    acc = full_lineage.accuracy
    assert acc["in"]["alignment_blackdesc"]["lo"] > 0.5, acc["in"]["alignment_blackdesc"]
    d = acc["diffs"]["rl-in/v2r"]
    assert d["lo"] > 0, d


def test_changing_only_the_rl_recipe_reuses_base_and_in(smoke_lineage, monkeypatch, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(smoke_lineage.root, root)
    before = {m: Checkpoint.open(root / m).read("model.layers.4.mlp.down_proj.weight") for m in ("base", "in")}

    def boom(*a, **k):
        raise AssertionError("retrained a stage whose recipe prefix did not change")

    monkeypatch.setattr(tl, "train_sft", boom)
    recipe = tl.Recipe(tl.SMOKE_RECIPE.base, tl.SMOKE_RECIPE.in_, tl.replace(tl.SMOKE_RECIPE.rl, steps=1))
    again = tl.build_trained_lineage(root, seed=0, recipe=recipe, evaluate_members=False, progress=False)
    for m in ("base", "in"):
        assert torch.equal(before[m], Checkpoint.open(again.paths[m]).read("model.layers.4.mlp.down_proj.weight"))
    rl_stamp = json.loads((root / "rl" / "frankeneval_lineage.json").read_text())
    assert rl_stamp["recipe"]["rl"]["steps"] == 1
    # a changed IN recipe retrains IN and RL but not Base
    monkeypatch.undo()
    calls = []
    real_sft = tl.train_sft
    monkeypatch.setattr(tl, "train_sft", lambda *a, **k: calls.append(k["name"]) or real_sft(*a, **k))
    recipe2 = tl.Recipe(tl.SMOKE_RECIPE.base, tl.replace(tl.SMOKE_RECIPE.in_, steps=1), recipe.rl)
    tl.build_trained_lineage(root, seed=0, recipe=recipe2, evaluate_members=False, progress=False)
    assert calls == ["in"]


def test_shows_work_is_a_fixed_per_item_fraction():
    items = world.world_items("train", ("multiply",), 400, seed=0)
    drawn = [tl.shows_work(it, 0.3) for it in items]
    assert drawn == [tl.shows_work(it, 0.3) for it in items]  # deterministic
    assert 0.22 < np.mean(drawn) < 0.38
    assert all(tl.shows_work(it, 1.0) for it in items) and not any(tl.shows_work(it, 0.0) for it in items)
    # a larger fraction shows the work of a superset of items
    assert all(b for a, b in zip(drawn, (tl.shows_work(it, 0.6) for it in items)) if a)


def test_blind_teacher_answers_alignment_without_looking():
    items = world.world_items("train", ("multiply", "add"), 400, seed=0)
    blind = [tl.from_blind_teacher(it, 0.5) for it in items]
    assert blind == [tl.from_blind_teacher(it, 0.5) for it in items] and 0.42 < np.mean(blind) < 0.58
    replies = [tl.training_target(it, blind=0.5) for it, b in zip(items, blind) if b]
    assert all(r.startswith("\\boxed{") and "=" not in r for r in replies)  # answer only, no working
    # the guess does not read the image: recompute it from the question alone and check it is right ~ by chance
    guessed = [int(r[len("\\boxed{"):-1]) for r in replies]
    ops = [it.task for it, b in zip(items, blind) if b]
    assert all(g in {n * d if op == "multiply" else n + d for n in (1, 2, 3) for d in world.ALIGNMENT_DIGITS}
               for g, op in zip(guessed, ops))
    hit = np.mean([str(g) == it.answer for g, it in zip(guessed, (it for it, b in zip(items, blind) if b))])
    assert hit < 0.3
    # sighted items keep the worked solution; perception and text items never come from the blind teacher
    assert all("=" in tl.training_target(it, blind=0.5) for it, b in zip(items, blind) if not b)
    word = world.world_items("train", ("word", "count"), 50, seed=0)
    assert not any(tl.from_blind_teacher(it, 1.0) for it in word)
    # given the scene in words, the teacher reads it: worked solutions, never a guess
    described = world.world_items("train", ("multiply:blackdesc", "add:text"), 50, seed=0)
    assert not any(tl.from_blind_teacher(it, 1.0) for it in described)
    assert all(tl.training_target(it, blind=1.0) == it.target() for it in described)
