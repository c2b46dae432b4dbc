"""Transfer runs (issue 33): --cuts, --reuse-from, --regrade and the per-item generation time limit."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest

from frankeneval.errors import FrankenevalError
from frankeneval.transferability.cells import CellJob, find_results
from frankeneval.transferability.transfer import TransferResult, run_cells, run_transfer

TASKS = ["franken_mathvista_perception", "franken_math500"]


class Runner:
    """A fake cell runner: lmms-eval-shaped output with scores fixed by model and task; counts its calls."""

    def __init__(self):
        self.calls: list[str] = []
        self.jobs: list[CellJob] = []

    def __call__(self, job: CellJob) -> None:
        from test_transfer import write_fake_lmms_output

        self.calls.append(job.cell.key)
        self.jobs.append(job)
        write_fake_lmms_output(job, seed=len(job.cell.key))


@pytest.fixture()
def recipe(tiny_lineage):
    from frankeneval.transferability.recipes import tiny_recipe

    return tiny_recipe(tiny_lineage)


def _kwargs(tmp_path: Path, **extra) -> dict:
    return dict(tasks=TASKS, splice_cache=tmp_path / "splices", sample_size=6, sample_seed=123, data_dir=tmp_path,
                progress=lambda s: None, **extra)


def _manifest(run: Path) -> dict:
    return json.loads((run / "transfer.json").read_text())


def _records(run: Path) -> dict[str, dict]:
    lines = [json.loads(x) for x in (run / "cells.jsonl").read_text().splitlines() if x.strip()]
    return {x["key"]: x["record"] for x in lines if "key" in x}


# -- --cuts ---------------------------------------------------------------------------------------------------------
def test_cuts_reach_the_variants_are_recorded_and_other_cuts_rerun_only_changed_variants(tmp_path, recipe):
    from frankeneval.transferability.splice import plan_splice
    from frankeneval.transferability.transfer import _with_cuts

    run = tmp_path / "run"
    first = Runner()
    run_transfer(run, recipe, runner=first, **_kwargs(tmp_path))
    assert _manifest(run)["settings"]["cuts"] == [2, 4]  # the tiny recipe's default, n // 3 and 2n // 3 of 6 layers
    cut = _with_cuts(recipe, [2, 5])
    layers = [x["mlp"] for x in cut.variant("in_early_middle+rl_late").layers]
    assert layers == ["in"] * 5 + ["rl"]  # IN early 2/3 = layers 1-5
    changed = {v for v in recipe.variants
               if plan_splice(cut.variant(v)).build_hash != plan_splice(recipe.variant(v)).build_hash}
    # "IN early 1/3 + RL late 2/3" does not move with the second cut; the others do
    assert changed == set(recipe.variants) - {"in_early+rl_middle_late", "rl_early+in_middle_late"}

    again = Runner()
    result = run_transfer(run, recipe, runner=again, cuts=[2, 5], **_kwargs(tmp_path))
    assert {k.split("::")[0] for k in again.calls} == changed  # Base / IN / RL and the unchanged variants: kept
    assert len(result.skipped) == (3 + len(recipe.variants) - len(changed)) * len(TASKS)
    assert _manifest(run)["settings"]["cuts"] == [2, 5]
    for v in changed:  # each rerun cell is stamped with the new splice's build hash
        stamp = json.loads((run / "cells" / v / TASKS[0] / "frankeneval_cell.json").read_text())
        assert stamp["fingerprint"] == {"splice": plan_splice(cut.variant(v)).build_hash}
    with pytest.raises(FrankenevalError, match="cuts"):
        run_transfer(tmp_path / "bad", recipe, runner=Runner(), cuts=[4, 2], **_kwargs(tmp_path))


def test_cli_passes_cuts_time_limit_and_reuse_and_routes_regrade(monkeypatch, tmp_path):
    from frankeneval.commands import transfer as command
    from frankeneval.transferability import reuse

    seen: list[dict] = []
    monkeypatch.setattr(command, "run_transfer", lambda run_dir, recipe, **kw: seen.append(kw)
                        or TransferResult(run_dir=Path(run_dir), cells=[]))
    regrades: list[tuple] = []
    monkeypatch.setattr(reuse, "regrade_run", lambda *a, **kw: regrades.append((a, kw))
                        or TransferResult(run_dir=Path(a[1]), cells=[]))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = str(tmp_path / "run")
    assert command.run(parser.parse_args(["--recipe", "tiny", "--out", out, "--cuts", "8", "20",
                                          "--item-time-limit", "2.5", "--reuse-from", "old"])) == 0
    assert seen[-1]["cuts"] == [8, 20] and seen[-1]["item_time_limit"] == 2.5 and seen[-1]["reuse_from"] == "old"
    assert command.run(parser.parse_args(["--regrade", "seed", "--from", "old", "--out", out, "--no-judge"])) == 0
    (args, kw), = regrades
    assert args == ("old", out, "seed") and kw["judge"] is False
    with pytest.raises(FrankenevalError, match="--from"):
        command.run(parser.parse_args(["--regrade", "judge", "--out", out]))
    with pytest.raises(FrankenevalError, match="drop --recipe"):
        command.run(parser.parse_args(["--regrade", "judge", "--from", "old", "--recipe", "tiny", "--out", out]))
    with pytest.raises(FrankenevalError, match="--recipe"):
        command.run(parser.parse_args(["--out", out]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--recipe", "tiny", "--out", out, "--item-time-limit", "0"])


def test_regrade_maps_onto_the_grading_settings():
    from frankeneval.transferability.reuse import grading_settings

    assert grading_settings("rules") == ("paper", False)
    assert grading_settings("judge") == ("paper", True)
    assert grading_settings("seed") == ("seed", True)
    assert grading_settings("seed", judge=False) == ("seed", False)  # the reference's rules alone
    assert grading_settings("rules", grading_mode="seed") == ("seed", False)
    with pytest.raises(FrankenevalError):
        grading_settings("rules", judge=True)
    with pytest.raises(FrankenevalError):
        grading_settings("vibes")


# -- --reuse-from ---------------------------------------------------------------------------------------------------
def _changed_copy(src: Path, dest: Path) -> Path:
    """A copy of the checkpoint ``src`` with one weight changed (same names, same config: other content)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    shard = sorted(dest.glob("*.safetensors"))[-1]
    tensors = load_file(shard)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, shard, metadata={"format": "pt"})
    return dest


def test_reuse_from_takes_identical_cells_and_refuses_a_changed_model(tmp_path, recipe):
    models = {"in": {"path": str(recipe.models["in"]), "kind": "in"},
              "rl": {"path": str(recipe.models["rl"]), "kind": "rl"}}
    kw = dict(sample_size=6, sample_seed=123, progress=lambda s: None)
    first = tmp_path / "first"
    run_cells(first, models, TASKS, runner=Runner(), **kw)

    changed = dict(models, rl={"path": str(_changed_copy(Path(recipe.models["rl"]), tmp_path / "rl2")), "kind": "rl"})
    said: list[str] = []
    runner = Runner()
    second = tmp_path / "second"
    result = run_cells(second, changed, TASKS, runner=runner, reuse_from=first, **{**kw, "progress": said.append})
    # IN: same content, same task and settings -> taken; RL: its weights changed -> refused, run here, saying why
    assert sorted(c.key for c in result.reused) == [f"in::{t}" for t in sorted(TASKS)]
    assert sorted(runner.calls) == [f"rl::{t}" for t in sorted(TASKS)]
    assert sum("rl x" in s and "not taken" in s and "weights changed" in s for s in said) == len(TASKS)
    records = _records(second)
    for t in TASKS:
        origin = records[f"in::{t}"]["reused_from"]
        assert origin["run"] == str(first.absolute()) and origin["model"] == "in" and origin["task"] == t
        assert "reused_from" not in records[f"rl::{t}"]
        a, b = find_results(first / "cells" / "in" / t)[0], find_results(second / "cells" / "in" / t)[0]
        assert a.read_bytes() == b.read_bytes() and a.stat().st_ino == b.stat().st_ino  # hard-linked
    assert _manifest(second)["reuse_from"] == str(first)
    from frankeneval.reports.leaderboard.build import build_leaderboard

    board = build_leaderboard(second)
    assert not board.missing and board.get("in", TASKS[1], "rule_acc").value == \
        build_leaderboard(first).get("in", TASKS[1], "rule_acc").value

    # fingerprints, not names: another label of the same content is taken too
    renamed = {"in_copy": models["in"]}
    third = Runner()
    result = run_cells(tmp_path / "third", renamed, TASKS, runner=third, reuse_from=first, **kw)
    assert third.calls == [] and len(result.reused) == len(TASKS)
    assert _records(tmp_path / "third")[f"in_copy::{TASKS[0]}"]["reused_from"]["model"] == "in"

    # other settings: nothing is taken, and the run says so once
    said.clear()
    fourth = Runner()
    run_cells(tmp_path / "fourth", models, TASKS, runner=fourth, reuse_from=first,
              **{**kw, "sample_size": 5, "progress": said.append})
    assert len(fourth.calls) == 2 * len(TASKS)
    assert any("nothing taken" in s and "sample_size" in s for s in said)


# -- the per-item time limit ----------------------------------------------------------------------------------------
def test_generator_time_limit_cuts_rows_off_as_timeout(tiny_lineage):
    from frankeneval.engine.generation import Generator, GenRequest

    reqs = [GenRequest("What is 2+2?"), GenRequest("Hello there, how are you doing today?")]
    for decode in ("auto", "hf"):  # the static decoder's done callback and model.generate's stopping criterion
        gen = Generator.load(str(tiny_lineage.in_), device="cpu", decode=decode)
        free = gen.generate(reqs, max_new_tokens=24, batch_size=2, ignore_eos=True)
        cut = gen.generate(reqs, max_new_tokens=24, batch_size=2, ignore_eos=True, time_limit=1e-9)
        again = gen.generate(reqs, max_new_tokens=24, batch_size=2, ignore_eos=True)
        assert [r.finish_reason for r in free] == [r.finish_reason for r in again] == ["length", "length"]
        assert [r.finish_reason for r in cut] == ["timeout", "timeout"], decode
        assert all(len(c.token_ids) < 24 and f.token_ids[: len(c.token_ids)] == c.token_ids
                   for f, c in zip(free, cut))
        assert [r.token_ids for r in again] == [r.token_ids for r in free]  # the limit does not outlive its call


def test_scoring_counts_a_timed_out_item_apart_from_wrong():
    from frankeneval.model_wrappers.model_args import GeneratedText
    from frankeneval.tasks.common import count, judge_accuracy, mean_score
    from task_doubles import local_task

    judged = []

    def process_results(doc, results, settings=None):
        if settings is not None and settings.judge:
            judged.append(doc["id"])
        return {"rule_acc": {"id": doc["id"], "score": 0, "extracted": "x"}}

    from frankeneval.tasks.common import TaskSettings

    task = local_task("fe_timeout_test", process_results, ["rule_acc", "hit_limit", "timed_out"],
                      [GeneratedText("par", "timeout"), GeneratedText("full answer", "stop"), "other model"],
                      settings=TaskSettings(judge=True))
    out = [task.score({"id": k}, [str(inst.filtered_resps["none"])]) for k, inst in zip("abc", task.instances)]
    assert [o.get("timed_out") for o in out] == [1, None, None] and [o.get("hit_limit") for o in out] == [0, 0, None]
    assert out[0]["rule_acc"] == {"id": "a", "extracted": "x", "timed_out": True}  # no score: not wrong
    assert judged == ["b", "c"]  # the timed-out item costs no judge call
    assert mean_score([o["rule_acc"] for o in out]) == 0.0 and judge_accuracy([o["rule_acc"] for o in out[1:]]) == 0
    assert count([o["timed_out"] for o in out if "timed_out" in o]) == 1


def test_report_counts_timed_out_items(tmp_path):
    from frankeneval.reports.leaderboard.build import build_leaderboard
    from frankeneval.reports.leaderboard.render_csv import to_csv
    from frankeneval.reports.leaderboard.text import cell_parts

    def runner(job: CellJob) -> None:
        d = job.output_dir / "m"
        d.mkdir(parents=True)
        lines = [{"doc_id": 0, "rule_acc": {"id": "0", "score": 1}, "timed_out": 0},
                 {"doc_id": 1, "rule_acc": {"id": "1", "timed_out": True}, "timed_out": 1}]
        (d / f"x_samples_{job.cell.task}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        (d / "x_results.json").write_text(json.dumps({"results": {job.cell.task: {
            "rule_acc,none": 1.0, "timed_out,none": 1, "hit_limit,none": 0}}}))

    run = tmp_path / "run"
    run_cells(run, {"in": {"path": "/models/in", "kind": "in"}}, ["t"], runner=runner, progress=lambda s: None)
    board = build_leaderboard(run)
    entry = board.get("in", "t", "rule_acc")
    assert entry.timed_out == 1 and entry.n == 1 and entry.value == 1.0
    column = next(c for c in board.columns if c.key == "t")
    assert "1 timed out" in cell_parts(board, "in", column, "rule_acc", True)[2]
    lines = to_csv(board).splitlines()
    assert "timed_out" in lines[0].split(",") and any(",1," in x for x in lines[1:])


def test_real_lmms_eval_cell_with_a_tiny_time_limit_times_out_every_item(tmp_path, tiny_lineage, shared_data):
    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}}
    run = tmp_path / "run"
    result = run_cells(run, models, ["franken_gsm8k"], sample_size=2, sample_seed=123, data_dir=shared_data,
                       max_new_tokens=64, batch_size=1, item_time_limit=1e-6, progress=lambda s: None)
    assert not result.failed, result.failed
    res, samples = find_results(run / "cells" / "in" / "franken_gsm8k")
    metrics = json.loads(res.read_text())["results"]["franken_gsm8k"]
    assert metrics["timed_out,none"] == 2 and metrics["hit_limit,none"] == 0
    rows = [json.loads(x) for x in samples["franken_gsm8k"].read_text().splitlines()]
    assert all(r["timed_out"] == 1 and "score" not in r["rule_acc"] and r["rule_acc"]["timed_out"] for r in rows)
    header = json.loads((run / "cells.jsonl").read_text().splitlines()[0])["_header"]
    assert header["item_time_limit"] == 1e-6
    from frankeneval.reports.leaderboard.build import build_leaderboard
    from frankeneval.reports.leaderboard.text import cell_parts

    board = build_leaderboard(run)
    entry = board.get("in", "franken_gsm8k", "rule_acc")
    assert entry.value is None and entry.n == 0 and entry.timed_out == 2  # no score, 2 timed out: not "0 %"
    column = next(c for c in board.columns if c.key == "franken_gsm8k")
    assert cell_parts(board, "in", column, "rule_acc", True) == ("–", "", "2 timed out")


# -- --regrade ------------------------------------------------------------------------------------------------------
def test_regrade_refuses_to_write_into_the_run_it_reads(tmp_path):
    from frankeneval.transferability.reuse import regrade_run

    run_cells(tmp_path / "run", {"in": {"path": "/models/in", "kind": "in"}}, ["t"], runner=Runner(),
              progress=lambda s: None)
    for out in (tmp_path / "run", tmp_path / "run" / "regraded"):
        with pytest.raises(FrankenevalError, match="new run folder"):
            regrade_run(tmp_path / "run", out, "rules", progress=lambda s: None)
    other = tmp_path / "other"  # another run's folder: refused before anything is written into it
    run_cells(other, {"in": {"path": "/models/in", "kind": "in"}}, ["t"], runner=Runner(), progress=lambda s: None)
    before = sorted(p.relative_to(other) for p in other.rglob("*"))
    with pytest.raises(FrankenevalError, match="another run than a regrade"):
        regrade_run(tmp_path / "run", other, "rules", progress=lambda s: None)
    assert sorted(p.relative_to(other) for p in other.rglob("*")) == before


def test_write_replay_keeps_responses_prompts_and_finish_reasons(tmp_path):
    from frankeneval.transferability.reuse import write_replay

    # lmms-eval 0.7.3's lines: "input" (the prompt), "resps" only where the raw text differs from "filtered_resps"
    lines = [{"doc_id": 0, "input": "Q0", "resps": " a0", "filtered_resps": "a0", "hit_limit": 1, "timed_out": 0,
              "rule_acc": {"id": "gsm8k_7", "score": 0}},
             {"doc_id": 1, "input": "Q1", "filtered_resps": "a1", "hit_limit": 0, "rule_acc": {"id": "gsm8k_9"}},
             {"doc_id": 2, "resps": [["a2"]], "timed_out": 1, "hit_limit": 0},
             {"doc_id": 3, "doc": {"id": "d3"}, "arguments": ["Q3"], "resps": [["a3"]]}]
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert write_replay({"t": path}, tmp_path / "r.json") == 4
    docs = json.loads((tmp_path / "r.json").read_text())["tasks"]["t"]
    assert docs["0"] == {"id": "gsm8k_7", "context": "Q0", "responses": [" a0"], "finish_reason": "length"}
    assert [docs[k]["finish_reason"] for k in "123"] == ["stop", "timeout", None]
    assert docs["1"]["responses"] == ["a1"] and docs["2"]["context"] is None and docs["2"]["id"] is None
    assert docs["3"] == {"id": "d3", "context": "Q3", "responses": ["a3"], "finish_reason": None}


def _samples(run: Path, model: str, task: str) -> list[dict]:
    res, samples = find_results(run / "cells" / model / task)
    return [json.loads(x) for x in samples[task].read_text().splitlines()]


SCORED = ("doc_id", "input", "target", "resps", "filtered_resps", "rule_acc", "judge_acc", "judge_error", "hit_limit",
          "timed_out")


def test_regrade_equals_a_fresh_run_real_lmms_eval(tmp_path, tiny_lineage, shared_data):
    """The tiny IN model's 2 GSM8K answers, run with the rules alone, then regraded with the reference's grading
    (the judge deciding every item: a fake judge server) equal a fresh run with that grading, sample for sample,
    and the stored run is left as it was."""
    from test_grading import FakeServer

    from frankeneval.transferability.reuse import regrade_run

    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}}
    kw = dict(sample_size=2, sample_seed=123, data_dir=shared_data, max_new_tokens=4, batch_size=2,
              progress=lambda s: None)
    stored = tmp_path / "stored"
    assert not run_cells(stored, models, ["franken_gsm8k"], grading="paper", judge=False, **kw).failed
    before = {p: p.read_bytes() for p in stored.rglob("*") if p.is_file()}
    server = FakeServer(default=(200, '{"is_correct": false, "extracted_answer": "x", "reason": "tiny model"}'))
    try:
        env = {"OPENAI_API_KEY": "dummy", "OPENAI_BASE_URL": server.url,
               "FRANKENEVAL_JUDGE_CACHE": str(tmp_path / "judge")}
        fresh = tmp_path / "fresh"
        assert not run_cells(fresh, models, ["franken_gsm8k"], grading="seed", judge=True, env=env, **kw).failed
        calls = server.calls
        regraded = regrade_run(stored, tmp_path / "regraded", "seed", env=env, progress=lambda s: None)
    finally:
        server.close()
    assert calls > 0 and not regraded.failed and [c.key for c in regraded.ran] == ["in::franken_gsm8k"]
    new = tmp_path / "regraded"
    a, b = _samples(fresh, "in", "franken_gsm8k"), _samples(new, "in", "franken_gsm8k")
    assert len(a) == len(b) == 2
    assert [{k: s.get(k) for k in SCORED} for s in a] == [{k: s.get(k) for k in SCORED} for s in b]
    assert all(s["rule_acc"]["method"] == "reference" and s["judge_acc"]["judged_by"] == "judge (seed)" for s in b)
    assert all(s["hit_limit"] == 1 for s in b)  # the stored finish reason came back (4 tokens: every answer cut)
    res_a = json.loads(find_results(fresh / "cells" / "in" / "franken_gsm8k")[0].read_text())["results"]
    res_b = json.loads(find_results(new / "cells" / "in" / "franken_gsm8k")[0].read_text())["results"]
    assert res_a == res_b
    assert {p: p.read_bytes() for p in stored.rglob("*") if p.is_file()} == before  # the stored run is untouched
    record = _records(new)["in::franken_gsm8k"]
    assert record["regraded_from"]["run"] == str(stored.absolute()) and record["regraded_from"]["grading"] == "seed"
    settings = _manifest(new)["settings"]
    assert settings["grading"] == "seed" and settings["judge"] is True
    assert _manifest(new)["regraded_from"]["run"] == str(stored.absolute())
    assert os.path.isfile(new / "replay" / "in.json")
    command = (new / "logs" / "in__franken_gsm8k.log").read_text().splitlines()[0]
    assert f"replay={new / 'replay' / 'in.json'}" in command  # franken_qwen answered from the stored responses


def test_replay_answers_the_stored_response_only_for_the_same_item_and_prompt(tmp_path):
    from frankeneval.model_wrappers.franken_qwen import ReplayResponses

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"tasks": {"t": {"0": {"id": "a", "context": "Q0", "responses": ["ans"],
                                                      "finish_reason": "length"}}}}))
    replay = ReplayResponses(str(path))
    task_dict = {"t": {"test": [{"id": "a"}]}}
    out = replay.response(("Q0", {}, None, 0, "t", "test"), task_dict)
    assert out == "ans" and out.finish_reason == "length"
    with pytest.raises(FrankenevalError, match="another prompt"):
        replay.response(("Q0 changed", {}, None, 0, "t", "test"), task_dict)
    with pytest.raises(FrankenevalError, match="'b' here"):
        replay.response(("Q0", {}, None, 0, "t", "test"), {"t": {"test": [{"id": "b"}]}})
    with pytest.raises(FrankenevalError, match="no stored response"):
        replay.response(("Q1", {}, None, 1, "t", "test"), task_dict)
