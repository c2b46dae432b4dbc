"""Append-only JSONL result store keyed by a unit id: long runs write each finished unit and resume on rerun.

Layout: one JSON object per line. The first line may be a header ``{"_header": {...}}`` describing the run (model,
settings); opening an existing store with a different header raises, so results of two different runs never mix.
Its ``inputs`` (``RunStore(..., inputs=...)``) hold the content fingerprint of every input (a model's weights, the
data rows and files read): a resume needs them equal, and the refusal says which input changed (:func:`input_change`).
Every other line is ``{"key": <unit id>, "record": {...}}``; a unit is finished only when its line is such an object
with a non-empty ``record`` object (and, for stores that name ``required`` fields, the record holds them). Anything
else -- a corrupt line, ``{}``, a line without its record, a line that is not an object -- is named (file:line) on
stderr, skipped and so recomputed by the run (:func:`record_problem`, the one check, used on read and on append).

Appends go through :class:`frankeneval.core.results.JsonlLog`: each line is written with a single ``os.write`` on an
``O_APPEND`` descriptor and fsynced, so a crash can at worst leave one truncated *last* line, which is cut off when
the store is next opened. A key appended twice keeps its latest record. A store is never opened through a symbolic
link, and a writer (a store opened with a header) refuses, in one line and before changing anything, an existing
non-empty file whose first line is not a run-store header (:func:`header_problem`): frankeneval did not write it.

    store = RunStore(out / "units.jsonl", header={"model": "...", "max_new_tokens": 64})
    if not store.done(key):
        store.append(key, {"response": "..."})
    store.records()   # {key: record} in first-append order
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from frankeneval.core.results import JsonlLog, is_object, read_jsonl
from frankeneval.errors import FrankenevalError

__all__ = ["INPUTS", "RunStore", "RunStoreMismatch", "input_change", "read_records", "record_problem"]


class RunStoreMismatch(FrankenevalError):
    """An existing run store was written by a run with different settings or inputs."""


INPUTS = "inputs"  # header key: {label: {kind: content fingerprint}} of every input (models, data, sources)


def _short(fingerprint: Any) -> str:
    return str(fingerprint)[:12] if fingerprint else "unknown"


def input_change(old: Any, new: dict[str, dict[str, Any]]) -> str | None:
    """None when the inputs ``old`` (as recorded) and ``new`` have equal content, else what changed, in words:
    ``a different rl model (weights changed: fingerprint 1a2b3c4d5e6f -> 6f5e4d3c2b1a)``.

    An input is ``{label: {kind: fingerprint}}`` (kind ``weights`` for a model, ``content`` for data); a record
    made before inputs were recorded (``old`` not a dict) is never equal."""
    if not isinstance(old, dict):
        return "no record of its inputs' content (an older frankeneval)"
    for label in [*new, *(k for k in old if k not in new)]:
        a, b = old.get(label), new.get(label)
        if a == b:
            continue
        if not isinstance(b, dict):
            return f"an input this run does not have ({label})"
        if not isinstance(a, dict):
            return f"no record of its {label}'s content"
        kind = next((k for k in [*b, *a] if a.get(k) != b.get(k)), "content")
        return f"a different {label} ({kind} changed: fingerprint {_short(a.get(kind))} -> {_short(b.get(kind))})"
    return None


NUMBER = (int, float)  # a JSON number (never true / false)


def list_of_numbers(value: Any) -> bool:
    """A (nested) JSON list whose leaves are all numbers, e.g. an attention ``mass`` (layers x heads)."""
    if not isinstance(value, list):
        return False
    return all(list_of_numbers(v) if isinstance(v, list) else _is_type(v, NUMBER) for v in value)


list_of_numbers.description = "a list of numbers"  # type: ignore[attr-defined]

_TYPE_WORDS = {str: "text", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object", type(None): "null"}


def _is_type(value: Any, kind: Any) -> bool:
    """``value`` is ``kind``: a type, a predicate, or a tuple of them (any one); JSON true / false is no number."""
    for k in kind if isinstance(kind, tuple) else (kind,):
        if not isinstance(k, type):
            if k(value):
                return True
        elif isinstance(value, k) and (k is bool or not isinstance(value, bool)):
            return True
    return False


def _kind_words(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if {int, float} <= set(kinds):
        kinds = (float, *(k for k in kinds if k not in (int, float)))
    return " or ".join(_TYPE_WORDS.get(k) or getattr(k, "description", None) or getattr(k, "__name__", "valid")
                       for k in kinds)


def field_type_problem(record: dict, types: Mapping[str, Any]) -> str | None:
    """None when every field of ``record`` named in ``types`` (name -> a type, a tuple of types, or a predicate
    with a ``description``) that it holds has that type, else which field is wrong, in words:
    ``field 'response' is an integer, not text``."""
    for name, kind in types.items():
        if kind is None or name not in record or _is_type(record[name], kind):
            continue
        got = "true or false" if isinstance(record[name], bool) else _TYPE_WORDS.get(type(record[name]),
                                                                                        type(record[name]).__name__)
        return f"field {name!r} is {got}, not {_kind_words(kind)}"
    return None


def _required(required: Iterable[str] | Mapping[str, Any]) -> tuple[str, ...] | dict[str, Any]:
    return dict(required) if isinstance(required, Mapping) else tuple(required)


def record_problem(line: Any, required: Iterable[str] | Mapping[str, Any] = ()) -> str | None:
    """None when ``line`` is a complete run-store line (a header, or a finished unit), else why it is not.
    ``required``: the fields every record holds, or ``{field: type}`` (see :func:`field_type_problem`): a record
    whose field has the wrong type is not finished either (skipped on read, so a resume recomputes it)."""
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
    wrong = field_type_problem(record, required) if isinstance(required, Mapping) else None
    if wrong:
        return f"record of unit {line['key']!r} has a field of the wrong type ({wrong})"
    return None


def header_problem(line: Any) -> str | None:
    """None when ``line`` (an existing store's first line) is a run-store header, else why not: a writer never
    appends to a file that does not start with one (it was not written by frankeneval)."""
    if isinstance(line, dict) and isinstance(line.get("_header"), dict):
        return None
    return "not a frankeneval run-store header"


def _collect(lines: Iterable[dict]) -> tuple[dict[str, Any] | None, dict[str, dict]]:
    header, records = None, {}
    for obj in lines:
        if "_header" in obj:
            header = obj["_header"]
        else:
            records[str(obj["key"])] = obj["record"]  # a key appended twice keeps its latest record
    return header, records


def read_records(path: str | os.PathLike,
                 required: Iterable[str] | Mapping[str, Any] = ()) -> tuple[dict[str, Any] | None, dict[str, dict]]:
    """(header, {key: record}) of a run store, read-only (for reports): the same check as :class:`RunStore`."""
    required = _required(required)
    return _collect(read_jsonl(path, check=lambda line: record_problem(line, required)))


class RunStore:
    """Append-only JSONL store of finished units (``done`` / ``append`` / ``records``).

    ``required``: fields every record of this store holds, or ``{field: type}``; a record without one of them, or
    with one of the wrong type, is not finished.
    """

    def __init__(self, path: str | os.PathLike, header: dict[str, Any] | None = None, *,
                 required: Iterable[str] | Mapping[str, Any] = (),
                 inputs: dict[str, dict[str, str | None]] | None = None) -> None:
        self.path = Path(path)
        self.required = _required(required)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._records: dict[str, dict] = {}
        self._header: dict[str, Any] | None = None
        self._writer = header is not None or inputs is not None  # a writer appends only to a store with our header
        self._load()
        if inputs is not None:  # the content of every input, compared before the settings
            header = {**(header or {}), INPUTS: inputs}
        if header is not None:
            header = json.loads(json.dumps(header))  # normalize (tuples -> lists) for comparison
            if self._header is None:
                if self._records:
                    raise RunStoreMismatch(f"{self.path}: results exist but no header; use another output path")
                self._header = header
                self._write_line({"_header": header})
            elif INPUTS in header and (change := input_change(self._header.get(INPUTS), header[INPUTS])):
                raise RunStoreMismatch(f"{self.path} was made with {change}; use another output folder or delete it "
                                       "to start over")
            elif self._header != header:
                diff = sorted(k for k in set(header) | set(self._header) if header.get(k) != self._header.get(k))
                raise RunStoreMismatch(
                    f"{self.path} holds results of a run with other settings (differs in: {', '.join(diff)}); "
                    "use another output folder or delete it to start over"
                )

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        # cuts off a torn last line left by an interrupted append; names and skips incomplete lines
        self._log = JsonlLog(self.path, check=lambda line: record_problem(line, self.required),
                             first_line=header_problem if getattr(self, "_writer", False) else None,
                             first_prefix=b'{"_header"')
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
