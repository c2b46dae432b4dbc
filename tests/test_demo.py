"""The demo pipeline: every stage runs on the tiny lineage, the report embeds the characterization plots, a
rerun redoes nothing. (The real lmms-eval path is covered by tests/test_transfer.py; CI runs `frankeneval demo`.)"""

from __future__ import annotations

from test_transfer import CountingRunner


def test_demo_runs_all_stages_and_resumes(tmp_path):
    from frankeneval.commands._demo import run_demo

    out = tmp_path / "demo"
    first = CountingRunner()
    res = run_demo(out, lineage="random", fast=True, data=tmp_path, runner=first, localization=False,
                   progress=lambda s: None)
    assert not res.failed_stages, res.failed_stages
    assert len(first.calls) == 9  # Base, IN, RL and the six variants, one cell each
    assert first.calls[0].startswith("base")
    html = res.report["html"].read_text()
    assert html.count("data:image/png;base64,") >= 2  # leaderboard chart + characterization plots
    assert "in_early+rl_middle_late" in res.markdown and "| IN |" in res.markdown
    assert (out / "characterize" / "summary.json").is_file()

    again = CountingRunner()
    res2 = run_demo(out, lineage="random", fast=True, data=tmp_path, runner=again, localization=False,
                    progress=lambda s: None)
    assert again.calls == [] and res2.markdown == res.markdown


def test_demo_on_the_trained_lineage_sweeps_the_world(tmp_path, monkeypatch):
    """The default (trained) path: world tasks for the table, and both localization sweeps on the world's own
    reasoning items and vision probe pairs (a few-step smoke lineage stands in for the full build)."""
    import json

    from frankeneval.commands import _demo as demo
    from frankeneval.miniature import training as tl

    lin = tl.build_trained_lineage(tmp_path / "lineage", recipe=tl.SMOKE_RECIPE, evaluate_members=False,
                                   progress=False)
    monkeypatch.setattr(demo, "_lineage", lambda out, kind, log: lin)
    runner = CountingRunner()
    res = demo.run_demo(tmp_path / "demo", fast=True, runner=runner, progress=lambda s: None)
    assert res.lineage == "trained" and res.tasks == ["franken_world"]
    assert not res.failed_stages, res.failed_stages
    assert len(runner.calls) == 9  # Base, IN, RL and the six variants
    # the franken_world group carries the paper's paired controls (M_vis, M_v2r) next to the three axes
    from test_paper_generation import ROOT, _yaml

    group = _yaml(ROOT / "tasks" / "franken_world" / "franken_world.yaml")["task"]
    assert {"franken_world_perception_black", "franken_world_alignment_black",
            "franken_world_alignment_blackdesc"} <= set(group)
    reasoning = json.loads((tmp_path / "demo" / "localize" / "reasoning" / "reasoning_localization.json").read_text())
    assert reasoning["n_questions"] == 8 and len(reasoning["layers"]) == tl.TRAINED_SPEC.num_hidden_layers
    # the miniature lineage never saw a system prompt: the demo runs without one (not the name rule's reasoner
    # for the dirs base / in / rl), and says so in every result
    assert reasoning["system_prompt"]["name"] == "none" and reasoning["system_prompt"]["reason"] == "fixed: none"
    cells = [json.loads(x) for x in (tmp_path / "demo" / "transfer" / "cells.jsonl").read_text().splitlines()]
    prompts = {c["record"]["model"]: c["record"]["system_prompt"]["name"] for c in cells if "record" in c}
    assert len(prompts) == 9 and set(prompts.values()) == {"none"}
    vision = json.loads((tmp_path / "demo" / "localize" / "vision" / "vision_localization.json").read_text())
    assert set(vision["tasks"]) == {"counting", "ocr", "grounding", "recognition"}
