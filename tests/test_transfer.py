"""Transfer runs: every (model, task) cell of the tiny recipe, resumable after a crash, one real lmms-eval cell."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from frankeneval.errors import FrankenevalError
from frankeneval.transferability.transfer import CellJob, find_results, plan_cells, run_cells, run_transfer

TASKS = ["franken_mathvista_perception", "franken_mathvista_alignment", "franken_math500"]


def write_fake_lmms_output(job: CellJob, n: int = 6, seed: int | None = None) -> dict[str, list[int]]:
    """Write what lmms-eval 0.7.3 writes for ``job`` (results + samples files), with random 0/1 scores."""
    rng = random.Random(seed if seed is not None else hash((job.cell.model, job.cell.task)) & 0xFFFF)
    model_dir = job.output_dir / Path(job.pretrained).name
    model_dir.mkdir(parents=True, exist_ok=True)
    date_id = "20260101_000000"
    tasks = [job.cell.task]
    results, scores = {}, {}
    for task in tasks:
        s = [rng.randint(0, 1) for _ in range(n)]
        scores[task] = s
        with open(model_dir / f"{date_id}_samples_{task}.jsonl", "w") as f:
            for i, v in enumerate(s):
                f.write(json.dumps({"doc_id": i, "target": "1", "rule_acc": {"id": f"{task}_{i}", "score": v}}) + "\n")
        results[task] = {"alias": task, "rule_acc,none": sum(s) / n, "rule_acc_stderr,none": "N/A"}
    (model_dir / f"{date_id}_results.json").write_text(json.dumps({"results": results, "n-samples": {}}))
    return scores


class CountingRunner:
    """A fake cell runner counting its calls; optionally crashes after ``crash_after`` calls."""

    def __init__(self, crash_after: int | None = None):
        self.calls: list[str] = []
        self.crash_after = crash_after

    def __call__(self, job: CellJob) -> None:
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            # a half-written cell, then the crash (like a kill mid-way through lmms-eval)
            (job.output_dir / "partial.txt").write_text("half")
            raise RuntimeError("simulated crash")
        self.calls.append(job.cell.key)
        assert "pretrained=" in job.model_args and job.env.get("HF_HUB_OFFLINE") == "1"
        write_fake_lmms_output(job)


@pytest.fixture()
def recipe(tiny_lineage):
    from frankeneval.transferability.recipes import tiny_recipe

    return tiny_recipe(tiny_lineage)


def test_plan_cells_is_model_major():
    cells = plan_cells(["in", "rl"], ["a", "b"])
    assert [c.key for c in cells] == ["in::a", "in::b", "rl::a", "rl::b"]


def test_transfer_runs_every_variant_and_resumes_after_crash(tmp_path, recipe):
    from frankeneval.reports.leaderboard import build_leaderboard

    run = tmp_path / "run"
    kwargs = dict(tasks=TASKS, splice_cache=tmp_path / "splices", sample_size=6, sample_seed=123,
                  data_dir=tmp_path, progress=lambda s: None)
    n_models = 3 + len(recipe.variants)  # Base, IN, RL and the variants (the paper's tables have a Base row)
    assert len(recipe.variants) == 6
    n_cells = n_models * len(TASKS)

    crashing = CountingRunner(crash_after=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_transfer(run, recipe, runner=crashing, **kwargs)
    assert len(crashing.calls) == 5
    # the crashed cell left only a .partial folder, never a results dir
    assert list(run.rglob("*.partial"))

    resumed = CountingRunner()
    result = run_transfer(run, recipe, runner=resumed, **kwargs)
    assert len(resumed.calls) == n_cells - 5  # finished cells are not redone
    assert not set(resumed.calls) & set(crashing.calls)
    assert len(result.skipped) == 5 and len(result.ran) == n_cells - 5
    assert not list(run.rglob("*.partial"))

    again = CountingRunner()
    result = run_transfer(run, recipe, runner=again, **kwargs)
    assert again.calls == [] and len(result.skipped) == n_cells

    board = build_leaderboard(run)
    assert board.rows == ["base", "in", "rl", *recipe.variants]
    assert board.kinds["base"] == "base" and board.row_label("base") == "Base"
    assert [c.key for c in board.columns] == TASKS
    for row in board.rows:
        for col in board.columns:
            e = board.get(row, col.key, "rule_acc")
            assert e is not None and e.n == 6


def test_renamed_but_unrecorded_cell_is_adopted(tmp_path, recipe):
    models = {"in": {"path": str(recipe.models["in"]), "kind": "in"}}
    run = tmp_path / "run"
    first = CountingRunner()
    run_cells(run, models, ["t1"], runner=first, data_dir=tmp_path, progress=lambda s: None)
    # simulate a crash between the rename and the store append: drop the store line
    store = run / "cells.jsonl"
    lines = store.read_text().splitlines()
    store.write_text("\n".join(lines[:1]) + "\n")
    second = CountingRunner()
    result = run_cells(run, models, ["t1"], runner=second, data_dir=tmp_path, progress=lambda s: None)
    assert second.calls == [] and len(result.skipped) == 1
    assert "in::t1" in store.read_text()


def test_failed_cells_do_not_stop_the_others(tmp_path, recipe):
    models = {"in": {"path": str(recipe.models["in"]), "kind": "in"}, "rl": {"path": str(recipe.models["rl"]), "kind": "rl"}}

    def flaky(job: CellJob) -> None:
        if job.cell.model == "in":
            from frankeneval.transferability.transfer import CellFailed

            raise CellFailed("boom")
        write_fake_lmms_output(job)

    result = run_cells(tmp_path / "run", models, ["t1"], runner=flaky, progress=lambda s: None)
    assert list(result.failed) == ["in::t1"] and [c.key for c in result.ran] == ["rl::t1"]


def test_settings_mismatch_is_refused(tmp_path, recipe):
    models = {"in": {"path": str(recipe.models["in"]), "kind": "in"}}
    run_cells(tmp_path / "run", models, ["t1"], runner=CountingRunner(), sample_size=5, data_dir=tmp_path, progress=lambda s: None)
    with pytest.raises(FrankenevalError, match="other settings"):
        run_cells(tmp_path / "run", models, ["t1"], runner=CountingRunner(), sample_size=7, data_dir=tmp_path, progress=lambda s: None)


def test_gpu_pool_assigns_one_device_per_process(tmp_path, recipe):
    models = {m: {"path": str(recipe.models["in"]), "kind": "variant"} for m in ("a", "b", "c", "d")}
    seen = []

    def runner(job: CellJob) -> None:
        seen.append(job.env["CUDA_VISIBLE_DEVICES"])
        write_fake_lmms_output(job)

    result = run_cells(tmp_path / "run", models, ["t1", "t2"], runner=runner, gpus=2, progress=lambda s: None)
    assert len(result.ran) == 8 and set(seen) == {"0", "1"}


def test_real_lmms_eval_cell(tmp_path, tiny_lineage, shared_data):
    """One real cell end to end: lmms-eval subprocess, franken_qwen on the tiny IN model, 2 GSM8K items."""
    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}}
    run = tmp_path / "run"
    result = run_cells(run, models, ["franken_gsm8k"], sample_size=2, sample_seed=123, data_dir=shared_data,
                       max_new_tokens=4, batch_size=2, progress=lambda s: None)
    assert not result.failed, result.failed
    res, samples = find_results(run / "cells" / "in" / "franken_gsm8k")
    assert res is not None and set(samples) == {"franken_gsm8k"}
    data = json.loads(res.read_text())
    assert "rule_acc,none" in data["results"]["franken_gsm8k"]
    assert len(samples["franken_gsm8k"].read_text().splitlines()) == 2
    from frankeneval.reports.leaderboard import build_leaderboard

    entry = build_leaderboard(run).get("in", "franken_gsm8k", "rule_acc")
    assert entry.value == data["results"]["franken_gsm8k"]["rule_acc,none"] and entry.n == 2
    # a rerun does not start lmms-eval again
    again = CountingRunner()
    assert run_cells(run, models, ["franken_gsm8k"], sample_size=2, sample_seed=123, data_dir=shared_data,
                     max_new_tokens=4, batch_size=2, runner=again, progress=lambda s: None).skipped
    assert again.calls == []
