"""API models as rows of the transfer table (issue 33): --api-model, the refusal, and one real lmms-eval cell
against a fake OpenAI-compatible server on localhost."""

from __future__ import annotations

import json
import socket

import pytest

from frankeneval.errors import FrankenevalError
from frankeneval.transferability import cells
from frankeneval.transferability.cells import API_SYSTEM_PROMPT, find_results, lmms_eval_command, parse_api_model
from frankeneval.transferability.transfer import run_cells, run_transfer

GPT = "gpt4o=openai:model_version=gpt-4o"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parse_api_model_and_its_fingerprint_never_hold_the_key():
    label, info = parse_api_model("gpt4o=openai_compatible:model=gpt-4o,base_url=https://proxy.example:8443/v1")
    assert label == "gpt4o" and info["kind"] == "api" and info["lmms_model"] == "openai"
    assert info["model_args"] == "base_url=https://proxy.example:8443/v1,model_version=gpt-4o"
    env = {"OPENAI_API_KEY": "sk-secret"}
    assert cells.api_fingerprint(info, env) == {"api_class": "openai", "model_version": "gpt-4o",
                                                "base_url_host": "proxy.example:8443"}
    _, claude = parse_api_model("sonnet=claude:model_version=claude-sonnet-4-20250514")
    assert cells.api_fingerprint(claude, {})["base_url_host"] == "api.anthropic.com:443"
    for bad, why in (("gpt4o", "LABEL=LMMS_MODEL"), ("x=franken_qwen:model_version=a", "API classes"),
                     ("x=openai:model_version=a,api_key=sk-1", "api_key= is not taken"),
                     ("x=openai:base_url=http://h", "name the API model")):
        with pytest.raises(FrankenevalError, match=why):
            parse_api_model(bad)


def test_api_row_is_refused_in_one_line_without_key_or_server(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(FrankenevalError) as err:  # before the recipe is even read: nothing spliced, no cell
        run_transfer(tmp_path / "run", "no-such-recipe", api_models=[GPT], progress=lambda s: None)
    assert "OPENAI_API_KEY is not set" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_API_BASE", f"http://127.0.0.1:{_closed_port()}/v1")
    with pytest.raises(FrankenevalError, match="cannot reach 127.0.0.1") as err:
        run_transfer(tmp_path / "run", "no-such-recipe", api_models=[GPT], progress=lambda s: None)
    assert "\n" not in str(err.value) and "sk-test" not in str(err.value)
    # the command line: the same refusal, one line
    import argparse

    from frankeneval.commands import transfer as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--recipe", "tiny", "--out", str(tmp_path / "cli"), "--api-model", GPT])
    assert args.api_models == [GPT]
    with pytest.raises(FrankenevalError, match="cannot reach"):
        command.run(args)


def test_api_row_cells_run_lmms_eval_api_class_and_record_its_identity(tmp_path, monkeypatch):
    from test_transfer_runs import Runner

    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-recorded")
    for var in ("OPENAI_API_BASE", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    _, info = parse_api_model(GPT)
    models = {"in": {"path": "/models/in", "kind": "in"}, "gpt4o": info}
    runner = Runner()
    run = tmp_path / "run"
    kw = dict(runner=runner, max_new_tokens=64, model_args="attn_implementation=sdpa", progress=lambda s: None)
    result = run_cells(run, models, ["t"], **kw)
    assert not result.failed and sorted(c.key for c in result.ran) == ["gpt4o::t", "in::t"]
    job = next(j for j in runner.jobs if j.cell.model == "gpt4o")
    cmd = lmms_eval_command(job)
    assert cmd[cmd.index("--model") + 1] == "openai" and "--force_simple" in cmd
    assert cmd[cmd.index("--model_args") + 1] == "model_version=gpt-4o"  # not franken_qwen's args
    assert cmd[cmd.index("--system_instruction") + 1] == API_SYSTEM_PROMPT
    assert cmd[cmd.index("--gen_kwargs") + 1] == "max_new_tokens=64"
    other = lmms_eval_command(next(j for j in runner.jobs if j.cell.model == "in"))
    assert other[other.index("--model") + 1] == "franken_qwen" and "--force_simple" not in other
    manifest = json.loads((run / "transfer.json").read_text())
    entry = manifest["models"]["gpt4o"]
    fingerprint = {"api_class": "openai", "model_version": "gpt-4o", "base_url_host": "api.openai.com:443"}
    assert entry["kind"] == "api" and entry["fingerprint"] == fingerprint and entry["system_prompt"] == "api"
    lines = [json.loads(x) for x in (run / "cells.jsonl").read_text().splitlines()]
    record = next(x["record"] for x in lines if x.get("key") == "gpt4o::t")
    stamp = json.loads((run / "cells" / "gpt4o" / "t" / cells.CELL_STAMP).read_text())
    assert stamp["fingerprint"] == fingerprint
    assert "sk-never-recorded" not in "".join(p.read_text() for p in run.rglob("*.json*"))
    assert record["model_fingerprint"] == fingerprint and record["system_prompt"]["text"] == API_SYSTEM_PROMPT
    # another model version is another row's content: its cell runs again
    _, other_info = parse_api_model("gpt4o=openai:model_version=gpt-4.1")
    again = run_cells(run, {"gpt4o": other_info}, ["t"], **kw)
    assert [c.key for c in again.ran] == ["gpt4o::t"]


def test_api_row_real_lmms_eval_cell_against_a_fake_server(tmp_path, shared_data):
    """One real lmms-eval cell of lmms-eval's OpenAI-compatible class against a local fake server: the reference's
    API system prompt reaches the request, the answers are scored, and the report shows the row."""
    from test_grading import FakeServer

    server = FakeServer(default=(200, "Step by step. The answer is \\boxed{18}."))
    try:
        _, info = parse_api_model("gpt4o=openai:model_version=gpt-4o,max_retries=1,num_concurrent=1")
        env = {"OPENAI_API_KEY": "sk-dummy", "OPENAI_API_BASE": server.url}
        run = tmp_path / "run"
        result = run_cells(run, {"gpt4o": info}, ["franken_gsm8k"], sample_size=2, sample_seed=123,
                           data_dir=shared_data, max_new_tokens=32, judge=False, env=env, progress=lambda s: None)
    finally:
        server.close()
    assert not result.failed, result.failed
    assert server.calls == 2
    body = server.bodies[0]
    assert body["model"] == "gpt-4o" and body["max_tokens"] == 32
    text = body["messages"][0]["content"][0]["text"]
    assert text.startswith(API_SYSTEM_PROMPT)
    res, samples = find_results(run / "cells" / "gpt4o" / "franken_gsm8k")
    rows = [json.loads(x) for x in samples["franken_gsm8k"].read_text().splitlines()]
    assert len(rows) == 2 and all("boxed{18}" in json.dumps(r.get("resps") or r["filtered_resps"]) for r in rows)
    manifest = json.loads((run / "transfer.json").read_text())
    host = server.url.split("//")[1].split("/")[0]
    assert manifest["models"]["gpt4o"]["fingerprint"]["base_url_host"] == host
    from frankeneval.reports.leaderboard.build import build_leaderboard

    board = build_leaderboard(run)
    assert board.kinds["gpt4o"] == "api"
    assert board.get("gpt4o", "franken_gsm8k", "rule_acc").n == 2
