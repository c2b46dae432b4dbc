"""The LLM judge against a local OpenAI-compatible HTTP server (no real key, no network)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from frankeneval.evaluation.grading import Judge, JudgeConfig, build_judge_prompt, parse_judge_json


class FakeServer:
    """Answers /v1/chat/completions from a script: a list of (status, body-content) consumed in order,
    then ``default`` forever. Counts requests."""

    def __init__(self, default=(200, '{"is_correct": true, "extracted_answer": "18", "reason": "same"}')):
        self.script: list[tuple[int, str]] = []
        self.default = default
        self.calls = 0
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.delay = 0.0  # seconds each answer is held back (a judge that is slow or never answers)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                outer.bodies.append(json.loads(self.rfile.read(length)))
                outer.headers.append(dict(self.headers))
                outer.calls += 1
                if outer.delay:
                    time.sleep(outer.delay)
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
    content = server.bodies[0]["messages"][1]["content"]  # the reference's layout: the image first, then the text
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")


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
    monkeypatch.setattr("frankeneval.evaluation.grading.time.sleep", lambda s: None)
    from frankeneval.tasks import common

    common._JUDGES.clear()
    bad = gsm8k_process_results({"id": "g2", "question": "1+1?", "target": "2"}, ["two-ish"], settings)
    assert bad["judge_error"] == 1 and "score" not in bad["judge_acc"]
    items = [out["judge_acc"], bad["judge_acc"]]
    assert mean_score(items) == 1.0  # the judge error is left out, not counted wrong


# --------------------------------------------------------------------------- issue 17: the judge's guarantees
KEY = "sk-proj-Zq8v3TtL0aB9cD7eF6gH5iJ4kL3mN2oP"  # looks like a real key; must never be written anywhere


def _all_written_text(root) -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("verdict", ["null", '"maybe"', "1", '""', "[]"])
def test_non_boolean_verdict_is_judge_error_and_not_cached(server, tmp_path, verdict):
    """``{"is_correct": null}`` (or any non-boolean) is a judge error, never a wrong answer, and never cached."""
    from frankeneval.tasks.common import TaskSettings, judge_fields, mean_score

    server.default = (200, '{"is_correct": %s, "extracted_answer": "3", "reason": "unsure"}' % verdict)
    with pytest.raises(ValueError):
        parse_judge_json('{"is_correct": %s}' % verdict)
    j = make_judge(server, tmp_path).judge("q", None, "3", "three")
    assert j.judge_error and j.is_correct is None
    assert not any((tmp_path / "cache").rglob("*.json"))  # no verdict cached
    # the same question again asks the judge again (nothing was cached) and takes its clear verdict
    server.default = (200, '{"is_correct": true, "extracted_answer": "3", "reason": "same"}')
    j2 = make_judge(server, tmp_path).judge("q", None, "3", "three")
    assert j2.is_correct is True and not j2.cached and server.calls == 2
    # the task metric: a judge error is counted apart and left out of judge_acc
    server.default = (200, '{"is_correct": %s}' % verdict)
    settings = TaskSettings(judge=True, judge_model="m2", judge_base_url=server.url, judge_cache=str(tmp_path / "c2"),
                            judge_probe=False)
    out = judge_fields(settings, "d1", False, "q", None, "3", "three")
    assert out["judge_error"] == 1 and "score" not in out["judge_acc"]
    assert mean_score([out["judge_acc"], {"id": "d0", "score": 1}]) == 1.0


def test_legacy_cached_null_verdict_is_not_reused(server, tmp_path):
    """A cache entry written by the old code for ``{"is_correct": null}`` is not read back as a wrong answer."""
    judge = make_judge(server, tmp_path)
    from frankeneval.evaluation.grading import JUDGE_SYSTEM

    messages = [{"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": build_judge_prompt("q", None, "1", "one")}]
    request = {"model": "judge-model", "messages": messages, "temperature": 0.0, "max_tokens": 512}
    path = judge.cache_path(request)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"model": "judge-model", "content": '{"is_correct": null}'}))
    j = judge.judge("q", None, "1", "one")
    assert j.is_correct is True and not j.cached and server.calls == 1  # asked again


def test_leaderboard_reports_judge_errors_beside_judge_accuracy(tmp_path):
    """The leaderboard's judge accuracy is over judged items and shows the judge-error count beside it."""
    import csv
    import io

    from frankeneval.reports.leaderboard.build import build_leaderboard
    from frankeneval.reports.leaderboard.report import render
    from frankeneval.transferability.transfer import run_cells

    def runner(job):
        out = job.output_dir / "m"
        out.mkdir(parents=True)
        task = job.cell.task
        rows = [{"rule_acc": {"id": "0", "score": 0}, "judge_acc": {"id": "0", "score": 1}, "judge_error": 0},
                {"rule_acc": {"id": "1", "score": 0}, "judge_acc": {"id": "1", "judge_error": True}, "judge_error": 1},
                {"rule_acc": {"id": "2", "score": 0}, "judge_acc": {"id": "2", "judge_error": True}, "judge_error": 1}]
        (out / f"20260101_000000_samples_{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        res = {"rule_acc,none": 0.0, "judge_acc,none": 1.0, "judge_error,none": 2}
        (out / "20260101_000000_results.json").write_text(json.dumps({"results": {task: res}}))

    models = {m: {"path": f"/m/{m}", "kind": m} for m in ("in", "rl")}
    run = tmp_path / "run"
    run_cells(run, models, ["franken_gsm8k"], runner=runner, sample_size=3, sample_seed=1, progress=lambda s: None)
    board = build_leaderboard(run)
    e = board.get("in", "franken_gsm8k", "judge_acc")
    assert e.value == 1.0 and e.n == 1 and e.errors == 2  # 1 judged item, right; 2 judge errors, not wrong
    assert board.get("in", "franken_gsm8k", "rule_acc").errors is None
    md = render(board, "md")
    assert "2 judge errors" in md
    rows = list(csv.DictReader(io.StringIO(render(board, "csv"))))
    assert {r["judge_errors"] for r in rows if r["metric"] == "judge_acc"} == {"2"}
    assert "2 judge errors" in render(board, "html", chart=False)


def test_timeout_and_retries_are_settings(server, tmp_path, monkeypatch):
    """FRANKENEVAL_JUDGE_TIMEOUT / _RETRIES (and task metadata) bound a judge that does not answer."""
    from frankeneval.tasks.common import TaskSettings, get_judge

    from frankeneval.errors import FrankenevalError
    from frankeneval.evaluation.grading import DEFAULT_JUDGE_RETRIES, DEFAULT_JUDGE_TIMEOUT_S

    assert (DEFAULT_JUDGE_TIMEOUT_S, DEFAULT_JUDGE_RETRIES) == (60.0, 3)
    assert (JudgeConfig().resolved().timeout_s, JudgeConfig().resolved().max_retries) == (60.0, 3)
    monkeypatch.setenv("FRANKENEVAL_JUDGE_TIMEOUT", "0.4")
    monkeypatch.setenv("FRANKENEVAL_JUDGE_RETRIES", "1")
    cfg = JudgeConfig(model="m", base_url=server.url, cache_dir=tmp_path / "c").resolved()
    assert (cfg.timeout_s, cfg.max_retries) == (0.4, 1)
    # the settings reach the openai client itself
    judge = Judge(JudgeConfig(model="m", base_url=server.url, cache_dir=tmp_path / "c"), sleep=lambda s: None)
    assert judge.client.timeout == 0.4
    # a judge that holds its answer longer than the timeout: 2 tries (1 retry), then a judge error -- sooner than
    # one held answer (without the timeout a single try would take the whole delay; a wide margin for loaded CI)
    server.delay = 6.0
    t0 = time.perf_counter()
    j = judge.judge("q", None, "1", "2")
    assert j.judge_error and j.is_correct is None
    assert server.calls == 2 and time.perf_counter() - t0 < server.delay - 1.0
    # task metadata wins over the environment
    s = TaskSettings.resolve({"judge": 1, "judge_timeout": 7, "judge_retries": 0, "judge_base_url": server.url,
                              "judge_cache": str(tmp_path / "c3")})
    assert (s.judge_timeout, s.judge_retries) == (7.0, 0)
    assert (get_judge(s).config.timeout_s, get_judge(s).config.max_retries) == (7.0, 0)
    for bad in ({"judge_timeout": "soon"}, {"judge_timeout": 0}, {"judge_retries": -1}, {"judge_retries": "x"}):
        with pytest.raises(FrankenevalError) as exc:
            TaskSettings.resolve(bad)
        assert "\n" not in str(exc.value)


class _ProbeTask:
    """A task class over LocalDocsTask without a harness behind it (config as the harness gives it)."""

    @staticmethod
    def make(metadata):
        from types import SimpleNamespace

        from frankeneval.tasks.common import LocalDocsTask

        class T(LocalDocsTask):
            build_docs = staticmethod(lambda spec, settings: [{"id": "1"}])

        t = object.__new__(T)
        t.config = SimpleNamespace(metadata=metadata, task="franken_t")
        return t


def test_judge_probe_fails_fast_with_one_line_before_the_run(server, tmp_path, monkeypatch):
    """With the judge on, loading the docs asks the judge once; a judge that does not answer stops the run at
    once with one line naming the server and model (no key, no traceback text)."""
    from frankeneval.tasks import common

    from frankeneval.errors import FrankenevalError

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    common._JUDGES.clear()
    md = {"judge": 1, "judge_model": "probe-model", "judge_base_url": server.url, "judge_cache": str(tmp_path / "c")}
    assert _ProbeTask.make(md).load_docs({}) == [{"id": "1"}]
    assert server.calls == 1  # one probe
    _ProbeTask.make(md).load_docs({})
    assert server.calls == 1  # once per judge per process
    # a server that refuses the key (and echoes it back), and a port where nothing listens
    server.default = (401, f"Incorrect API key provided: {KEY}")
    dead = "http://127.0.0.1:9/v1"
    for url in (server.url, dead):
        common._JUDGES.clear()
        t0 = time.perf_counter()
        with pytest.raises(FrankenevalError) as exc:
            _ProbeTask.make(dict(md, judge_base_url=url, judge_timeout=2)).load_docs({})
        msg = str(exc.value)
        assert url in msg and "probe-model" in msg and "\n" not in msg and "Traceback" not in msg
        assert KEY not in msg and KEY[:12] not in msg
        assert time.perf_counter() - t0 < 10
    # the probe can be turned off (a fully cached rerun with the judge offline)
    common._JUDGES.clear()
    assert _ProbeTask.make(dict(md, judge_base_url=dead, judge_probe=0)).load_docs({}) == [{"id": "1"}]
    # the judge off: no probe at all
    calls = server.calls
    _ProbeTask.make({"judge": 0, "judge_base_url": server.url}).load_docs({})
    assert server.calls == calls
    common._JUDGES.clear()


def test_reply_text_and_keys_are_never_written(server, tmp_path, monkeypatch):
    """The judge's raw reply is not kept; what is written (samples, cache, errors) has anything key-like redacted."""
    from frankeneval.tasks import common
    from frankeneval.tasks.common import TaskSettings, judge_fields
    from PIL import Image

    from frankeneval.evaluation.grading import redact_secrets

    configured = "my-own-gateway-key-123456"
    monkeypatch.setenv("OPENAI_API_KEY", configured)
    common._JUDGES.clear()
    settings = TaskSettings(judge=True, judge_model="m", judge_base_url=server.url, judge_cache=str(tmp_path / "c"),
                            judge_probe=False)
    samples = []
    # a verdict whose reason and extracted answer echo keys
    server.default = (200, json.dumps({"is_correct": False, "extracted_answer": f"4 {KEY}",
                                       "reason": f"header was Bearer {configured} and key {KEY}; " + "x" * 2000}))
    samples.append(judge_fields(settings, "a", False, "q", None, "3", "4"))
    assert samples[-1]["judge_acc"]["score"] == 0 and len(samples[-1]["judge_acc"]["reason"]) <= 300
    # an unparsable reply that echoes the key
    server.default = (200, f"my key is {KEY} and the answer is right")
    samples.append(judge_fields(settings, "b", False, "q", None, "3", "5"))
    assert samples[-1]["judge_error"] == 1
    # a server error whose body echoes the configured key
    server.default = (400, f"invalid request for key {configured}")
    samples.append(judge_fields(settings, "c", False, "q", None, "3", "6"))
    assert samples[-1]["judge_error"] == 1
    # a description that echoes a key
    server.default = (200, f"A chart. Authorization: Bearer {KEY}")
    desc = common.get_judge(settings).describe_image(Image.new("RGB", (8, 8)))
    written = json.dumps(samples) + desc + _all_written_text(tmp_path / "c")
    for secret in (KEY, configured, KEY[8:24]):
        assert secret not in written
    assert "the answer is right" not in written  # the raw unparsable reply is not kept
    j = common.get_judge(settings).judge("q2", None, "3", "4")
    assert not hasattr(j, "raw") or j.raw is None
    # the redactor itself
    assert redact_secrets(f"a {KEY} b", ()) == "a [redacted] b"
    assert "abc.def" not in redact_secrets("Authorization: Bearer abc.def", ())
    assert redact_secrets("hf_abcdefghijklmnopqrstuvwxyz12 ok", ()).endswith(" ok")
    assert "hf_abcdefghijklmnop" not in redact_secrets("hf_abcdefghijklmnopqrstuvwxyz12 ok", ())
    assert redact_secrets("mine: secretvalue99", ("secretvalue99",)) == "mine: [redacted]"
    assert redact_secrets("the answer is 42", ("EMPTY",)) == "the answer is 42"
    common._JUDGES.clear()


def test_transfer_probes_the_judge_before_any_cell(tmp_path, monkeypatch):
    """`transfer` with the judge on and not answering stops with one line before starting any lmms-eval cell."""
    from frankeneval.errors import FrankenevalError
    from frankeneval.transferability import cells, transfer

    started = []
    monkeypatch.setattr(cells, "lmms_eval_runner", lambda job: started.append(job))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    dead = "http://127.0.0.1:9/v1"
    env = {"FRANKENEVAL_JUDGE": "1", "OPENAI_BASE_URL": dead, "FRANKENEVAL_JUDGE_MODEL": "probe-model",
           "FRANKENEVAL_JUDGE_TIMEOUT": "2"}
    models = {m: {"path": f"/m/{m}", "kind": m} for m in ("in", "rl")}
    with pytest.raises(FrankenevalError) as exc:
        transfer.run_cells(tmp_path / "run", models, ["franken_gsm8k"], env=env, progress=lambda s: None)
    msg = str(exc.value)
    assert dead in msg and "probe-model" in msg and "\n" not in msg and KEY not in msg
    assert started == []
