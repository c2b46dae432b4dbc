"""The LLM judge against a local OpenAI-compatible HTTP server (no real key, no network)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from frankeneval.core.grading import Judge, JudgeConfig, build_judge_prompt, parse_judge_json


class FakeServer:
    """Answers /v1/chat/completions from a script: a list of (status, body-content) consumed in order,
    then ``default`` forever. Counts requests."""

    def __init__(self, default=(200, '{"is_correct": true, "extracted_answer": "18", "reason": "same"}')):
        self.script: list[tuple[int, str]] = []
        self.default = default
        self.calls = 0
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                outer.bodies.append(json.loads(self.rfile.read(length)))
                outer.calls += 1
                status, content = outer.script.pop(0) if outer.script else outer.default
                if status == 200:
                    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "judge",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": content}}]}
                else:
                    body = {"error": {"message": content, "type": "server_error"}}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "dummy")
    s = FakeServer()
    yield s
    s.close()


def make_judge(server, tmp_path, sleeps=None, **kw):
    cfg = JudgeConfig(model="judge-model", base_url=server.url, cache_dir=tmp_path / "cache", backoff_s=0.5,
                      max_retries=kw.pop("max_retries", 3), **kw)
    return Judge(cfg, sleep=(sleeps.append if sleeps is not None else (lambda s: None)))


def test_judge_verdict_prompt_and_cache_hit(server, tmp_path):
    judge = make_judge(server, tmp_path)
    j = judge.judge("How much?", ["17", "18"], "18", "It is \\boxed{18}")
    assert (j.is_correct, j.extracted_answer, j.judge_error, j.cached) == (True, "18", False, False)
    assert server.calls == 1
    sent = server.bodies[0]
    assert sent["model"] == "judge-model"
    user = sent["messages"][-1]["content"]
    assert "How much?" in user and "A. 17" in user and "B. 18" in user and "Ground truth answer: 18" in user
    assert "is_correct" in user and "\\boxed{18}" in user
    # rerun with a fresh Judge (new process): served from the disk cache, no request
    again = make_judge(server, tmp_path).judge("How much?", ["17", "18"], "18", "It is \\boxed{18}")
    assert again.cached and again.is_correct is True and server.calls == 1
    # a different answer is a different prompt: one more request
    make_judge(server, tmp_path).judge("How much?", ["17", "18"], "18", "\\boxed{17}")
    assert server.calls == 2
    # the cache is keyed by judge model too
    other = Judge(JudgeConfig(model="other", base_url=server.url, cache_dir=tmp_path / "cache"), sleep=lambda s: None)
    other.judge("How much?", ["17", "18"], "18", "It is \\boxed{18}")
    assert server.calls == 3


def test_rate_limit_then_success_backs_off(server, tmp_path):
    server.script = [(429, "slow down"), (503, "busy")]
    sleeps: list[float] = []
    j = make_judge(server, tmp_path, sleeps).judge("q", None, "1", "1")
    assert j.is_correct is True and not j.judge_error
    assert server.calls == 3
    assert sleeps == [0.5, 1.0]  # exponential backoff


def test_permanent_failure_gives_judge_error_and_is_not_cached(server, tmp_path):
    server.default = (500, "down")
    j = make_judge(server, tmp_path, max_retries=2).judge("q", None, "1", "2")
    assert j.judge_error and j.is_correct is None
    assert server.calls == 3  # first try + 2 retries
    server.default = (200, '{"is_correct": false, "extracted_answer": "2", "reason": "differs"}')
    j2 = make_judge(server, tmp_path).judge("q", None, "1", "2")
    assert j2.is_correct is False and not j2.cached and server.calls == 4


def test_client_error_is_not_retried(server, tmp_path):
    server.default = (400, "bad request")
    j = make_judge(server, tmp_path).judge("q", None, "1", "2")
    assert j.judge_error and server.calls == 1


def test_unparsable_reply_is_judge_error(server, tmp_path):
    server.default = (200, "I think it is right")
    j = make_judge(server, tmp_path).judge("q", None, "1", "1")
    assert j.judge_error and j.is_correct is None


def test_parse_judge_json_variants():
    assert parse_judge_json('```json\n{"is_correct": "false", "extracted_answer": "3", "reason": "r"}\n```')[
        "is_correct"] is False
    assert parse_judge_json('Sure: {"is_correct": true, "reason": "ok"} done')["is_correct"] is True
    with pytest.raises(ValueError):
        parse_judge_json('{"correct": true}')
    assert "Choices:" not in build_judge_prompt("q", None, "1", "2")


def test_describe_image_is_cached(server, tmp_path):
    from PIL import Image

    server.default = (200, "A red square on a white background.")
    img = Image.new("RGB", (32, 16), (255, 0, 0))
    judge = make_judge(server, tmp_path)
    assert judge.describe_image(img) == "A red square on a white background."
    assert make_judge(server, tmp_path).describe_image(img) == "A red square on a white background."
    assert server.calls == 1
    content = server.bodies[0]["messages"][0]["content"]
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_task_judge_metrics_rules_first_and_judge_error(server, tmp_path, monkeypatch):
    """process_results: rule-correct samples skip the judge; judge errors are counted, not scored wrong."""
    from frankeneval.tasks.common import TaskSettings, mean_score
    from frankeneval.tasks.gsm8k.utils import gsm8k_process_results

    settings = TaskSettings(judge=True, judge_model="m", judge_base_url=server.url, judge_cache=str(tmp_path / "c"))
    doc = {"id": "g1", "question": "2+2?", "target": "4"}
    out = gsm8k_process_results(doc, ["\\boxed{4}"], settings)
    assert out["rule_acc"]["score"] == 1 and out["judge_acc"]["score"] == 1 and server.calls == 0
    server.default = (200, '{"is_correct": true, "extracted_answer": "four", "reason": "same"}')
    out = gsm8k_process_results(doc, ["the result is four"], settings)
    assert out["rule_acc"]["score"] == 0 and out["judge_acc"]["score"] == 1 and out["judge_error"] == 0
    server.default = (500, "down")
    monkeypatch.setattr("frankeneval.core.grading.time.sleep", lambda s: None)
    from frankeneval.tasks import common

    common._JUDGES.clear()
    bad = gsm8k_process_results({"id": "g2", "question": "1+1?", "target": "2"}, ["two-ish"], settings)
    assert bad["judge_error"] == 1 and "score" not in bad["judge_acc"]
    items = [out["judge_acc"], bad["judge_acc"]]
    assert mean_score(items) == 1.0  # the judge error is left out, not counted wrong
