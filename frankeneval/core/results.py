"""Results on disk: atomic file writes and append-only JSONL logs that heal a torn last line.

Every file frankeneval writes goes through here, so a crash never leaves a half-written result:

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`write_json_atomic` -- write a temp file in
  the same folder, flush + fsync, then ``os.replace`` it onto the target;
* :func:`atomic_output` -- the same for writers that want a path (``savefig``, ``Image.save``);
* :func:`staged_directory` -- a whole folder (a checkpoint) built in a temp folder and swapped into place,
  under the output's lock, replacing only a folder that holds exactly a frankeneval result and is no input;
* :func:`safe_name` -- names from specs and recipes that become folder names are single path components;
* :class:`JsonlLog` -- one JSON object per line, each appended with a single ``os.write`` on an ``O_APPEND``
  descriptor and fsynced; on open a torn last line (an interrupted append) is cut off, and a corrupt or
  incomplete line (per the log's ``check``, e.g. :func:`require_fields`) is named (file:line) and skipped, so
  its unit counts as not done and is recomputed. A log is never opened through a symbolic link (``O_NOFOLLOW``),
  and a log with a ``first_line`` check (a run store's header) that an existing file fails is refused in one line
  before anything is cut off or appended;
* :func:`read_jsonl` -- the complete records of such a log, read-only.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from frankeneval.core.locks import output_lock, pid_alive
from frankeneval.errors import FrankenevalError, OutputRefused, SpecError

__all__ = [
    "JsonlLog",
    "RecordCheck",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "discard_directory",
    "foreign_entries",
    "is_object",
    "open_nofollow",
    "read_jsonl",
    "refuse_inputs",
    "require_fields",
    "safe_name",
    "staged_directory",
    "write_all",
    "write_json_atomic",
]


# -- atomic writes --------------------------------------------------------------------------------------
def _temp_path(path: Path) -> Path:
    """A fresh name next to ``path`` that keeps its suffix (writers infer formats from it); it carries the
    writer's pid, so a later writer can tell a killed writer's leftover (:func:`_sweep_stale_temp_files`)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


_STALE_AFTER_S = 60.0  # a temp file of a dead pid untouched this long is a leftover (guards pid namespaces)
_swept: set[tuple[str, str, str]] = set()


def _sweep_stale_temp_files(path: Path) -> None:
    """Remove ``path``'s temp files left by killed writers (our own temp name, a pid no longer running, not
    touched for a minute); once per target per process."""
    key = (str(path.parent), path.stem, path.suffix)
    if key in _swept:
        return
    _swept.add(key)
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.tmp-(\d+)-[0-9a-f]{{8}}{re.escape(path.suffix)}")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    now = time.time()
    for e in entries:
        m = pattern.fullmatch(e.name)
        if not m or not e.is_file(follow_symlinks=False):
            continue
        try:
            if pid_alive(int(m.group(1))) or now - e.stat(follow_symlinks=False).st_mtime < _STALE_AFTER_S:
                continue
            os.unlink(e.path)
        except OSError:
            pass


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
    _sweep_stale_temp_files(path)
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


def safe_name(name: Any, what: str = "name") -> str:
    """``name`` if it is a single path component (it becomes a folder or file name); else a one-line
    :class:`SpecError`. Refused: empty, ``.``, ``..``, anything with ``/``, ``\\`` or a NUL byte."""
    text = str(name) if name is not None else ""
    if not text or text in (".", "..") or any(c in text for c in "/\\\0") or os.path.isabs(text):
        raise SpecError(
            f"{what} {text!r} must be a single path component (a plain name: no '/', '\\', '..', not empty)"
        )
    return text


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def refuse_inputs(
    target: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike]], what: str = "output"
) -> None:
    """One-line :class:`~frankeneval.errors.OutputRefused` when ``target`` is one of ``inputs`` ((label, path)
    pairs), holds one, or lies inside one (real paths: symlinks resolved)."""
    out = _real(target)
    for label, path in inputs:
        src = _real(path)
        if out == src:
            rel = "is"
        elif out in src.parents:
            rel = "holds"
        elif src in out.parents:
            rel = "lies inside"
        else:
            continue
        raise OutputRefused(f"{target}: the {what} {rel} input {label} ({path}); nothing was written, choose "
                            f"another {what}")


def foreign_entries(folder: Path, expected: Iterable[str]) -> str | None:
    """None when every entry of ``folder`` is a plain file named in ``expected``; else why not (for
    :func:`staged_directory`'s ``owned``)."""
    names = set(expected)
    extra = sorted(e.name for e in os.scandir(folder) if e.name not in names or not e.is_file(follow_symlinks=False))
    if not extra:
        return None
    shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
    return f"it holds files frankeneval did not write ({shown}); move them away or choose another output"


def _check_replaceable(final: Path, owned: Callable[[Path], str | None] | None) -> None:
    if not os.path.lexists(final):
        return
    if final.is_symlink():
        reason = "it is a symbolic link"
    elif not final.is_dir():
        reason = "it is not a folder"
    elif not any(os.scandir(final)):
        return
    else:
        reason = owned(final) if owned is not None else foreign_entries(final, ())
    if reason:
        raise FrankenevalError(f"{final} was not replaced: {reason}")


def _staged_name(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def discard_directory(final: str | os.PathLike) -> None:
    """Delete the folder ``final``: renamed aside first (a name :func:`staged_directory` sweeps), so a half-deleted
    folder is never seen under its name. The caller holds ``final``'s :func:`output_lock`."""
    final = Path(final)
    trash = _staged_name(final, "old")
    os.replace(final, trash)
    shutil.rmtree(trash)


def _sweep_stale_staging(final: Path) -> None:
    """Remove temp / old folders of ``final`` left by killed writers (called under ``final``'s lock, so no
    live writer owns one). Also the names of older versions (``mkdtemp``'s 8 random characters)."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(?:tmp|old)-(?:\d+-[0-9a-f]{{8}}|[a-z0-9_]{{8}})")
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return
    for e in entries:
        if pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)


@contextmanager
def staged_directory(
    final: str | os.PathLike,
    *,
    owned: Callable[[Path], str | None] | None = None,
    inputs: Iterable[tuple[str, str | os.PathLike]] = (),
) -> Iterator[Path]:
    """Yield a fresh temp folder next to ``final``; when the block ends cleanly it replaces ``final`` (an
    existing ``final`` is moved aside first and put back if the swap fails). On an exception it is removed.

    Safety: the whole block holds ``final``'s lock (one writer at a time; temp folders of killed writers of
    ``final`` are removed first). An existing ``final`` is replaced only when it is an empty folder or
    ``owned(final)`` returns None (it holds exactly a frankeneval result; a string says why not), and never
    when it is one of ``inputs`` ((label, path) pairs), holds one or lies inside one: otherwise a one-line
    :class:`FrankenevalError` and nothing is touched.
    """
    final = Path(final).expanduser().absolute()
    inputs = list(inputs)
    refuse_inputs(final, inputs)
    final.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(final):
        _sweep_stale_staging(final)
        _check_replaceable(final, owned)
        tmp = _staged_name(final, "tmp")
        tmp.mkdir()
        try:
            yield tmp
            _swap_in(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _swap_in(tmp: Path, final: Path) -> None:
    if not os.path.lexists(final):
        os.replace(tmp, final)
        return
    trash = _staged_name(final, "old")
    trash.mkdir()
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
RecordCheck = Callable[[Any], "str | None"]
"""A log's notion of a complete record: ``check(record)`` is None for a complete one, else the reason it is not."""

_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
_warned: set[tuple[str, int, str]] = set()


def is_object(record: Any) -> str | None:
    """The default check: every line of a results log is one JSON object."""
    if isinstance(record, dict):
        return None
    return (
        "not a JSON object (null)"
        if record is None
        else f"not a JSON object ({_JSON_KINDS.get(type(record), 'a value')})"
    )


def require_fields(*fields: str) -> RecordCheck:
    """A check: a JSON object that holds every one of ``fields``."""

    def check(record: Any) -> str | None:
        problem = is_object(record)
        if problem:
            return problem
        missing = [f for f in fields if f not in record]
        return f"incomplete record (no {', '.join(missing)})" if missing else None

    return check


def _warn_skipped(path: Path, skipped: list[tuple[int, str]]) -> None:
    """One stderr line per skipped line (each once per process): the file, the line, why."""
    for line, reason in skipped:
        token = (str(path), line, reason)
        if token in _warned:
            continue
        _warned.add(token)
        print(f"frankeneval: warning: {path}:{line}: {reason}; skipped, not counted as finished "
              "(a rerun recomputes it)", file=sys.stderr, flush=True)


def _decode(raw: bytes) -> tuple[Any, str | None]:
    try:
        return json.loads(raw), None
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        return None, "corrupt line (not JSON)"


def _parse_lines(path: Path, data: bytes, check: RecordCheck = is_object) -> tuple[list[Any], int]:
    """(complete records, length of the complete part of ``data``).

    A torn last line (an interrupted append) is left out of both. Any other line that is not JSON, or whose
    record ``check`` finds incomplete, is skipped with a one-line warning naming the file and line: it is not
    counted as finished, so the run that owns the log recomputes it (and appends the new record)."""
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or an unterminated last line
    records, skipped = [], []
    keep = len(data) - len(tail)
    numbered = [(i + 1, raw) for i, raw in enumerate(lines)]
    if tail.strip():
        if _decode(tail)[1] is None:
            numbered.append((len(lines) + 1, tail))
            keep = len(data)  # a complete line, only its newline is missing
        # else: torn by an interrupted append; cut off
    for number, raw in numbered:
        if not raw.strip():
            continue
        record, problem = _decode(raw)
        if problem is None:
            problem = check(record)
        if problem is None:
            records.append(record)
        else:
            skipped.append((number, problem))
    if skipped:
        _warn_skipped(path, skipped)
    return records, keep


def read_jsonl(path: str | os.PathLike, *, check: RecordCheck = is_object) -> list[Any]:
    """The complete records of a JSONL log (a torn last line is ignored, a corrupt or incomplete one skipped
    with a warning; the file is not changed)."""
    path = Path(path)
    if not path.is_file():
        return []
    return _parse_lines(path, path.read_bytes(), check)[0]


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a symbolic link at ``path`` and opens only a regular file: a link, a folder
    or a device there is refused in one line (:class:`~frankeneval.errors.OutputRefused`)."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | os.O_NONBLOCK, mode)
    except IsADirectoryError:
        raise OutputRefused(f"{path} is a folder, not a file frankeneval writes; nothing was written") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise OutputRefused(f"{path} is a symbolic link; frankeneval never writes through a link (nothing was "
                                "written): remove the link or choose another output") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputRefused(f"{path} is not a regular file; nothing was written")
    return fd


def _read_fd(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _first_line(data: bytes) -> tuple[bytes, bool]:
    """(the first non-blank line of ``data``, whether it is terminated by a newline)."""
    for raw in data.split(b"\n")[:-1]:
        if raw.strip():
            return raw, True
    return data.rsplit(b"\n", 1)[-1], False


class JsonlLog:
    """Append-only JSONL file; opening it cuts off a torn last line. ``records`` holds every complete record (in
    order); corrupt or incomplete lines (``check``) are skipped with a warning and stay in the file untouched.

    Never through a symbolic link. ``first_line``: a check of an existing file's first line (e.g. a run store's
    header; None when it is one of ours, else why not); a non-empty file whose first line fails it was not written
    by frankeneval and is refused (:class:`~frankeneval.errors.OutputRefused`) before anything is changed. A torn
    first line that starts like one of ours (``first_prefix``) counts as ours."""

    def __init__(self, path: str | os.PathLike, *, allow_nan: bool = True, check: RecordCheck = is_object,
                 first_line: RecordCheck | None = None, first_prefix: bytes | None = None) -> None:
        self.path = Path(path)
        self.allow_nan = allow_nan
        self.check = check
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[Any] = []
        if not os.path.lexists(self.path):
            return
        fd = open_nofollow(self.path, os.O_RDWR)
        try:
            data = _read_fd(fd)
            if first_line is not None and data.strip():
                self._check_first_line(data, first_line, first_prefix)
            self.records, keep = _parse_lines(self.path, data, check)
            if keep < len(data):
                os.ftruncate(fd, keep)
                os.fsync(fd)
            elif data and not data.endswith(b"\n"):
                self._write(b"\n")  # later appends start on a line of their own
        finally:
            os.close(fd)

    def _check_first_line(self, data: bytes, first_line: RecordCheck, prefix: bytes | None) -> None:
        raw, complete = _first_line(data)
        if not complete and prefix is not None and raw.lstrip().startswith(prefix):
            return  # our own first line, torn by an interrupted append
        record, problem = _decode(raw)
        problem = problem or first_line(record)
        if problem:
            raise OutputRefused(f"{self.path} was not written by frankeneval (first line: {problem}); nothing was "
                                "appended or changed: move it away or choose another output folder")

    def _write(self, data: bytes) -> None:
        fd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
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
