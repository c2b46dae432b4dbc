"""Reading lmms-eval samples files: per-sample scores and ``{doc id: correct}`` tables."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _sample_score(value: Any) -> float | None:
    """Per-sample correctness from a samples-file metric field: ``{"score": 0/1, ...}`` or a number."""
    if isinstance(value, dict):
        value = value.get("score")
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _sample_rows(path: Path, use: str) -> Iterable[dict]:
    """The JSON-object lines of a samples file; an unreadable file or line is named on stderr (``use``: what it is
    then left out of) and skipped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if not isinstance(row, dict):
                    warn(f"{path}:{i}: corrupt samples line; left out of {use}")
                    continue
                yield row
    except OSError as exc:
        warn(f"{path}: samples unreadable ({exc.strerror or exc}); left out of {use}")


def read_sample_scores(path: Path, metric: str) -> list[float]:
    """Per-sample scores of ``metric``; an unreadable file or line is named on stderr and left out (n shows it)."""
    scores = (_sample_score(row.get(metric)) for row in _sample_rows(path, "n and the interval"))
    return [s for s in scores if s is not None]


def _item_id(row: dict, value: Any) -> str | None:
    """The doc id of a samples line: the metric's own ``id``, else the doc's ``id``, else lmms-eval's ``doc_id``."""
    if isinstance(value, dict) and value.get("id") is not None:
        return str(value["id"])
    doc = row.get("doc")
    if isinstance(doc, dict) and doc.get("id") is not None:
        return str(doc["id"])
    return None if row.get("doc_id") is None else f"doc_{row['doc_id']}"


def read_item_table(path: Path, metric: str) -> dict[str, bool | None]:
    """``{doc id: correct}`` of ``metric`` in one samples file; ``None`` for an item without a score (a judge error,
    or the metric absent on that line). Unreadable files / lines are named on stderr and left out."""
    out: dict[str, bool | None] = {}
    for row in _sample_rows(path, "the paired metrics"):
        value = row.get(metric)
        key = _item_id(row, value)
        if key is None:
            continue
        s = _sample_score(value)
        out[key] = None if s is None else s >= 0.5
    return out


def warn(msg: str) -> None:
    print(f"frankeneval: warning: {msg}", file=sys.stderr, flush=True)
