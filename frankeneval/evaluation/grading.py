"""LLM judge (GPT grading) and image descriptions through any OpenAI-compatible server.

* ``Judge.judge(question, choices, ground_truth, model_answer)`` asks the judge model for JSON
  ``{"is_correct": bool, "extracted_answer": str, "reason": str}``.
* ``Judge.describe_image(image)`` writes the description used by the black-image + description control.
* ``Judge.judge_seed(...)`` is the reference's judge (``grading: seed``): its texts byte for byte
  (:data:`SEED_JUDGE_SYSTEM`, :data:`SEED_JUDGE_USER`), the verdict ``bool(is_correct)``, an unparsable reply true
  when "true" is in its first 100 characters, a failed call wrong.
* ``Judge.extract_mathvista(prompt)`` is the LLM step of MathVista's own extraction (``extraction: mathvista``).

A verdict is a boolean or it is a judge error: a reply whose ``is_correct`` is not a clear boolean (``null``, a
number, ``"maybe"``, no JSON) gives ``judge_error=True`` and ``is_correct=None`` -- never a wrong answer -- and is not
cached. Every clear verdict is cached on disk as the parsed verdict (``is_correct``, ``extracted_answer`` and a short
``reason``; never the raw reply), keyed by (judge model, hash of the request), with atomic writes, so a rerun costs
nothing. Rate limits (429), server errors (5xx), timeouts and connection errors are retried with exponential backoff;
when every try fails the result carries ``judge_error=True``. Each try waits at most the timeout -- the whole try,
a reply whose body trickles in included (:meth:`Judge._create`) -- so a judge that never answers costs at most
``(retries + 1) x timeout`` plus the backoff per item; :meth:`Judge.probe` checks that the judge answers at all
before a run starts. Nothing that looks like a key (``sk-...``, ``Bearer ...``, ``Basic ...``, the configured key,
the user, password and secret query values of ``OPENAI_BASE_URL``, ...) is written: reasons, descriptions, error
messages and the HTTP client's log lines pass through :func:`redact_secrets`. A query in ``OPENAI_BASE_URL``
(``?api-version=...``) is sent with every request.

Configuration: ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` (or ``base_url=``), ``FRANKENEVAL_JUDGE_MODEL``
(default ``gpt-4o-mini``), ``FRANKENEVAL_JUDGE_CACHE`` (default ``~/.cache/frankeneval/judge``),
``FRANKENEVAL_JUDGE_TIMEOUT`` (seconds per try, default 60), ``FRANKENEVAL_JUDGE_RETRIES`` (retries after the
first try, default 3).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from frankeneval.core.results import write_json_atomic
from frankeneval.errors import FrankenevalError

__all__ = [
    "DEFAULT_JUDGE_MODEL",
    "DEFAULT_JUDGE_RETRIES",
    "DEFAULT_JUDGE_TIMEOUT_S",
    "JudgeNotAnswering",
    "judge_number_setting",
    "redact_secrets",
    "redact_http_logs",
    "url_secrets",
    "JudgeConfig",
    "Judgment",
    "Judge",
    "JudgeUnavailable",
    "build_judge_prompt",
    "parse_judge_json",
    "DESCRIBE_PROMPT",
    "DESCRIBE_SYSTEM",
    "DESCRIBE_USER",
    "SEED_JUDGE_SYSTEM",
    "SEED_JUDGE_USER",
    "build_seed_judge_prompt",
    "parse_seed_reply",
]

DEFAULT_JUDGE_MODEL = "gpt-4o-mini"
DEFAULT_JUDGE_TIMEOUT_S = 60.0
DEFAULT_JUDGE_RETRIES = 3
SEED_TRUE_WINDOW = 100  # grading: seed reads an unparsable reply as correct when "true" is in its first 100 chars
SEED_JUDGE_MAX_TOKENS = 1000  # grading: seed sends max_completion_tokens 1000 and no temperature (the API default)
DESCRIBE_MAX_TOKENS = 2000  # the reference's descriptions: max_completion_tokens 2000
MAX_REASON_CHARS = 240  # what of the judge's reason is kept (redacted) in samples and the cache

JUDGE_SYSTEM = "You are a strict grader of answers to benchmark questions. Reply with one JSON object only."

# The reference's judge texts (METHOD.md, "Judge texts"): data, kept byte for byte; grading: seed sends exactly these.
SEED_JUDGE_SYSTEM = """You are a strict but fair math grader. Compare the model's answer to the ground truth.

Consider correct if:
- Numerically equivalent (e.g., 0.5 = 1/2 = 50%)
- Same meaning with different formatting (e.g., "2x+3" vs "3+2x")
- For multiple choice: letter matches or full option text matches
- Minor differences in units or notation that don't change the answer

Consider incorrect if:
- Different numerical values
- Wrong multiple choice option
- Missing or extra significant information"""

SEED_JUDGE_USER = """Question: {question}

Choices: {choices}

Ground Truth Answer: {ground_truth}

Model's Answer: {model_answer}

Is the model's answer correct? Respond with JSON:
{"is_correct": true/false, "extracted_answer": "...", "reason": "brief explanation"}"""

SEED_NO_CHOICES = "N/A (free-form)"

# The reference's description texts (METHOD.md, "Image descriptions"): data, kept byte for byte.
DESCRIBE_SYSTEM = """You are a precise visual analyzer for mathematical and scientific images.
Your task is to describe EXACTLY what you see - do NOT solve any problems or make inferences.

Focus on:
1. All text, numbers, labels, and symbols visible in the image
2. Geometric shapes, graphs, diagrams, or charts with their properties
3. Spatial relationships between elements
4. Colors and visual distinctions that may be meaningful
5. Any tables, axes labels, or data points

Be thorough but factual. Include ALL numbers and text you can read."""

DESCRIBE_USER = """Describe this image in detail for someone who cannot see it.
Output a structured description covering:
- Overview: What type of image is this (graph, diagram, geometry problem, etc.)
- Text Content: All readable text, numbers, labels, equations
- Visual Elements: Shapes, lines, colors, symbols
- Spatial Layout: How elements are arranged
- Key Details: Any numbers, measurements, or specific values shown

Be precise and complete. Do not solve or interpret - just describe what you see."""

DESCRIBE_PROMPT = DESCRIBE_USER  # the user text of a description request (kept under its former name)


class JudgeUnavailable(RuntimeError):
    """Every attempt to reach the judge failed (kept internal: callers get ``judge_error``)."""


class JudgeTimeout(RuntimeError):
    """One try got no complete reply within the judge's timeout (a slow body included); retried like a timeout."""


class JudgeNotAnswering(FrankenevalError):
    """The fail-fast probe before a run got no answer from the judge (one line: server and model)."""


# --------------------------------------------------------------------------- redaction
_SECRET_NAME = r"[^=&#\s\"'<>]*(?:key|token|secret|passw|pwd|auth|sig|credential|session)[^=&#\s\"'<>]*"
_SECRET_PATTERNS: list[tuple[re.Pattern, Any]] = [
    # an echoed Authorization header, whatever its scheme: "Authorization: Basic dXNlcjpwdw=="
    (re.compile(r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?:[A-Za-z]+\s+)?[^\s\"',;}]+"),
     r"\g<1>[redacted]"),
    (re.compile(r"(?i)\bBearer\s+[^\s\"',;]+"), "[redacted]"),  # Authorization: Bearer <token>
    (re.compile(r"(?i)\b(Basic\s+)([A-Za-z0-9+/]{4,}={0,2})"), None),  # Basic <base64 of user:password>, see _basic
    # credentials in a URL: scheme://user:password@host and ?api_key=... (any query name that reads like a secret)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#\"'<>]+@"), r"\g<1>[redacted]@"),
    (re.compile(r"(?i)([?&;]" + _SECRET_NAME + r"=)[^&#\s\"'<>]+"), r"\g<1>[redacted]"),
    # OpenAI / Anthropic style (sk-..., sk-proj-..., sk-ant-...); HF, GitHub, Slack, GitLab
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "[redacted]"),
    (re.compile(r"\b(?:hf|ghp|gho|ghs|ghu|github_pat|xox[abprs]|glpat)_[A-Za-z0-9_\-]{10,}"), "[redacted]"),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"), "[redacted]"),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"), "[redacted]"),  # Google
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "[redacted]"),  # AWS access key id
    (re.compile(r"(?i)\b(api[_-]?key|access[_-]?token|secret|password)(\"?\s*[:=]\s*\"?)[^\s\"',;]{6,}"),
     r"\g<1>\g<2>[redacted]"),
]
REDACTED = "[redacted]"


def _basic(match: re.Match) -> str:
    """``Basic <token>`` redacted when the token is base64 of ``user:password`` (plain words such as "Basic
    arithmetic" in a judge's reason are kept)."""
    try:
        decoded = base64.b64decode(match.group(2), validate=True)
    except ValueError:
        return match.group(0)
    return match.group(1) + REDACTED if b":" in decoded else match.group(0)


def url_secrets(url: str | None) -> list[str]:
    """The credentials a URL carries: the user and password of ``user:password@host``, their Basic-auth token
    (base64 of ``user:password``, what an HTTP client sends and a server may echo) and the values of query
    parameters whose names read like a secret (``?api_key=...``, ``&token=...``)."""
    if not url:
        return []
    from urllib.parse import parse_qsl, unquote, urlsplit

    try:
        parts = urlsplit(str(url))
    except ValueError:
        return []
    out = []
    if parts.username is not None or parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        out += [user, password, base64.b64encode(f"{user}:{password}".encode()).decode("ascii")]
    out += [v for k, v in parse_qsl(parts.query) if re.fullmatch(_SECRET_NAME, k, flags=re.IGNORECASE)]
    return [s for s in out if s]


def redact_secrets(text: Any, secrets: Sequence[str | None] = ()) -> str:
    """``text`` with anything that looks like a key replaced by ``[redacted]``: the given ``secrets`` (e.g. the
    configured key, :func:`url_secrets` of the judge's URL; values shorter than 6 characters and the ``EMPTY``
    placeholder are ignored), ``sk-...``, ``Bearer ...``, ``Basic <base64 user:password>``, an echoed
    ``Authorization:`` header, ``hf_...``, ``ghp_...``, ``AIza...``, ``AKIA...``, ``api_key=...``-style
    assignments, and in URLs ``user:password@`` and secret-named query values (``?api_key=...``).

    The one redaction of frankeneval: every URL, header or server message that may be printed, logged or stored
    passes through it (the judge's errors and reasons, its client's log records, a failed cell's log tail)."""
    out = "" if text is None else str(text)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        if len(secret) >= 6 and secret != "EMPTY":
            out = out.replace(secret, REDACTED)
    for pat, repl in _SECRET_PATTERNS:
        out = pat.sub(_basic if repl is None else repl, out)
    return out


class _RedactingFilter(logging.Filter):
    """Rewrites a log record's message through :func:`redact_secrets` (the HTTP client logs every request's URL)."""

    def __init__(self, secrets: Sequence[str | None] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format is left to logging's own handling
            return True
        record.msg, record.args = redact_secrets(message, self.secrets), ()
        return True


# a logger's filter does not see its children's records: every logger these libraries log to, by name
_HTTP_LOGGERS = ("openai", "openai._base_client", "httpx", "httpx2", "httpcore", "httpcore2",
                 *(f"{lib}.{part}" for lib in ("httpcore", "httpcore2")
                   for part in ("connection", "http11", "http2", "proxy", "socks")))


def redact_http_logs(secrets: Sequence[str | None] = ()) -> None:
    """Make every log record of the OpenAI client and its HTTP library pass through :func:`redact_secrets` (with
    ``secrets`` besides the patterns): their INFO / DEBUG lines name the request URL, credentials included."""
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        old = [f for f in logger.filters if isinstance(f, _RedactingFilter)]
        known = {s for f in old for s in f.secrets}
        for f in old:
            logger.removeFilter(f)
        logger.addFilter(_RedactingFilter(tuple(known | {s for s in secrets if s})))


def judge_number_setting(value: Any, *, integer: bool, source: str) -> float | int:
    """A judge timeout (float > 0 seconds) or retry count (``integer``: int >= 0) from ``value``; a one-line
    FrankenevalError naming ``source`` otherwise."""
    try:
        number = int(str(value).strip()) if integer else float(value)
    except (TypeError, ValueError):
        number = None
    if integer and (number is None or number < 0):
        raise FrankenevalError(f"{source} must be a whole number >= 0, not {value!r}")
    if not integer and (number is None or not (0 < number < float("inf"))):
        raise FrankenevalError(f"{source} must be a number of seconds > 0, not {value!r}")
    return number


@dataclass
class JudgeConfig:
    """Judge settings; ``None`` fields come from the environment."""

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    cache_dir: str | os.PathLike | None = None
    max_retries: int | None = None  # FRANKENEVAL_JUDGE_RETRIES, else DEFAULT_JUDGE_RETRIES
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    timeout_s: float | None = None  # FRANKENEVAL_JUDGE_TIMEOUT, else DEFAULT_JUDGE_TIMEOUT_S
    temperature: float = 0.0

    def resolved(self) -> "JudgeConfig":
        timeout = self.timeout_s
        if timeout is None:
            env = os.environ.get("FRANKENEVAL_JUDGE_TIMEOUT", "").strip()
            timeout = env if env else DEFAULT_JUDGE_TIMEOUT_S
        retries = self.max_retries
        if retries is None:
            env = os.environ.get("FRANKENEVAL_JUDGE_RETRIES", "").strip()
            retries = env if env else DEFAULT_JUDGE_RETRIES
        return JudgeConfig(
            model=self.model or os.environ.get("FRANKENEVAL_JUDGE_MODEL") or DEFAULT_JUDGE_MODEL,
            base_url=self.base_url or os.environ.get("OPENAI_BASE_URL") or None,
            api_key=self.api_key or os.environ.get("OPENAI_API_KEY") or None,
            cache_dir=Path(
                self.cache_dir
                or os.environ.get("FRANKENEVAL_JUDGE_CACHE")
                or Path.home() / ".cache" / "frankeneval" / "judge"
            ).expanduser(),
            max_retries=judge_number_setting(retries, integer=True,
                                             source="the judge's retries (FRANKENEVAL_JUDGE_RETRIES)"),
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
            timeout_s=judge_number_setting(timeout, integer=False,
                                           source="the judge's timeout (FRANKENEVAL_JUDGE_TIMEOUT)"),
            temperature=self.temperature,
        )


@dataclass
class Judgment:
    """One judge verdict. ``is_correct`` is None exactly when ``judge_error`` is True. The judge's raw reply is
    never kept: ``extracted_answer`` and ``reason`` are redacted (and ``reason`` shortened)."""

    is_correct: bool | None
    extracted_answer: str | None = None
    reason: str = ""
    judge_error: bool = False
    cached: bool = False

    def as_dict(self) -> dict:
        return {
            "is_correct": self.is_correct,
            "extracted_answer": self.extracted_answer,
            "reason": self.reason,
            "judge_error": self.judge_error,
        }


def build_judge_prompt(question: str, choices: Sequence[str] | None, ground_truth: str, model_answer: str) -> str:
    """The judge's user message: question, lettered choices, ground truth, model answer, and the JSON to return."""
    parts = ["Question:", str(question).strip()]
    if choices:
        parts += ["", "Choices:"] + [f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices)]
    parts += [
        "",
        f"Ground truth answer: {ground_truth}",
        "",
        "Model response:",
        str(model_answer).strip() or "(empty)",
        "",
        "Extract the model's final answer from its response and decide whether it is equivalent to the ground "
        "truth (same value, same option, or mathematically equivalent form; units and formatting may differ). "
        'Reply with JSON only: {"is_correct": true or false, "extracted_answer": "<the model\'s final answer>", '
        '"reason": "<one short sentence>"}',
    ]
    return "\n".join(parts)


_TRUE, _FALSE = ("true", "yes"), ("false", "no")


def _clear_boolean(v: Any) -> bool | None:
    """``v`` as a verdict: JSON true/false, or the strings true/false/yes/no; None for anything else."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        t = v.strip().lower()
        return True if t in _TRUE else False if t in _FALSE else None
    return None


def parse_judge_json(text: str) -> dict:
    """The judge's JSON object (code fences and surrounding text tolerated) whose ``is_correct`` is a clear boolean
    (JSON true/false or the strings true/false/yes/no); ValueError when there is none (``null``, numbers, other
    strings are not verdicts). The error message never quotes the reply."""
    t = (text or "").strip()
    t = re.sub(r"^```(?:json)?\s*|\s*```$", "", t)
    candidates = [t] + re.findall(r"\{.*\}", t, flags=re.DOTALL)
    for c in candidates:
        try:
            obj = json.loads(c)
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(obj, dict) and "is_correct" in obj:
            v = _clear_boolean(obj["is_correct"])
            if v is None:
                continue
            obj["is_correct"] = v
            return obj
    raise ValueError(f"judge reply ({len(t)} chars) has no JSON object with a boolean is_correct")


_SEED_FIELDS = re.compile(r"\{(question|choices|ground_truth|model_answer)\}")


def build_seed_judge_prompt(question: str, choices: Sequence[str] | None, ground_truth: Any,
                            model_answer: Any) -> str:
    """The reference's user text (:data:`SEED_JUDGE_USER`) filled in one pass: ``question`` is the full question
    with its Choices block, ``choices`` the JSON list of the choices (``json.dumps``) or ``N/A (free-form)``."""
    values = {"question": str(question), "choices": json.dumps(list(choices)) if choices else SEED_NO_CHOICES,
              "ground_truth": str(ground_truth), "model_answer": str(model_answer)}
    return _SEED_FIELDS.sub(lambda m: values[m.group(1)], SEED_JUDGE_USER)


def _unfence(text: str) -> str:
    """A ```-fenced reply's content (a leading ``json`` tag dropped), else the stripped text."""
    t = (text or "").strip()
    if t.startswith("```"):
        parts = t.split("```")
        t = parts[1] if len(parts) > 1 else t[3:]
        if t.startswith("json"):
            t = t[4:]
        t = t.strip()
    return t


def parse_seed_reply(text: str) -> tuple[bool, dict | None]:
    """The reference's reading of a judge reply (``grading: seed``): the ```-fence unwrapped, then the JSON
    object's ``bool(is_correct)`` (so the string ``"false"`` is true, a missing value false); a reply that is not a
    JSON object is true when ``"true"`` occurs in its first :data:`SEED_TRUE_WINDOW` characters (lower-cased).
    Returns ``(verdict, the parsed object or None)``."""
    t = _unfence(text)
    try:
        obj = json.loads(t)
    except (json.JSONDecodeError, TypeError):
        obj = None
    if isinstance(obj, dict):
        return bool(obj.get("is_correct")), obj
    return "true" in t.lower()[:SEED_TRUE_WINDOW], None


def _split_query(url: str | None) -> tuple[str | None, dict[str, str]]:
    """``(url without its query, {name: value} of the query)``: the OpenAI client appends its paths to the base URL,
    so a query there (``?api_key=...``, ``?api-version=...``) is sent as the client's ``default_query`` instead."""
    if not url or "?" not in url:
        return url, {}
    from urllib.parse import parse_qsl, urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="", fragment="")), dict(parse_qsl(parts.query, keep_blank_values=True))


def _image_data_url(image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Judge:
    """A cached, retrying OpenAI-compatible chat client for grading and descriptions."""

    def __init__(self, config: JudgeConfig | None = None, *, client=None,
                 sleep: Callable[[float], None] | None = None):
        self.config = (config or JudgeConfig()).resolved()
        self._client = client
        self._own_client = client is None  # a client we made is closed and replaced after a try ran out of time
        self._client_lock = threading.Lock()
        self._sleep = sleep or (lambda seconds: time.sleep(seconds))
        self._probed = False
        self.calls = 0  # requests actually sent (cache misses, retries included)

    # ------------------------------------------------------------------ plumbing
    @property
    def client(self):
        with self._client_lock:
            if self._client is None:
                from openai import OpenAI

                base_url, query = _split_query(self.config.base_url)
                redact_http_logs(self._secrets)  # the HTTP client logs each request's URL
                self._client = OpenAI(
                    api_key=self.config.api_key or "EMPTY",
                    base_url=base_url,
                    default_query=query or None,  # ?api-version=...&api_key=... of OPENAI_BASE_URL, on every request
                    max_retries=0,  # our own backoff (config.max_retries): every failure mode counted and bounded
                    timeout=self.config.timeout_s,  # per read / connect; _create bounds the whole try
                )
            return self._client

    @property
    def _secrets(self) -> tuple[str | None, ...]:
        return (self.config.api_key, *url_secrets(self.config.base_url))

    @property
    def where(self) -> str:
        """The judge's server for messages: its URL with credentials redacted."""
        if not self.config.base_url:
            return "https://api.openai.com/v1 (OPENAI_BASE_URL unset)"
        return self.redact(self.config.base_url)

    def redact(self, text: Any) -> str:
        """``text`` with the configured key, the credentials of the judge's URL and anything key-like removed
        (see :func:`redact_secrets`)."""
        return redact_secrets(text, self._secrets)

    def _create(self, request: dict):
        """One try: ``chat.completions.create(**request)`` bounded as a whole by the timeout. The client's own
        timeouts bound each connect and each read, not a reply whose body trickles in; so the call runs in a
        worker thread and is given up at the deadline (:class:`JudgeTimeout`), its client closed (which ends the
        worker's connection) and replaced for the next try."""
        client = self.client
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["reply"] = client.chat.completions.create(**request)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=work, name="frankeneval-judge", daemon=True)
        worker.start()
        worker.join(self.config.timeout_s)
        if worker.is_alive():
            if self._own_client:
                with self._client_lock:
                    if self._client is client:
                        self._client = None
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - best effort: the worker ends at its next read either way
                    pass
            raise JudgeTimeout(f"no complete reply within the judge's timeout of {self.config.timeout_s:g} s "
                               "(FRANKENEVAL_JUDGE_TIMEOUT)")
        if "error" in box:
            raise box["error"]
        return box["reply"]

    def _request(self, messages: list[dict], max_tokens: int) -> dict:
        return {"model": self.config.model, "messages": messages, "temperature": self.config.temperature,
                "max_tokens": max_tokens}

    def cache_path(self, request: dict) -> Path:
        """The cache file of a request: ``<cache>/<model>/<sha256 of the request>.json``."""
        digest = hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        safe_model = re.sub(r"[^A-Za-z0-9._-]+", "_", self.config.model)
        return Path(self.config.cache_dir) / safe_model / digest[:2] / f"{digest}.json"

    def _read_cache(self, request: dict) -> dict | None:
        path = self.cache_path(request)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None  # a damaged entry is refetched
        return entry if isinstance(entry, dict) else None

    def _write_cache(self, request: dict, entry: dict) -> None:
        write_json_atomic(self.cache_path(request), {"model": self.config.model, **entry}, ensure_ascii=False,
                          newline=False)

    @staticmethod
    def _retryable(exc: Exception) -> bool:
        import openai

        if isinstance(exc, (JudgeTimeout, openai.RateLimitError, openai.APIConnectionError, openai.APITimeoutError)):
            return True
        if isinstance(exc, openai.APIStatusError):
            return exc.status_code == 429 or exc.status_code >= 500
        return False

    def _call(self, request: dict, *, retries: int) -> str:
        """The assistant text of one request (no cache), after up to ``retries`` retries; JudgeUnavailable with a
        redacted one-line reason when every try failed."""
        last: Exception | None = None
        for attempt in range(retries + 1):
            try:
                self.calls += 1
                resp = self._create(request)
                return resp.choices[0].message.content or ""
            except Exception as exc:  # noqa: BLE001 - classified below
                last = exc
                if not self._retryable(exc) or attempt == retries:
                    break
                self._sleep(min(self.config.max_backoff_s, self.config.backoff_s * (2**attempt)))
        reason = " ".join(self.redact(f"{type(last).__name__}: {last}").split())
        raise JudgeUnavailable(reason[:300] + ("..." if len(reason) > 300 else ""))

    def complete(self, messages: list[dict], *, max_tokens: int = 512) -> tuple[str, bool]:
        """The (redacted) assistant text for ``messages`` and whether it came from the cache; JudgeUnavailable on
        failure. Only :meth:`describe_image` stores such text; verdicts are stored parsed (:meth:`judge`)."""
        request = self._request(messages, max_tokens)
        entry = self._read_cache(request)
        if entry is not None and isinstance(entry.get("content"), str):
            return self.redact(entry["content"]), True
        return self.redact(self._call(request, retries=self.config.max_retries)), False

    def _verdict(self, obj: dict) -> dict:
        """The stored form of a parsed verdict: boolean, redacted extracted answer, redacted short reason."""
        extracted = obj.get("extracted_answer")
        reason = " ".join(self.redact(obj.get("reason") or "").split())
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        return {"is_correct": bool(obj["is_correct"]),
                "extracted_answer": None if extracted is None else self.redact(extracted)[:500],
                "reason": reason}

    def probe(self) -> None:
        """Fail fast: one small, uncached request (at most one retry) to check that the judge answers at all;
        :class:`JudgeNotAnswering` (one line naming the server and model, key redacted) when it does not.
        Done once per :class:`Judge`."""
        if self._probed:
            return
        request = self._request([{"role": "system", "content": JUDGE_SYSTEM},
                                 {"role": "user", "content": 'Reply with JSON only: {"is_correct": true}'}], 16)
        try:
            self._call(request, retries=min(1, self.config.max_retries))
        except JudgeUnavailable as exc:
            raise JudgeNotAnswering(
                f"the LLM judge does not answer: model {self.config.model!r} at {self.where} ({exc}); "
                "check the server, "
                "OPENAI_BASE_URL / judge_base_url, the model name and OPENAI_API_KEY "
                "(or set FRANKENEVAL_JUDGE_PROBE=0 to skip this check)") from None
        self._probed = True

    # ------------------------------------------------------------------ public API
    def judge(self, question: str, choices: Sequence[str] | None, ground_truth: Any, model_answer: str) -> Judgment:
        """Judge one answer. A clear boolean verdict is cached; on final failure, or a reply without a clear boolean
        ``is_correct``, ``judge_error=True`` and ``is_correct=None`` (not cached, never a wrong answer)."""
        messages = [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": build_judge_prompt(question, choices, str(ground_truth), model_answer)},
        ]
        request = self._request(messages, 512)
        entry = self._read_cache(request)
        if entry is not None:
            verdict = entry.get("verdict")
            if isinstance(verdict, dict) and isinstance(verdict.get("is_correct"), bool):
                return Judgment(**self._verdict(verdict), cached=True)
            if isinstance(entry.get("content"), str):  # an entry of an older version: the raw reply
                try:
                    verdict = self._verdict(parse_judge_json(entry["content"]))
                except ValueError:
                    verdict = None  # e.g. {"is_correct": null}, once cached as wrong: ask again
                if verdict is not None:
                    self._write_cache(request, {"verdict": verdict})  # rewritten without the raw reply
                    return Judgment(**verdict, cached=True)
        try:
            content = self._call(request, retries=self.config.max_retries)
        except JudgeUnavailable as exc:
            return Judgment(None, None, f"judge unavailable: {exc}", judge_error=True)
        try:
            verdict = self._verdict(parse_judge_json(content))
        except ValueError as exc:
            return Judgment(None, None, str(exc), judge_error=True)
        self._write_cache(request, {"verdict": verdict})
        return Judgment(**verdict)

    def seed_request(self, question: str, choices: Sequence[str] | None, ground_truth: Any,
                     model_answer: Any) -> dict:
        """The request ``grading: seed`` sends: the reference's system and user texts, max_completion_tokens 1000,
        no temperature (the API default)."""
        messages = [{"role": "system", "content": SEED_JUDGE_SYSTEM},
                    {"role": "user", "content": build_seed_judge_prompt(question, choices, ground_truth,
                                                                       model_answer)}]
        return {"model": self.config.model, "messages": messages, "max_completion_tokens": SEED_JUDGE_MAX_TOKENS}

    def judge_seed(self, question: str, choices: Sequence[str] | None, ground_truth: Any,
                   extracted_answer: str) -> Judgment:
        """The reference's judge (``grading: seed``, seed-compatible only): its texts byte for byte
        (:meth:`seed_request`; ``question`` with its Choices block, ``extracted_answer`` the reference's extraction,
        :func:`frankeneval.evaluation.scoring.reference_final_answer`), its reading of the reply
        (:func:`parse_seed_reply`:
        ``bool(is_correct)``, an unparsable reply true when "true" is in its first 100 characters), and a failed
        call counted **wrong** (``is_correct=False`` with ``judge_error=True``, so it is still counted). Every
        verdict read from a reply is cached (its own cache entries: the request differs from :meth:`judge`'s)."""
        request = self.seed_request(question, choices, ground_truth, extracted_answer)
        entry = self._read_cache(request)
        verdict = entry.get("verdict") if entry is not None else None
        if isinstance(verdict, dict) and isinstance(verdict.get("is_correct"), bool):
            return Judgment(**self._verdict(verdict), cached=True)
        try:
            content = self._call(request, retries=self.config.max_retries)
        except JudgeUnavailable as exc:
            return Judgment(False, None, f"judge unavailable: {exc}", judge_error=True)
        ok, obj = parse_seed_reply(content)
        if obj is None:
            obj = {"reason": f"unparsable reply read as {str(ok).lower()} (seed rule)"}
        obj = {**obj, "is_correct": ok}
        if not isinstance(obj.get("extracted_answer"), (str, type(None))):
            obj["extracted_answer"] = str(obj["extracted_answer"])
        if not isinstance(obj.get("reason"), (str, type(None))):
            obj["reason"] = str(obj["reason"])
        verdict = self._verdict(obj)
        self._write_cache(request, {"verdict": verdict})
        return Judgment(**verdict)

    def extract_mathvista(self, prompt: str, *, max_tokens: int = 256) -> str:
        """MathVista's LLM extraction step: the model's completion of ``prompt`` (few-shot examples, the query, the
        response, ``Extracted answer: ``), stripped; cached by request. JudgeUnavailable on failure."""
        messages = [{"role": "user", "content": prompt}]
        content, cached = self.complete(messages, max_tokens=max_tokens)
        content = content.strip()
        if not cached:
            self._write_cache(self._request(messages, max_tokens), {"content": content})
        return content

    def describe_request(self, image) -> dict:
        """The description request, as the reference's: its system text, then the image first and its user text,
        max_completion_tokens 2000, no temperature."""
        messages = [
            {"role": "system", "content": DESCRIBE_SYSTEM},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": _image_data_url(image)}},
                {"type": "text", "text": DESCRIBE_USER},
            ]},
        ]
        return {"model": self.config.model, "messages": messages, "max_completion_tokens": DESCRIBE_MAX_TOKENS}

    def describe_image(self, image) -> str:
        """A text description of a PIL image written by the judge model with the reference's texts
        (:meth:`describe_request`; cached by model + request, image bytes included, key-like text redacted);
        JudgeUnavailable on failure or an empty reply (never another kind of description)."""
        request = self.describe_request(image)
        entry = self._read_cache(request)
        if entry is not None and isinstance(entry.get("content"), str) and entry["content"].strip():
            return self.redact(entry["content"]).strip()
        content = self.redact(self._call(request, retries=self.config.max_retries)).strip()
        if not content:
            raise JudgeUnavailable("empty description")
        self._write_cache(request, {"content": content})
        return content
