"""--regrade of a transfer run that has API rows (issue 33): the API row's stored responses are scored again with no
network, no key and no API call, and equal a fresh run's scores under the new grading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frankeneval.transferability import cells
from frankeneval.transferability.cells import API_SYSTEM_PROMPT, find_results, lmms_eval_command, parse_api_model
from frankeneval.transferability.transfer import run_cells

GPT = "gpt4o=openai:model_version=gpt-4o,max_retries=1,num_concurrent=1"
KEY_VARS = ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")
SCORED = ("doc_id", "input", "target", "resps", "filtered_resps", "rule_acc", "judge_acc", "judge_error", "hit_limit",
          "timed_out")


def _records(run: Path) -> dict[str, dict]:
    lines = [json.loads(x) for x in (run / "cells.jsonl").read_text().splitlines() if x.strip()]
    return {x["key"]: x["record"] for x in lines if "key" in x}


def _samples(run: Path, model: str, task: str) -> list[dict]:
    _, samples = find_results(run / "cells" / model / task)
    return [json.loads(x) for x in samples[task].read_text().splitlines()]


class Runner:
    """The fake cell runner of the transfer tests (lmms-eval-shaped output), its samples lines with a stored response
    and prompt, as lmms-eval's are; records its jobs."""

    def __init__(self):
        self.jobs: list[cells.CellJob] = []

    def __call__(self, job: cells.CellJob) -> None:
        from test_transfer import write_fake_lmms_output

        self.jobs.append(job)
        write_fake_lmms_output(job, seed=len(job.cell.key))
        _, samples = find_results(job.output_dir)
        for path in samples.values():
            rows = [json.loads(x) for x in path.read_text().splitlines()]
            path.write_text("".join(json.dumps({**r, "input": f"Q{r['doc_id']}", "resps": [[f"A{r['doc_id']}"]]})
                                    + "\n" for r in rows))


def _no_keys(monkeypatch) -> None:
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)


def test_regrade_of_an_api_row_is_a_replay_job_without_key_check_or_api_class(tmp_path, monkeypatch):
    """With the fake cell runner: the regrade of an API row runs franken_qwen's replay (never the API class), asks
    with the stored run's system instruction (so the prompts match the stored ones), keeps the stored fingerprint
    (not one read from this machine's environment) and never checks the key or the server."""
    from frankeneval.transferability.reuse import regrade_run

    _no_keys(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-stored-run-only")
    monkeypatch.setenv("OPENAI_API_BASE", "https://proxy.example:8443/v1")
    _, info = parse_api_model(GPT)
    stored = tmp_path / "stored"
    result = run_cells(stored, {"in": {"path": "/models/in", "kind": "in"}, "gpt4o": info}, ["t"], runner=Runner(),
                       progress=lambda s: None)
    assert not result.failed
    fingerprint = _records(stored)["gpt4o::t"]["model_fingerprint"]
    assert fingerprint["base_url_host"] == "proxy.example:8443"

    _no_keys(monkeypatch)  # the regrading machine: no key, no server

    def refuse(*a, **kw):
        raise AssertionError("the regrade checked API access")

    monkeypatch.setattr(cells, "check_api_access", refuse)
    runner = Runner()
    regraded = regrade_run(stored, tmp_path / "new", "rules", runner=runner, progress=lambda s: None)
    assert not regraded.failed and sorted(c.key for c in regraded.ran) == ["gpt4o::t", "in::t"]
    job = next(j for j in runner.jobs if j.cell.model == "gpt4o")
    cmd = lmms_eval_command(job)
    assert cmd[cmd.index("--model") + 1] == "franken_qwen"
    margs = cmd[cmd.index("--model_args") + 1]
    assert f"replay={tmp_path / 'new' / 'replay' / 'gpt4o.json'}" in margs and "model_version" not in margs
    assert cmd[cmd.index("--system_instruction") + 1] == API_SYSTEM_PROMPT  # the stored contexts were asked so
    assert "OPENAI_API_KEY" not in job.env
    new = tmp_path / "new"
    record = _records(new)["gpt4o::t"]
    assert record["model_fingerprint"] == fingerprint  # the stored row's identity, not this machine's default host
    assert record["regraded_from"]["grading"] == "rules"
    manifest = json.loads((new / "transfer.json").read_text())
    assert manifest["models"]["gpt4o"]["kind"] == "api" and manifest["models"]["gpt4o"]["fingerprint"] == fingerprint
    other = next(j for j in runner.jobs if j.cell.model == "in")
    assert "--system_instruction" not in lmms_eval_command(other)  # franken_qwen's rows: as before


def test_regrade_of_an_api_row_equals_a_fresh_run_real_lmms_eval(tmp_path, monkeypatch, shared_data):
    """An API row (lmms-eval's OpenAI class against a fake server) run with the rules alone, then regraded with the
    reference's rules (``--regrade seed --no-judge``) on a machine with no key and the server gone, equals a fresh
    run with that grading, sample for sample; the regrade made no API call."""
    from test_grading import FakeServer

    from frankeneval.transferability.reuse import regrade_run

    _no_keys(monkeypatch)
    server = FakeServer()
    server.script = [(200, "Step by step. The answer is \\boxed{18}."), (200, "So the answer is 3.")] * 2
    _, info = parse_api_model(GPT)
    kw = dict(sample_size=2, sample_seed=123, data_dir=shared_data, max_new_tokens=32, progress=lambda s: None)
    env = {"OPENAI_API_KEY": "sk-dummy", "OPENAI_API_BASE": server.url}
    stored, fresh = tmp_path / "stored", tmp_path / "fresh"
    try:
        assert not run_cells(stored, {"gpt4o": info}, ["franken_gsm8k"], grading="paper", judge=False, env=env,
                             **kw).failed
        assert not run_cells(fresh, {"gpt4o": info}, ["franken_gsm8k"], grading="seed", judge=False, env=env,
                             **kw).failed
        calls = server.calls
    finally:
        server.close()
    assert calls == 4
    before = {p: p.read_bytes() for p in stored.rglob("*") if p.is_file()}
    new = tmp_path / "regraded"
    regraded = regrade_run(stored, new, "seed", judge=False, progress=lambda s: None)  # no key, no server
    assert not regraded.failed and [c.key for c in regraded.ran] == ["gpt4o::franken_gsm8k"]
    assert server.calls == calls  # no API call
    a, b = _samples(fresh, "gpt4o", "franken_gsm8k"), _samples(new, "gpt4o", "franken_gsm8k")
    assert len(a) == len(b) == 2
    assert [{k: s.get(k) for k in SCORED} for s in a] == [{k: s.get(k) for k in SCORED} for s in b]
    assert all(s["rule_acc"]["method"] == "reference" for s in b)
    res_a = json.loads(find_results(fresh / "cells" / "gpt4o" / "franken_gsm8k")[0].read_text())["results"]
    res_b = json.loads(find_results(new / "cells" / "gpt4o" / "franken_gsm8k")[0].read_text())["results"]
    assert res_a == res_b
    assert {p: p.read_bytes() for p in stored.rglob("*") if p.is_file()} == before
    log = (new / "logs").glob("gpt4o__*.log")
    command = next(iter(log)).read_text().splitlines()[0]
    assert "--model franken_qwen" in command and "replay=" in command
    record = _records(new)["gpt4o::franken_gsm8k"]
    assert record["model_fingerprint"] == _records(stored)["gpt4o::franken_gsm8k"]["model_fingerprint"]
    from frankeneval.reports.leaderboard.build import build_leaderboard

    board = build_leaderboard(new)
    assert board.kinds["gpt4o"] == "api"


@pytest.mark.parametrize("grading", ["judge", "seed"])
def test_regrade_with_the_judge_checks_no_api_row_access(tmp_path, monkeypatch, grading):
    """A judge regrade needs the judge's key, never the API row's server: its access is not checked."""
    from frankeneval.transferability.reuse import regrade_run

    _no_keys(monkeypatch)
    _, info = parse_api_model("sonnet=claude:model_version=claude-sonnet-4-20250514")
    stored = tmp_path / "stored"
    assert not run_cells(stored, {"sonnet": info}, ["t"], runner=Runner(), progress=lambda s: None).failed
    monkeypatch.setattr(cells, "check_api_access",
                        lambda *a, **kw: (_ for _ in ()).throw(AssertionError("API access checked")))
    runner = Runner()
    out = regrade_run(stored, tmp_path / "new", grading, runner=runner, progress=lambda s: None)
    assert [c.key for c in out.ran] == ["sonnet::t"] and runner.jobs[0].lmms_model == "franken_qwen"


def test_cli_help_explains_regrade_of_api_rows_and_the_report_marks(capsys):
    import argparse

    from frankeneval.commands import transfer as command
    from frankeneval.errors import FrankenevalError

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "API rows too: their stored responses, no key, no server, no API call" in text
    assert "marks them † with a footnote naming RUN" in text
    assert "marks every regraded cell ‡ with a footnote naming RUN and the grading" in text
    assert "API rows (--api-model) are regraded alike" in " ".join(command.__doc__.split())
    args = parser.parse_args(["--regrade", "rules", "--from", "old", "--out", "new", "--api-model",
                              "gpt4o=openai:model_version=gpt-4o"])
    with pytest.raises(FrankenevalError, match="drop --api-model"):  # the stored rows are regraded as they are
        command.run(args)
