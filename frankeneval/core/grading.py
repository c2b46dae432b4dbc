"""LLM judge (GPT grading) and image descriptions through any OpenAI-compatible server.

* ``Judge.judge(question, choices, ground_truth, model_answer)`` asks the judge model for JSON
  ``{"is_correct": bool, "extracted_answer": str, "reason": str}``.
* ``Judge.describe_image(image)`` writes the description used by the black-image + description control.

Every successful call is cached on disk, keyed by (judge model, hash of the request), with atomic writes, so a
rerun costs nothing. Rate limits (429), server errors (5xx), timeouts and connection errors are retried with
exponential backoff; when every try fails the result carries ``judge_error=True`` (never counted as wrong).

Configuration: ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` (or ``base_url=``), ``FRANKENEVAL_JUDGE_MODEL``
(default ``gpt-4o-mini``), ``FRANKENEVAL_JUDGE_CACHE`` (default ``~/.cache/frankeneval/judge``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from frankeneval.core.results import write_json_atomic

__all__ = [
    "DEFAULT_JUDGE_MODEL",
    "JudgeConfig",
    "Judgment",
    "Judge",
    "JudgeUnavailable",
    "build_judge_prompt",
    "parse_judge_json",
    "DESCRIBE_PROMPT",
]

DEFAULT_JUDGE_MODEL = "gpt-4o-mini"

JUDGE_SYSTEM = "You are a strict grader of answers to benchmark questions. Reply with one JSON object only."

DESCRIBE_PROMPT = (
    "Describe this image in detail so that someone who cannot see it could answer questions about it: "
    "every object, number, label, text, axis, table value and spatial relation. Do not solve any problem."
)


class JudgeUnavailable(RuntimeError):
    """Every attempt to reach the judge failed (kept internal: callers get ``judge_error``)."""


@dataclass
class JudgeConfig:
    """Judge settings; ``None`` fields come from the environment."""

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    cache_dir: str | os.PathLike | None = None
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 120.0
    temperature: float = 0.0

    def resolved(self) -> "JudgeConfig":
        return JudgeConfig(
            model=self.model or os.environ.get("FRANKENEVAL_JUDGE_MODEL") or DEFAULT_JUDGE_MODEL,
            base_url=self.base_url or os.environ.get("OPENAI_BASE_URL") or None,
            api_key=self.api_key or os.environ.get("OPENAI_API_KEY") or None,
            cache_dir=Path(
                self.cache_dir
                or os.environ.get("FRANKENEVAL_JUDGE_CACHE")
                or Path.home() / ".cache" / "frankeneval" / "judge"
            ).expanduser(),
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
            timeout_s=self.timeout_s,
            temperature=self.temperature,
        )


@dataclass
class Judgment:
    """One judge verdict. ``is_correct`` is None exactly when ``judge_error`` is True."""

    is_correct: bool | None
    extracted_answer: str | None = None
    reason: str = ""
    judge_error: bool = False
    cached: bool = False
    raw: str | None = field(default=None, repr=False)

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


def parse_judge_json(text: str) -> dict:
    """The judge's JSON object (code fences and surrounding text tolerated); ValueError when there is none."""
    t = (text or "").strip()
    t = re.sub(r"^```(?:json)?\s*|\s*```$", "", t)
    candidates = [t] + re.findall(r"\{.*\}", t, flags=re.DOTALL)
    for c in candidates:
        try:
            obj = json.loads(c)
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(obj, dict) and "is_correct" in obj:
            v = obj["is_correct"]
            if isinstance(v, str):
                if v.strip().lower() not in ("true", "false", "yes", "no"):
                    continue
                v = v.strip().lower() in ("true", "yes")
            obj["is_correct"] = bool(v)
            return obj
    raise ValueError(f"no judge JSON with is_correct in: {t[:200]!r}")


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
        self._sleep = sleep or (lambda seconds: time.sleep(seconds))
        self.calls = 0  # requests actually sent (cache misses, retries included)

    # ------------------------------------------------------------------ plumbing
    @property
    def client(self):
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(
                api_key=self.config.api_key or "EMPTY",
                base_url=self.config.base_url,
                max_retries=0,  # our own backoff, so every failure mode is counted and bounded
                timeout=self.config.timeout_s,
            )
        return self._client

    def cache_path(self, request: dict) -> Path:
        """The cache file of a request: ``<cache>/<model>/<sha256 of the request>.json``."""
        digest = hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        safe_model = re.sub(r"[^A-Za-z0-9._-]+", "_", self.config.model)
        return Path(self.config.cache_dir) / safe_model / digest[:2] / f"{digest}.json"

    @staticmethod
    def _retryable(exc: Exception) -> bool:
        import openai

        if isinstance(exc, (openai.RateLimitError, openai.APIConnectionError, openai.APITimeoutError)):
            return True
        if isinstance(exc, openai.APIStatusError):
            return exc.status_code == 429 or exc.status_code >= 500
        return False

    def complete(self, messages: list[dict], *, max_tokens: int = 512) -> tuple[str, bool]:
        """The assistant text for ``messages`` and whether it came from the cache; JudgeUnavailable on failure."""
        request = {"model": self.config.model, "messages": messages, "temperature": self.config.temperature,
                   "max_tokens": max_tokens}
        path = self.cache_path(request)
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))["content"], True
            except (json.JSONDecodeError, KeyError, OSError):
                pass  # a damaged entry is refetched
        last: Exception | None = None
        for attempt in range(self.config.max_retries + 1):
            try:
                self.calls += 1
                resp = self.client.chat.completions.create(**request)
                content = resp.choices[0].message.content or ""
                return content, False
            except Exception as exc:  # noqa: BLE001 - classified below
                last = exc
                if not self._retryable(exc) or attempt == self.config.max_retries:
                    break
                self._sleep(min(self.config.max_backoff_s, self.config.backoff_s * (2**attempt)))
        raise JudgeUnavailable(f"{type(last).__name__}: {last}")

    def _store(self, messages: list[dict], content: str, *, max_tokens: int) -> None:
        request = {"model": self.config.model, "messages": messages, "temperature": self.config.temperature,
                   "max_tokens": max_tokens}
        write_json_atomic(self.cache_path(request), {"model": self.config.model, "content": content}, ensure_ascii=False, newline=False)

    # ------------------------------------------------------------------ public API
    def judge(self, question: str, choices: Sequence[str] | None, ground_truth: Any, model_answer: str) -> Judgment:
        """Judge one answer; on final failure (or unparsable replies) ``judge_error=True`` and ``is_correct=None``."""
        messages = [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": build_judge_prompt(question, choices, str(ground_truth), model_answer)},
        ]
        try:
            content, cached = self.complete(messages, max_tokens=512)
        except JudgeUnavailable as exc:
            return Judgment(None, None, f"judge unavailable: {exc}", judge_error=True)
        try:
            obj = parse_judge_json(content)
        except ValueError as exc:
            return Judgment(None, None, str(exc), judge_error=True, raw=content)
        if not cached:
            self._store(messages, content, max_tokens=512)
        extracted = obj.get("extracted_answer")
        return Judgment(bool(obj["is_correct"]), None if extracted is None else str(extracted),
                        str(obj.get("reason", "")), cached=cached, raw=content)

    def describe_image(self, image, *, prompt: str = DESCRIBE_PROMPT, max_tokens: int = 1024) -> str:
        """A text description of a PIL image (cached by model + image bytes + prompt); JudgeUnavailable on failure."""
        messages = [
            {"role": "user", "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": _image_data_url(image)}},
            ]},
        ]
        content, cached = self.complete(messages, max_tokens=max_tokens)
        content = content.strip()
        if not content:
            raise JudgeUnavailable("empty description")
        if not cached:
            self._store(messages, content, max_tokens=max_tokens)
        return content
