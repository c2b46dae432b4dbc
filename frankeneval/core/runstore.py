"""Append-only JSONL result store keyed by a unit id: long runs write each finished unit and resume on rerun.

Layout: one JSON object per line. The first line may be a header ``{"_header": {...}}`` describing the run (model,
settings); opening an existing store with a different header raises, so results of two different runs never mix.
Every other line is ``{"key": <unit id>, "record": {...}}``; a unit is finished only when its line is such an object
with a non-empty ``record`` object (and, for stores that name ``required`` fields, the record holds them). Anything
else -- a corrupt line, ``{}``, a line without its record, a line that is not an object -- is named (file:line) on
stderr, skipped and so recomputed by the run (:func:`record_problem`, the one check, used on read and on append).

Appends go through :class:`frankeneval.core.results.JsonlLog`: each line is written with a single ``os.write`` on an
``O_APPEND`` descriptor and fsynced, so a crash can at worst leave one truncated *last* line, which is cut off when
the store is next opened. A key appended twice keeps its latest record.

    store = RunStore(out / "units.jsonl", header={"model": "...", "max_new_tokens": 64})
    if not store.done(key):
        store.append(key, {"response": "..."})
    store.records()   # {key: record} in first-append order
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from frankeneval.core.results import JsonlLog, is_object, read_jsonl
from frankeneval.errors import FrankenevalError

__all__ = ["RunStore", "RunStoreMismatch", "read_records", "record_problem"]


class RunStoreMismatch(FrankenevalError):
    """An existing run store was written by a run with different settings."""


def record_problem(line: Any, required: Iterable[str] = ()) -> str | None:
    """None when ``line`` is a complete run-store line (a header, or a finished unit), else why it is not."""
    problem = is_object(line)
    if problem:
        return problem
    if "_header" in line:
        return None if isinstance(line["_header"], dict) else "header is not a JSON object"
    if "key" not in line or not isinstance(line["key"], (str, int)) or isinstance(line["key"], bool):
        return "incomplete record (no unit key)"
    record = line.get("record")
    if not isinstance(record, dict) or not record:
        return f"incomplete record of unit {line['key']!r} (no record)"
    missing = [f for f in required if f not in record]
    if missing:
        return f"incomplete record of unit {line['key']!r} (no {', '.join(missing)})"
    return None


def _collect(lines: Iterable[dict]) -> tuple[dict[str, Any] | None, dict[str, dict]]:
    header, records = None, {}
    for obj in lines:
        if "_header" in obj:
            header = obj["_header"]
        else:
            records[str(obj["key"])] = obj["record"]  # a key appended twice keeps its latest record
    return header, records


def read_records(path: str | os.PathLike, required: Iterable[str] = ()) -> tuple[dict[str, Any] | None, dict[str, dict]]:
    """(header, {key: record}) of a run store, read-only (for reports): the same check as :class:`RunStore`."""
    required = tuple(required)
    return _collect(read_jsonl(path, check=lambda line: record_problem(line, required)))


class RunStore:
    """Append-only JSONL store of finished units (``done`` / ``append`` / ``records``).

    ``required``: fields every record of this store holds; a record without one of them is not finished.
    """

    def __init__(self, path: str | os.PathLike, header: dict[str, Any] | None = None, *,
                 required: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.required = tuple(required)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._records: dict[str, dict] = {}
        self._header: dict[str, Any] | None = None
        self._load()
        if header is not None:
            header = json.loads(json.dumps(header))  # normalize (tuples -> lists) for comparison
            if self._header is None:
                if self._records:
                    raise RunStoreMismatch(f"{self.path}: results exist but no header; use another output path")
                self._header = header
                self._write_line({"_header": header})
            elif self._header != header:
                diff = sorted(k for k in set(header) | set(self._header) if header.get(k) != self._header.get(k))
                raise RunStoreMismatch(
                    f"{self.path} holds results of a run with other settings (differs in: {', '.join(diff)}); "
                    "use another output folder or delete it to start over"
                )

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        # cuts off a torn last line left by an interrupted append; names and skips incomplete lines
        self._log = JsonlLog(self.path, check=lambda line: record_problem(line, self.required))
        self._header, self._records = _collect(self._log.records)

    @property
    def header(self) -> dict[str, Any] | None:
        return self._header

    def done(self, key: str) -> bool:
        """Whether unit ``key`` has a record."""
        return str(key) in self._records

    def get(self, key: str, default: Any = None) -> Any:
        return self._records.get(str(key), default)

    def records(self) -> dict[str, dict]:
        """All finished units, ``{key: record}`` (a copy)."""
        return dict(self._records)

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys in ``keys`` that have no record yet, in order."""
        return [k for k in keys if str(k) not in self._records]

    def __len__(self) -> int:
        return len(self._records)

    # ------------------------------------------------------------------ writing
    def _write_line(self, obj: dict) -> None:
        self._log.append(obj)

    def append(self, key: str, record: dict[str, Any]) -> None:
        """Write one finished unit (atomic single-line append)."""
        key = str(key)
        problem = record_problem({"key": key, "record": record}, self.required)
        if problem:  # it would read back as unfinished
            raise ValueError(f"{self.path}: cannot store unit {key!r}: {problem}")
        with self._lock:
            self._write_line({"key": key, "record": record})
            self._records[key] = json.loads(json.dumps(record))

    def extend(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        for key, record in items:
            self.append(key, record)
