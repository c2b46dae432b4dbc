"""Transfer runs: every (model, task) cell of the tiny recipe, resumable after a crash, one real lmms-eval cell."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from frankeneval.errors import FrankenevalError
from frankeneval.transferability.cells import CellFailed, CellJob, find_results
from frankeneval.transferability.manifest import plan_cells
from frankeneval.transferability.transfer import run_cells, run_transfer

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
    from frankeneval.reports.leaderboard.build import build_leaderboard

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
    models = {"in": {"path": str(recipe.models["in"]), "kind": "in"},
              "rl": {"path": str(recipe.models["rl"]), "kind": "rl"}}

    def flaky(job: CellJob) -> None:
        if job.cell.model == "in":

            raise CellFailed("boom")
        write_fake_lmms_output(job)

    result = run_cells(tmp_path / "run", models, ["t1"], runner=flaky, progress=lambda s: None)
    assert list(result.failed) == ["in::t1"] and [c.key for c in result.ran] == ["rl::t1"]


def test_settings_mismatch_is_refused(tmp_path, recipe):
    models = {"in": {"path": str(recipe.models["in"]), "kind": "in"}}
    run_cells(tmp_path / "run", models, ["t1"], runner=CountingRunner(), sample_size=5, data_dir=tmp_path,
              progress=lambda s: None)
    with pytest.raises(FrankenevalError, match="other settings"):
        run_cells(tmp_path / "run", models, ["t1"], runner=CountingRunner(), sample_size=7, data_dir=tmp_path,
                  progress=lambda s: None)


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
    from frankeneval.reports.leaderboard.build import build_leaderboard

    entry = build_leaderboard(run).get("in", "franken_gsm8k", "rule_acc")
    assert entry.value == data["results"]["franken_gsm8k"]["rule_acc,none"] and entry.n == 2
    # a rerun does not start lmms-eval again
    again = CountingRunner()
    assert run_cells(run, models, ["franken_gsm8k"], sample_size=2, sample_seed=123, data_dir=shared_data,
                     max_new_tokens=4, batch_size=2, runner=again, progress=lambda s: None).skipped
    assert again.calls == []


# -- --evict-variants ----------------------------------------------------------------------------------------
N_REF_CELLS = 3 * len(TASKS)  # Base, IN, RL: run first, never materialized or deleted


def variant_dirs(cache: Path) -> list[str]:
    """The splice folders in the cache (not the lock files, not staging folders)."""
    if not cache.is_dir():
        return []
    return sorted(p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


class CacheWatchingRunner(CountingRunner):
    """A CountingRunner that notes how many variant folders the splice cache holds whenever a cell runs (and
    checks that the cell's own model is on disk)."""

    def __init__(self, cache: Path, crash_after: int | None = None, fail: str | None = None):
        super().__init__(crash_after)
        self.cache, self.fail = cache, fail
        self.on_disk: list[int] = []
        self.devices: set[str] = set()
        self.inodes: dict[str, set[int]] = {}  # model -> inode(s) of its folder while its cells ran

    def __call__(self, job: CellJob) -> None:
        assert Path(job.pretrained).is_dir(), f"{job.cell.key}: its model {job.pretrained} is not on disk"
        self.inodes.setdefault(job.cell.model, set()).add(Path(job.pretrained).stat().st_ino)
        self.on_disk.append(len(variant_dirs(self.cache)))
        self.devices.add(job.env.get("CUDA_VISIBLE_DEVICES", ""))
        if self.fail is not None and job.cell.key == self.fail:

            raise CellFailed("boom")
        super().__call__(job)


@pytest.fixture()
def spliced(monkeypatch, recipe):
    """Spy on materialize_cached: the variant labels it was called for, in order (and the folder count after)."""
    from frankeneval.transferability import splice

    calls: list[str] = []
    real = splice.materialize_cached

    def spy(spec, cache_dir=None, **kw):
        calls.append(next(v for v in recipe.variants if recipe.variant(v) is spec))
        return real(spec, cache_dir, **kw)

    monkeypatch.setattr(splice, "materialize_cached", spy)
    return calls


def _evict_kwargs(tmp_path: Path, **extra) -> dict:
    return dict(tasks=TASKS, splice_cache=tmp_path / "splices", sample_size=6, sample_seed=123, data_dir=tmp_path,
                progress=lambda s: None, **extra)


def _manifest(run: Path) -> dict:
    return json.loads((run / "transfer.json").read_text())


@pytest.mark.parametrize("gpus", [0, 1])
def test_evict_variants_holds_one_variant_at_a_time(tmp_path, recipe, spliced, gpus):
    from frankeneval.reports.leaderboard.build import build_leaderboard

    cache, run = tmp_path / "splices", tmp_path / "run"
    runner = CacheWatchingRunner(cache)
    result = run_transfer(run, recipe, runner=runner, evict_variants=True, gpus=gpus, **_evict_kwargs(tmp_path))
    n_cells = (3 + len(recipe.variants)) * len(TASKS)
    assert len(result.ran) == n_cells and not result.failed and len(result.cells) == n_cells
    assert spliced == list(recipe.variants)  # lazily, model-major, each once
    assert runner.on_disk[:N_REF_CELLS] == [0] * N_REF_CELLS  # Base / IN / RL run first, before any splice
    assert max(runner.on_disk) == 1 and min(runner.on_disk[N_REF_CELLS:]) == 1
    assert variant_dirs(cache) == []  # every variant this run materialized is gone
    data = _manifest(run)
    assert data["evict_variants"] is True
    for v in recipe.variants:
        entry = data["models"][v]
        assert entry["evicted"] is True and "splice_owner" not in entry and "kept" not in entry
        assert str(cache.absolute()) in entry["path"]  # what was evaluated stays recorded
    for ref in ("base", "in", "rl"):
        assert Path(data["models"][ref]["path"]).is_dir() and "evicted" not in data["models"][ref]
    board = build_leaderboard(run)  # the report reads the cells, not the checkpoints
    assert board.rows == ["base", "in", "rl", *recipe.variants] and not board.missing


def test_evict_variants_with_two_gpus_holds_two_variants_at_a_time(tmp_path, recipe, spliced):
    cache = tmp_path / "splices"
    runner = CacheWatchingRunner(cache)
    result = run_transfer(tmp_path / "run", recipe, runner=runner, evict_variants=True, gpus=2,
                          **_evict_kwargs(tmp_path))
    assert len(result.ran) == (3 + len(recipe.variants)) * len(TASKS) and not result.failed
    assert runner.devices == {"0", "1"}
    assert max(runner.on_disk) == 2 and min(runner.on_disk[N_REF_CELLS:]) == 2  # chunks of two (6 variants)
    assert spliced == list(recipe.variants) and variant_dirs(cache) == []


def test_evict_variants_keeps_a_splice_that_was_in_the_cache_before(tmp_path, recipe):
    from frankeneval.transferability.splice import PROVENANCE, materialize_cached

    cache, run = tmp_path / "splices", tmp_path / "run"
    first = next(iter(recipe.variants))
    served = materialize_cached(recipe.variant(first), cache, progress=False)  # e.g. for vLLM serving
    before = ((served / PROVENANCE).read_bytes(), served.stat().st_ino)
    runner = CacheWatchingRunner(cache)
    run_transfer(run, recipe, runner=runner, evict_variants=True, **_evict_kwargs(tmp_path))
    assert variant_dirs(cache) == [served.name]
    assert ((served / PROVENANCE).read_bytes(), served.stat().st_ino) == before
    entry = _manifest(run)["models"][first]
    assert entry["evicted"] is False and "before this run" in entry["kept"] and "splice_owner" not in entry
    assert all(_manifest(run)["models"][v]["evicted"] for v in recipe.variants if v != first)
    # a rerun does not take it for its own either
    run_transfer(run, recipe, runner=CountingRunner(), evict_variants=True, **_evict_kwargs(tmp_path))
    assert variant_dirs(cache) == [served.name]


def test_evict_variants_rerun_of_a_finished_run_materializes_nothing(tmp_path, recipe, spliced):
    run = tmp_path / "run"
    run_transfer(run, recipe, runner=CountingRunner(), evict_variants=True, **_evict_kwargs(tmp_path))
    spliced.clear()
    again = CountingRunner()
    result = run_transfer(run, recipe, runner=again, evict_variants=True, **_evict_kwargs(tmp_path))
    assert spliced == [] and again.calls == [] and not result.ran
    assert len(result.skipped) == len(result.cells) == (3 + len(recipe.variants)) * len(TASKS)
    assert variant_dirs(tmp_path / "splices") == [] and _manifest(run)["evict_variants"] is True


def test_evict_variants_resumes_after_a_crash_without_resplicing_finished_variants(tmp_path, recipe, spliced):
    from frankeneval.transferability.splice import cache_path

    cache, run = tmp_path / "splices", tmp_path / "run"
    names = list(recipe.variants)
    crash_after = N_REF_CELLS + len(TASKS) + 1  # the first variant finishes, the second crashes in its 2nd cell
    crashing = CacheWatchingRunner(cache, crash_after=crash_after)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_transfer(run, recipe, runner=crashing, evict_variants=True, **_evict_kwargs(tmp_path))
    assert spliced == names[:2]
    second = cache_path(recipe.variant(names[1]), cache)
    assert variant_dirs(cache) == [second.name]  # the finished first one went; the crashed one is left for the rerun
    inode = second.stat().st_ino
    assert _manifest(run)["models"][names[0]]["evicted"] is True
    # the interrupted run's report names every planned cell it lacks, also those of the variants never started
    from frankeneval.reports.leaderboard.build import build_leaderboard

    board = build_leaderboard(run)
    assert board.rows == ["base", "in", "rl", *names]
    assert {k.partition("::")[0] for k in board.missing} == set(names[1:])
    assert len(board.missing) == (len(names) - 1) * len(TASKS) - 1  # the second variant's first cell finished

    spliced.clear()
    resumed = CacheWatchingRunner(cache)
    result = run_transfer(run, recipe, runner=resumed, evict_variants=True, **_evict_kwargs(tmp_path))
    n_cells = (3 + len(names)) * len(TASKS)
    assert spliced == names[1:]  # the finished variant is not spliced again
    assert (len(resumed.calls) == len(result.ran) == n_cells - crash_after
            and not set(resumed.calls) & set(crashing.calls))
    assert not result.failed and len(result.skipped) == crash_after
    assert max(resumed.on_disk) == 1 and variant_dirs(cache) == []
    # the crashed run's splice was reused (the same folder while its cells ran), then deleted as this run's own
    assert resumed.inodes[names[1]] == {inode}
    assert all(e["evicted"] is True for v, e in _manifest(run)["models"].items() if v in names)


def test_evict_variants_deletes_the_leftover_of_a_killed_run_without_resplicing(tmp_path, recipe, spliced, monkeypatch):
    from frankeneval.transferability import splice

    cache, run = tmp_path / "splices", tmp_path / "run"
    names = list(recipe.variants)

    def killed(*args, **kwargs):  # killed after the first variant's cells, before it was deleted
        raise KeyboardInterrupt

    monkeypatch.setattr(splice, "evict_splice", killed)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(run, recipe, runner=CountingRunner(), evict_variants=True, **_evict_kwargs(tmp_path))
    assert len(variant_dirs(cache)) == 1 and "splice_owner" in _manifest(run)["models"][names[0]]
    monkeypatch.undo()  # evict_splice back; the spy too: set it again

    seen: list[str] = []
    real = splice.materialize_cached
    monkeypatch.setattr(splice, "materialize_cached",
                        lambda spec, cache_dir=None, **kw: seen.append(spec.name) or real(spec, cache_dir, **kw))
    run_transfer(run, recipe, runner=CountingRunner(), evict_variants=True, **_evict_kwargs(tmp_path))
    assert seen == [recipe.variant(v).name for v in names[1:]]  # the first one: deleted, not spliced again
    assert variant_dirs(cache) == []
    entry = _manifest(run)["models"][names[0]]
    assert entry["evicted"] is True and "splice_owner" not in entry


def test_evict_variants_keeps_a_splice_that_is_no_longer_exactly_its_own(tmp_path, recipe):
    cache, run = tmp_path / "splices", tmp_path / "run"
    first = next(iter(recipe.variants))

    def runner(job: CellJob) -> None:
        if job.cell.model == first:  # someone drops a file of their own into the splice while it is evaluated
            (Path(job.pretrained) / "notes.txt").write_text("mine")
        write_fake_lmms_output(job)

    run_transfer(run, recipe, runner=runner, evict_variants=True, **_evict_kwargs(tmp_path))
    left = variant_dirs(cache)
    assert len(left) == 1 and (cache / left[0] / "notes.txt").read_text() == "mine"
    entry = _manifest(run)["models"][first]
    assert entry["evicted"] is False and "did not write" in entry["kept"]


def test_evict_variants_deletes_a_variant_with_a_failed_cell_and_the_rerun_splices_it_again(tmp_path, recipe, spliced):
    cache, run = tmp_path / "splices", tmp_path / "run"
    names = list(recipe.variants)
    runner = CacheWatchingRunner(cache, fail=f"{names[2]}::{TASKS[1]}")
    with pytest.raises(FrankenevalError, match="1 of .* cells failed"):
        run_transfer(run, recipe, runner=runner, evict_variants=True, **_evict_kwargs(tmp_path))
    assert max(runner.on_disk) == 1 and variant_dirs(cache) == []  # the disk bound holds despite the failure
    assert _manifest(run)["models"][names[2]]["evicted"] is True
    spliced.clear()
    again = CountingRunner()
    run_transfer(run, recipe, runner=again, evict_variants=True, **_evict_kwargs(tmp_path))
    assert spliced == [names[2]] and again.calls == [f"{names[2]}::{TASKS[1]}"] and variant_dirs(cache) == []


def test_without_evict_variants_everything_is_materialized_up_front_and_kept(tmp_path, recipe, spliced):
    cache, run = tmp_path / "splices", tmp_path / "run"
    runner = CacheWatchingRunner(cache)
    result = run_transfer(run, recipe, runner=runner, **_evict_kwargs(tmp_path))
    assert not result.failed
    assert spliced == list(recipe.variants)
    assert set(runner.on_disk) == {len(recipe.variants)}  # all of them before the first cell, none deleted
    assert len(variant_dirs(cache)) == len(recipe.variants)
    data = _manifest(run)
    assert "evict_variants" not in data
    assert not any({"evicted", "kept", "splice_owner"} & set(e) for e in data["models"].values())


def test_cli_passes_evict_variants(monkeypatch, tmp_path):
    import argparse

    from frankeneval.commands import transfer as command

    seen: list[dict] = []

    def fake(run_dir, recipe, **kwargs):
        seen.append(kwargs)
        from frankeneval.transferability.transfer import TransferResult

        return TransferResult(run_dir=Path(run_dir), cells=[])

    monkeypatch.setattr(command, "run_transfer", fake)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    for extra, expected in (([], False), (["--evict-variants"], True)):
        assert command.run(parser.parse_args(["--recipe", "tiny", "--out", str(tmp_path / "run"), *extra])) == 0
        assert seen[-1]["evict_variants"] is expected


def test_gpu_pool_retries_a_failed_cell_on_another_gpu(tmp_path, recipe, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    models = {m: {"path": str(recipe.models["in"]), "kind": "variant"} for m in ("a", "b")}
    calls = []

    def runner(job: CellJob) -> None:
        calls.append((job.cell.key, job.env["CUDA_VISIBLE_DEVICES"]))
        if job.cell.key == "b::t1" and job.env["CUDA_VISIBLE_DEVICES"] == "0":
            raise CellFailed("GPU 0 is broken for this cell")
        if job.cell.key == "a::t2":
            raise CellFailed("fails everywhere")
        write_fake_lmms_output(job)


    result = run_cells(tmp_path / "run", models, ["t1", "t2"], runner=runner, gpus=2, progress=lambda s: None)
    assert "b::t1" in {c.key for c in result.ran}  # retried on GPU 1
    assert list(result.failed) == ["a::t2"]
    tries = [g for k, g in calls if k == "a::t2"]
    assert len(tries) == 2 and len(set(tries)) == 2  # once on each GPU, then recorded as failed


def test_gpu_pool_maps_onto_the_visible_devices(tmp_path, recipe, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    models = {"a": {"path": str(recipe.models["in"]), "kind": "variant"}}
    seen = []

    def runner(job: CellJob) -> None:
        seen.append(job.env["CUDA_VISIBLE_DEVICES"])
        write_fake_lmms_output(job)

    run_cells(tmp_path / "run", models, ["t1", "t2", "t3"], runner=runner, gpus=2, progress=lambda s: None)
    assert set(seen) <= {"5", "7"} and seen
    with pytest.raises(FrankenevalError, match="CUDA_VISIBLE_DEVICES"):
        run_cells(tmp_path / "run2", models, ["t1"], runner=runner, gpus=3, progress=lambda s: None)
