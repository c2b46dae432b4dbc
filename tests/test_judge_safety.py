"""The LLM judge's secrets and hangs (issue 29): credentials in OPENAI_BASE_URL and a server-echoed Basic / Bearer
token are redacted wherever a URL or header is printed, logged or stored; FRANKENEVAL_JUDGE_TIMEOUT bounds a whole
try, a reply whose body trickles in included. Local HTTP servers only (no network, no real key)."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from frankeneval.evaluation.grading import Judge, JudgeConfig, redact_secrets

USER, PASSWORD, QUERY_KEY, API_KEY = "alice", "hunter2-pass-77", "qk-0123456789abcdef", "sk-test-0123456789abcdef"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class _Server:
    """A local OpenAI-compatible server; ``mode`` ``echo``: 401 whose body echoes the request's Authorization header
    and path (as some gateways do); ``trickle``: 200, then the body one byte every ``gap`` seconds (for at most
    ``limit`` seconds, then the connection is dropped)."""

    def __init__(self, mode: str, gap: float = 0.25, limit: float = 12.0):
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.paths.append(self.path)
                if mode == "echo":
                    body = json.dumps({"error": {"message": f"bad credentials: Authorization: "
                                                            f"{self.headers.get('Authorization')} for {self.path}",
                                                 "type": "auth"}}).encode()
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                content = '{"is_correct": true, "extracted_answer": "1", "reason": "same"}'
                body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                t0 = time.monotonic()
                try:
                    for b in body:
                        if time.monotonic() - t0 > limit:
                            break
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                        time.sleep(gap)
                except OSError:
                    pass
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def echo_server():
    s = _Server("echo")
    yield s
    s.close()


def _secrets_in(text: str) -> list[str]:
    return [s for s in (PASSWORD, QUERY_KEY, API_KEY, BASIC, f"{USER}:") if s in text]


def test_credentials_in_the_url_and_echoed_tokens_are_redacted(echo_server, tmp_path, caplog):
    """OPENAI_BASE_URL with user:password@ and ?api_key=: the one-line probe error, a judge error stored in a
    sample's reason and the HTTP client's log lines hold neither the credentials nor the Basic / Bearer token the
    server echoes; the query reaches the server as a query (not glued into the path)."""
    from frankeneval.errors import FrankenevalError

    caplog.set_level(logging.DEBUG)
    urls = [f"http://{USER}:{PASSWORD}@127.0.0.1:{echo_server.port}/v1",
            f"http://127.0.0.1:{echo_server.port}/v1?api_key={QUERY_KEY}"]
    for url in urls:
        cfg = JudgeConfig(model="m", base_url=url, api_key=API_KEY, cache_dir=tmp_path / "c", max_retries=0,
                          timeout_s=5)
        with pytest.raises(FrankenevalError) as exc:
            Judge(cfg, sleep=lambda s: None).probe()
        msg = str(exc.value)
        assert "127.0.0.1" in msg and "\n" not in msg and _secrets_in(msg) == [], msg
        judgment = Judge(cfg, sleep=lambda s: None).judge("q", None, "1", "2")  # what a sample stores
        assert judgment.judge_error and _secrets_in(judgment.reason) == [], judgment.reason
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "127.0.0.1" in logged and _secrets_in(logged) == [], logged
    assert any(p.startswith("/v1/chat/completions?") and QUERY_KEY in p for p in echo_server.paths), echo_server.paths


def test_one_redaction_for_urls_and_headers():
    """The one redaction function: URL credentials, secret-named query values, Basic / Bearer tokens and echoed
    Authorization headers; ordinary text (a judge's "Basic arithmetic") is kept."""
    for text in (f"http://{USER}:{PASSWORD}@host/v1", f"https://{API_KEY}@host/v1",
                 f"http://host/v1?api-version=1&api_key={QUERY_KEY}", f"http://host/v1?token={QUERY_KEY}&x=1",
                 f"Authorization: Basic {BASIC}", f"'authorization': 'Basic {BASIC}'", f"got Basic {BASIC} back",
                 f"Authorization: Bearer {API_KEY}"):
        assert _secrets_in(redact_secrets(text)) == [], text
    assert redact_secrets("http://host/v1?api-version=2024-01-01") == "http://host/v1?api-version=2024-01-01"
    assert redact_secrets("Basic arithmetic shows 2+2=4") == "Basic arithmetic shows 2+2=4"


def test_a_cells_log_tail_is_redacted(tmp_path, monkeypatch):
    """A failed lmms-eval cell's log tail (printed and stored as the cell's failure) passes through the same
    redaction, with the cell environment's key and URL credentials."""
    from frankeneval.transferability import cells

    log = tmp_path / "cell.log"
    log.write_text(f"RuntimeError: judge at http://{USER}:{PASSWORD}@judge:8000/v1 said Basic {BASIC} "
                   f"(key {API_KEY}, ?api_key={QUERY_KEY})\n")
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://{USER}:{PASSWORD}@judge:8000/v1")
    tail = cells._log_tail(log)
    assert "judge:8000" in tail and _secrets_in(tail) == [], tail


def test_timeout_bounds_a_try_whose_body_trickles(tmp_path):
    """A server that sends 200 and then one byte every 0.25 s: with FRANKENEVAL_JUDGE_TIMEOUT=1 and no retry, the
    judge gives up after about a second (a judge error, then a one-line probe failure), not after the whole body."""
    from frankeneval.errors import FrankenevalError

    server = _Server("trickle", gap=0.25, limit=12.0)
    try:
        cfg = JudgeConfig(model="m", base_url=f"http://127.0.0.1:{server.port}/v1", api_key="dummy-key-123456",
                          cache_dir=tmp_path / "c", timeout_s=1.0, max_retries=0)
        judge = Judge(cfg, sleep=lambda s: None)
        t0 = time.perf_counter()
        with pytest.raises(FrankenevalError) as exc:
            judge.probe()
        assert time.perf_counter() - t0 < 4.0, "the probe waited for the trickling body"
        assert "timeout" in str(exc.value) and "\n" not in str(exc.value)
        t0 = time.perf_counter()
        judgment = judge.judge("q", None, "1", "2")
        assert judgment.judge_error and judgment.is_correct is None
        assert time.perf_counter() - t0 < 4.0, "a judge call waited for the trickling body"
    finally:
        server.close()
