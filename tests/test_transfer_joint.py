"""One lmms-eval process per model: a model's pending cells run together and the output is cut into the cells."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from frankeneval.reports.leaderboard.build import build_leaderboard
from frankeneval.transferability.cells import CellFailed, CellJob, find_results
from frankeneval.transferability.transfer import gpu_shares, run_cells

MODELS = {m: {"path": f"/models/{m}", "kind": m, "description": m} for m in ("in", "rl")}
TASKS = ["t1", "t2,t3"]  # a cell may itself be a comma list of tasks


class LmmsEvalLike:
    """lmms-eval-shaped output for every task in ``--tasks`` (scores fixed by model and task, not by the process)."""

    def __init__(self, fail_joint: bool = False):
        self.calls: list[tuple[str, str]] = []
        self.fail_joint = fail_joint

    def __call__(self, job: CellJob) -> None:
        self.calls.append((job.cell.model, job.task_arg))
        if self.fail_joint and "t1" in job.task_arg and "t2" in job.task_arg:
            raise CellFailed("boom")
        out = job.output_dir / "models__m"
        out.mkdir(parents=True)
        results, configs = {}, {}
        for task in job.task_arg.split(","):
            seed = zlib.crc32(f"{job.cell.model}/{task}".encode())
            scores = [(seed >> i) & 1 for i in range(6)]
            with open(out / f"20260101_000000_samples_{task}.jsonl", "w") as f:
                for i, v in enumerate(scores):
                    f.write(json.dumps({"doc_id": i, "rule_acc": {"id": str(i), "score": v}}) + "\n")
            results[task] = {"alias": task, "rule_acc,none": sum(scores) / len(scores)}
            configs[task] = {"task": task}
        data = {"results": results, "configs": configs, "versions": {t: 1 for t in results},
                "config": {"model": "franken_qwen"}, "date": "20260101_000000"}
        (out / "20260101_000000_results.json").write_text(json.dumps(data))


def _values(run: Path) -> dict:
    board = build_leaderboard(run)
    return {(m, t): board.get(m, t, "rule_acc").value for m in MODELS for t in ("t1", "t2", "t3")}


def test_joint_run_loads_each_model_once_and_its_cells_equal_separate_runs(tmp_path):
    joint, single = LmmsEvalLike(), LmmsEvalLike()
    run_cells(tmp_path / "joint", MODELS, TASKS, runner=joint, joint=True, progress=lambda s: None)
    run_cells(tmp_path / "single", MODELS, TASKS, runner=single, joint=False, progress=lambda s: None)
    assert joint.calls == [("in", "t1,t2,t3"), ("rl", "t1,t2,t3")]
    assert len(single.calls) == 4
    assert _values(tmp_path / "joint") == _values(tmp_path / "single")
    for m in MODELS:
        res, samples = find_results(tmp_path / "joint" / "cells" / m / "t2+t3")
        data = json.loads(res.read_text())
        assert set(samples) == {"t2", "t3"} and set(data["results"]) == {"t2", "t3"}
        assert set(data["configs"]) == set(data["versions"]) == {"t2", "t3"}
        assert data["frankeneval_joint_run"]["tasks"] == TASKS
        for task in ("t2", "t3"):  # the samples are lmms-eval's, unchanged
            other = find_results(tmp_path / "single" / "cells" / m / "t2+t3")[1][task]
            assert samples[task].read_bytes() == other.read_bytes()
        assert set(find_results(tmp_path / "joint" / "cells" / m / "t1")[1]) == {"t1"}
        assert not (tmp_path / "joint" / "cells" / m / ".joint.partial").exists()
    # resumed: nothing runs again
    again = LmmsEvalLike()
    assert len(run_cells(tmp_path / "joint", MODELS, TASKS, runner=again, joint=True,
                         progress=lambda s: None).skipped) == 4
    assert again.calls == []


def test_a_failed_joint_run_falls_back_to_one_process_per_cell(tmp_path):
    runner = LmmsEvalLike(fail_joint=True)
    result = run_cells(tmp_path / "run", MODELS, TASKS, runner=runner, joint=True, progress=lambda s: None)
    assert not result.failed and len(result.ran) == 4
    assert runner.calls == [("in", "t1,t2,t3"), ("in", "t1"), ("in", "t2,t3"),
                            ("rl", "t1,t2,t3"), ("rl", "t1"), ("rl", "t2,t3")]
    assert _values(tmp_path / "run") == _values(_separate(tmp_path))


def test_only_the_unfinished_cells_of_a_model_run_together(tmp_path):
    run = tmp_path / "run"
    run_cells(run, MODELS, TASKS[:1], runner=LmmsEvalLike(), joint=True, progress=lambda s: None)
    runner = LmmsEvalLike()
    run_cells(run, MODELS, [*TASKS, "t4"], runner=runner, joint=True, progress=lambda s: None)
    assert runner.calls == [("in", "t2,t3,t4"), ("rl", "t2,t3,t4")]


class SharedProcessLike(LmmsEvalLike):
    """A ``chunk_runner``: each share's jobs in one call (as one lmms-eval ``--config`` process), each job's
    output as :class:`LmmsEvalLike` writes it; ``no_output``: models that write nothing (an entry that failed)."""

    def __init__(self, no_output: tuple[str, ...] = ()):
        super().__init__()
        self.shares: list[list[tuple[str, str]]] = []
        self.no_output = no_output

    def share(self, jobs, log_path: Path) -> None:
        self.shares.append([(j.cell.model, j.task_arg) for j in jobs])
        for job in jobs:
            if job.cell.model not in self.no_output:
                self(job)


def test_one_process_per_gpu_runs_its_models_in_one_call_and_equals_separate_runs(tmp_path):
    proc = SharedProcessLike()
    run_cells(tmp_path / "run", MODELS, TASKS, runner=LmmsEvalLike(), chunk_runner=proc.share, joint="gpu",
              progress=lambda s: None)
    assert proc.shares == [[("in", "t1,t2,t3"), ("rl", "t1,t2,t3")]]
    assert _values(tmp_path / "run") == _values(_separate(tmp_path))
    for m in MODELS:
        assert not (tmp_path / "run" / "cells" / m / ".joint.partial").exists()
        assert set(find_results(tmp_path / "run" / "cells" / m / "t2+t3")[1]) == {"t2", "t3"}
    again = SharedProcessLike()  # resumed: nothing runs again
    assert len(run_cells(tmp_path / "run", MODELS, TASKS, runner=LmmsEvalLike(), chunk_runner=again.share,
                         joint="gpu", progress=lambda s: None).skipped) == 4
    assert again.shares == []


def test_a_model_missing_from_the_shared_process_runs_on_its_own(tmp_path):
    proc, own = SharedProcessLike(no_output=("rl",)), LmmsEvalLike()
    result = run_cells(tmp_path / "run", MODELS, TASKS, runner=own, chunk_runner=proc.share, joint="gpu",
                       progress=lambda s: None)
    assert not result.failed and len(result.ran) == 4
    assert own.calls == [("rl", "t1,t2,t3")]  # only the model without output, in its own process
    assert _values(tmp_path / "run") == _values(_separate(tmp_path))


def test_gpu_shares_deal_the_models_round_robin():
    groups = [("a",), ("b",), ("c",)]
    assert gpu_shares(groups, 2) == [[("a",), ("c",)], [("b",)]]
    assert gpu_shares(groups, 0) == gpu_shares(groups, 1) == [groups]
    assert gpu_shares(groups[:1], 4) == [[("a",)]]


def _separate(tmp_path: Path) -> Path:
    run = tmp_path / "separate"
    run_cells(run, MODELS, TASKS, runner=LmmsEvalLike(), joint=False, progress=lambda s: None)
    return run


def test_real_lmms_eval_joint_run_equals_one_process_per_cell(tmp_path, tiny_lineage, shared_data):
    """franken_qwen through lmms-eval on the tiny IN model: GSM8K and MATH-500 in one process give the same
    responses and scores as one process each (float32 on the CPU)."""
    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}}
    tasks = ["franken_gsm8k", "franken_math500"]
    kw = dict(sample_size=2, sample_seed=123, data_dir=shared_data, max_new_tokens=6, batch_size=2,
              progress=lambda s: None)
    joint = run_cells(tmp_path / "joint", models, tasks, **kw)
    single = run_cells(tmp_path / "single", models, tasks, joint=False, **kw)
    assert not joint.failed and not single.failed, (joint.failed, single.failed)
    assert (tmp_path / "joint" / "logs" / "in__joint.log").is_file()
    for task in tasks:
        a = find_results(tmp_path / "joint" / "cells" / "in" / task)[1][task]
        b = find_results(tmp_path / "single" / "cells" / "in" / task)[1][task]
        rows_a = [json.loads(x) for x in a.read_text(encoding="utf-8").split("\n") if x]  # not splitlines():
        rows_b = [json.loads(x) for x in b.read_text(encoding="utf-8").split("\n") if x]  # responses hold U+2028
        key = ("filtered_resps", "rule_acc")
        assert [[r[k] for k in key] for r in rows_a] == [[r[k] for k in key] for r in rows_b]
        assert [r["doc_id"] for r in rows_a] == [r["doc_id"] for r in rows_b]
    assert _board(tmp_path / "joint", tasks) == _board(tmp_path / "single", tasks)


def _board(run: Path, tasks: list[str]) -> dict:
    board = build_leaderboard(run)
    return {t: board.get("in", t, "rule_acc").value for t in tasks}


def test_real_lmms_eval_process_per_gpu_equals_one_process_per_cell(tmp_path, tiny_lineage, shared_data):
    """Two tiny models through one lmms-eval ``--config`` process give the same responses and scores as one
    process per cell (float32 on the CPU)."""
    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}, "rl": {"path": str(tiny_lineage.rl), "kind": "rl"}}
    tasks = ["franken_gsm8k"]
    kw = dict(sample_size=2, sample_seed=123, data_dir=shared_data, max_new_tokens=6, batch_size=2,
              progress=lambda s: None)
    shared = run_cells(tmp_path / "shared", models, tasks, joint="gpu", **kw)
    single = run_cells(tmp_path / "single", models, tasks, joint=False, **kw)
    assert not shared.failed and not single.failed, (shared.failed, single.failed)
    assert (tmp_path / "shared" / "logs" / "process.log").is_file()
    assert not (tmp_path / "shared" / "logs" / "in__joint.log").exists()  # no model ran on its own
    for m in models:
        a = find_results(tmp_path / "shared" / "cells" / m / "franken_gsm8k")[1]["franken_gsm8k"]
        b = find_results(tmp_path / "single" / "cells" / m / "franken_gsm8k")[1]["franken_gsm8k"]
        rows_a = [json.loads(x) for x in a.read_text(encoding="utf-8").split("\n") if x]
        rows_b = [json.loads(x) for x in b.read_text(encoding="utf-8").split("\n") if x]
        key = ("doc_id", "filtered_resps", "rule_acc")
        assert [[r[k] for k in key] for r in rows_a] == [[r[k] for k in key] for r in rows_b]



DRIVER = """
import gc, json, sys, weakref
from frankeneval.model_wrappers import franken_qwen
built, alive = [], []
real = franken_qwen.build_generator
def watched(*a):
    alive.append(sum(ref() is not None for ref in built))  # earlier models still in memory as this one loads
    gen = real(*a)
    built.append(weakref.ref(gen.model))
    return gen
franken_qwen.build_generator = watched
gc.disable()  # collection only where the code asks for it, not when the interpreter happens to run it
sys.argv = ["lmms_eval", "--config", sys.argv[1]]
from lmms_eval.__main__ import cli_evaluate
cli_evaluate()
print("ALIVE " + json.dumps(alive))
"""


def test_one_lmms_eval_process_frees_each_model_before_the_next_loads(tmp_path, tiny_lineage, shared_data):
    """lmms-eval's --config list (--process-per-gpu) builds one model after another in one process; reference
    cycles in the harness keep the previous one alive until a collection, so franken_qwen collects before it
    loads: no earlier model is in memory when the next loads (automatic collection off in the child)."""
    import os
    import subprocess
    import sys

    from frankeneval.core.paths import harness_tasks_dir

    entries = [{"model": "franken_qwen", "model_args": f"pretrained={path},device=cpu,batch_size=2,max_new_tokens=4",
                "tasks": "franken_gsm8k", "include_path": str(harness_tasks_dir()),
                "output_path": str(tmp_path / name), "log_samples": True, "gen_kwargs": "max_new_tokens=4"}
               for name, path in (("in", tiny_lineage.in_), ("rl", tiny_lineage.rl), ("in2", tiny_lineage.in_))]
    (tmp_path / "config.yaml").write_text(json.dumps(entries))
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "FRANKENEVAL_DATA": str(shared_data), "FRANKENEVAL_SAMPLE_SIZE": "2",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "config.yaml")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    line = [x for x in proc.stdout.splitlines() if x.startswith("ALIVE ")]
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(line[-1][6:]) == [0, 0, 0]
    assert all(find_results(tmp_path / n)[0] is not None for n in ("in", "rl", "in2"))
