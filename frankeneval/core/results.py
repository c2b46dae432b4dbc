"""Results on disk: atomic file writes and append-only JSONL logs that heal a torn last line.

Every file frankeneval writes goes through here, so a crash never leaves a half-written result:

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`write_json_atomic` -- write a temp file in
  the same folder, flush + fsync, then ``os.replace`` it onto the target;
* :func:`atomic_output` -- the same for writers that want a path (``savefig``, ``Image.save``);
* :func:`staged_directory` -- a whole folder (a checkpoint) built in a temp folder and swapped into place;
* :class:`JsonlLog` -- one JSON object per line, each appended with a single ``os.write`` on an ``O_APPEND``
  descriptor and fsynced; on open a torn last line (an interrupted append) is cut off;
* :func:`read_jsonl` -- the complete records of such a log, read-only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from frankeneval.errors import FrankenevalError

__all__ = [
    "JsonlLog",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_jsonl",
    "staged_directory",
    "write_all",
    "write_json_atomic",
]


# -- atomic writes --------------------------------------------------------------------------------------
def _temp_path(path: Path) -> Path:
    """A fresh name next to ``path`` that keeps its suffix (writers infer formats from it)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; when the block ends cleanly it is fsynced and renamed onto ``path``.

    On an exception the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def write_json_atomic(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = None,
    ensure_ascii: bool = True,
    allow_nan: bool = True,
    newline: bool = True,
) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (``json.dumps`` options; ``newline``: end with ``\\n``)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, allow_nan=allow_nan)
    return atomic_write_text(path, text + "\n" if newline else text)


@contextmanager
def staged_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder next to ``final``; when the block ends cleanly it replaces ``final`` (an
    existing ``final`` is moved aside first and put back if the swap fails). On an exception it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.replace(tmp, final)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, trash / "old")
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(trash / "old", final)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def write_all(fd: int, data) -> None:
    """Write all of ``data`` (bytes-like) to the descriptor ``fd`` (``os.write`` may write less per call)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# -- append-only JSONL ----------------------------------------------------------------------------------
def _parse_lines(path: Path, data: bytes) -> tuple[list[Any], int]:
    """(records, length of the complete part of ``data``): a torn last line is left out; any other line that is
    not JSON raises a one-line :class:`FrankenevalError`."""
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or an unterminated last line
    records = []
    for i, raw in enumerate(lines):
        if raw.strip():
            try:
                records.append(json.loads(raw))
            except json.JSONDecodeError:
                raise FrankenevalError(f"{path}:{i + 1}: corrupt line in a results log") from None
    keep = len(data) - len(tail)
    if tail.strip():
        try:
            records.append(json.loads(tail))
            keep = len(data)  # complete record, only its newline is missing
        except json.JSONDecodeError:
            pass  # torn by an interrupted append
    return records, keep


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The complete records of a JSONL log (a torn last line is ignored; the file is not changed)."""
    path = Path(path)
    if not path.is_file():
        return []
    return _parse_lines(path, path.read_bytes())[0]


class JsonlLog:
    """Append-only JSONL file; opening it cuts off a torn last line. ``records`` holds every record, in order."""

    def __init__(self, path: str | os.PathLike, *, allow_nan: bool = True) -> None:
        self.path = Path(path)
        self.allow_nan = allow_nan
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[Any] = []
        if self.path.is_file():
            data = self.path.read_bytes()
            self.records, keep = _parse_lines(self.path, data)
            if keep < len(data):
                os.truncate(self.path, keep)
            elif data and not data.endswith(b"\n"):
                self._write(b"\n")

    def _write(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, record: Any) -> None:
        """Write one record as one line (ASCII-escaped JSON, so no raw line separators inside it) and fsync."""
        self._write((json.dumps(record, allow_nan=self.allow_nan) + "\n").encode("utf-8"))
        self.records.append(record)

    def close(self) -> None:
        """Nothing is held open between appends; kept for ``with``-style callers."""

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
