"""One writer per output, and child processes that die with their parent.

* :func:`file_lock` -- an exclusive ``flock`` on a lock file (waits, or fails with one line naming the holder's
  pid); re-entrant within a thread, and other threads of the process wait too. The lock file is created
  exclusively (a hard link of a file we just wrote, so it never replaces anything and holds its ``frankeneval
  lock`` line from the start) and never through a symbolic link (``O_NOFOLLOW``). An existing file at the lock
  path is used only when it is a frankeneval lock (one left by a killed process is simply re-locked by the next
  run: the kernel dropped the dead holder's lock); a symbolic link or any other file there is refused in one line
  (:class:`~frankeneval.errors.OutputRefused`) and left as it is. The lock file is removed when the lock is
  released, and only while the path is still that very file.
* :func:`output_lock` -- :func:`file_lock` on ``<parent>/.<name>.lock``: the lock of one output folder or file.
* :func:`pid_alive` -- whether a process of this host still runs (temp names carry their writer's pid).
* :func:`start_child` / :func:`stop_child` -- a subprocess in its own process group that gets SIGKILL when its
  parent dies (``prctl(PR_SET_PDEATHSIG)`` on Linux), and is killed with its whole group on an exception.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from frankeneval.errors import FrankenevalError, OutputRefused

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: in-process locking only
    fcntl = None  # type: ignore[assignment]

__all__ = ["OutputBusy", "file_lock", "output_lock", "pid_alive", "run_child", "start_child", "stop_child"]


class OutputBusy(FrankenevalError):
    """Another frankeneval process is writing the same output."""


@dataclass
class _Held:
    rlock: threading.RLock = field(default_factory=threading.RLock)
    fd: int | None = None
    depth: int = 0


_HELD: dict[str, _Held] = {}
_GUARD = threading.Lock()


_LOCK_LINE = b"frankeneval lock"
_LEGACY_LOCK = re.compile(rb"\d+\n?")  # what locks of older versions held: the holder's pid
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _lock_text(pid: int | None = None) -> bytes:
    return _LOCK_LINE + (f" pid {pid}".encode() if pid else b"") + b"\n"


def _is_lock_text(data: bytes) -> bool:
    """Whether ``data`` is what a frankeneval lock file holds (this version's line, or an older version's pid)."""
    return data.startswith(_LOCK_LINE) or _LEGACY_LOCK.fullmatch(data) is not None


def _holder(lock_path: Path) -> str:
    try:
        fd = os.open(lock_path, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK)
        try:
            data = os.pread(fd, 256, 0)
        finally:
            os.close(fd)
    except OSError:
        data = b""
    m = re.search(rb"(\d+)\s*$", data) if _is_lock_text(data) else None
    return f"pid {m.group(1).decode()}" if m else "another process"


def _refuse_lock(lock_path: Path, why: str) -> OutputRefused:
    return OutputRefused(f"{lock_path} {why}, not a frankeneval lock; nothing was written or deleted (move it away "
                         "or choose another output)")


def _create_lock(lock_path: Path) -> int | None:
    """A new lock file at ``lock_path``, created by this call and holding the lock line from the start: its
    descriptor; None when something is already at ``lock_path`` (it is never replaced nor followed)."""
    tmp = lock_path.with_name(f"{lock_path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    try:
        os.pwrite(fd, _lock_text(), 0)
        try:
            os.link(tmp, lock_path)  # atomic; fails on any existing name, a dangling symbolic link included
            return fd
        except FileExistsError:
            os.close(fd)
            return None
        except OSError:  # a file system without hard links: create the lock path itself exclusively
            os.close(fd)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
            except FileExistsError:
                return None
            os.pwrite(fd, _lock_text(), 0)
            return fd
    except BaseException:
        _close_quietly(fd)
        raise
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _open_existing_lock(lock_path: Path) -> int | None:
    """The descriptor of the frankeneval lock file already at ``lock_path`` (None when it is gone); a symbolic
    link, a folder or a file that is not a frankeneval lock is refused (one line), never opened for writing."""
    for _ in range(40):
        try:
            fd = os.open(lock_path, os.O_RDWR | _NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise _refuse_lock(lock_path, "is a folder") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(lock_path):
                raise _refuse_lock(lock_path, "is a symbolic link") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _refuse_lock(lock_path, "is not a regular file")
            data = os.pread(fd, 256, 0)
            if _is_lock_text(data):
                return fd
            if data:
                raise _refuse_lock(lock_path, "is a file frankeneval did not write")
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # empty: a lock being created without hard links a moment ago; look again
        time.sleep(0.05)
    raise _refuse_lock(lock_path, "is an empty file frankeneval did not write")


def _close_quietly(fd: int) -> None:
    """Close ``fd`` on an error path, where a second error must not hide the first."""
    try:
        os.close(fd)
    except OSError:
        pass


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _acquire(lock_path: Path, wait: bool, what: str) -> int:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        fd = _create_lock(lock_path)
        if fd is None:
            fd = _open_existing_lock(lock_path)
            if fd is None:  # removed by its holder in between: create it again
                continue
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not wait:
                        raise OutputBusy(
                            f"{what} is in use by another frankeneval process ({_holder(lock_path)}, lock "
                            f"{lock_path}); wait for it to finish or choose another folder"
                        ) from None
                    if not told:
                        print(f"frankeneval: waiting for another frankeneval process ({_holder(lock_path)}) "
                              f"writing {what}", file=sys.stderr, flush=True)
                        told = True
                    fcntl.flock(fd, fcntl.LOCK_EX)
            # the previous holder may have removed the file between our open and our lock: lock the new one
            if not _same_file(fd, lock_path):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, _lock_text(os.getpid()), 0)
            return fd
        except BaseException:
            _close_quietly(fd)
            raise


def _release(fd: int, lock_path: Path) -> None:
    """Remove the lock file -- only while ``lock_path`` is still the file ``fd`` locks -- and close ``fd``."""
    try:
        if _same_file(fd, lock_path):
            os.unlink(lock_path)  # still ours: nobody else can hold it now
    except OSError:
        pass
    os.close(fd)


@contextmanager
def file_lock(lock_path: str | os.PathLike, *, wait: bool = True, what: str | None = None) -> Iterator[int]:
    """Hold an exclusive lock on ``lock_path`` for the block; yields the lock file's descriptor (pass it to a
    child with ``pass_fds`` and the lock is held as long as the child lives, even past a killed parent).

    ``wait=False``: raise :class:`OutputBusy` (one line, the holder's pid) instead of waiting.
    """
    lock_path = Path(lock_path).absolute()
    what = what or str(lock_path)
    key = str(lock_path)
    with _GUARD:
        held = _HELD.setdefault(key, _Held())
    if not held.rlock.acquire(blocking=wait):
        raise OutputBusy(
            f"{what} is in use by another frankeneval run of this process (another thread); wait for it to finish"
        )
    try:
        if held.depth == 0:
            held.fd = _acquire(lock_path, wait, what)
        held.depth += 1
        try:
            yield held.fd  # type: ignore[misc]
        finally:
            held.depth -= 1
            if held.depth == 0:
                fd, held.fd = held.fd, None
                _release(fd, lock_path)  # type: ignore[arg-type]
    finally:
        held.rlock.release()


def lock_path_of(target: str | os.PathLike) -> Path:
    target = Path(target).expanduser().absolute()
    return target.parent / f".{target.name}.lock"


@contextmanager
def output_lock(target: str | os.PathLike, *, wait: bool = True) -> Iterator[int]:
    """The lock of one output (``<parent>/.<name>.lock``): one writer at a time."""
    target = Path(target).expanduser().absolute()
    with file_lock(lock_path_of(target), wait=wait, what=str(target)) as fd:
        yield fd


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as gone)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


# -- children that die with their parent ------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1
_LIBC = None
if sys.platform.startswith("linux"):
    try:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover
        _LIBC = None


def _die_with_parent(parent: int):
    def preexec() -> None:  # runs in the child between fork and exec
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl: nobody would kill us later
                os._exit(1)

    return preexec


def start_child(cmd: Sequence[str], *, pass_fds: Sequence[int] = (), **kwargs) -> subprocess.Popen:
    """``Popen(cmd)`` in a new process group (session), killed by the kernel when this process dies (Linux)."""
    # preexec_fn only calls prctl/getppid (async-signal-safe), so it is safe with threads (gpus=N)
    return subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509
                            pass_fds=tuple(pass_fds), **kwargs)


def stop_child(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and every process of its group, and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except OSError:
        pass
    proc.wait()


def run_child(cmd: Sequence[str], *, pass_fds: Sequence[int] = (), **kwargs) -> int:
    """Run ``cmd`` to completion with :func:`start_child`; on any exception (Ctrl-C, SIGTERM turned into an
    exception) its whole process group is killed first. Returns the exit status."""
    proc = start_child(cmd, pass_fds=pass_fds, **kwargs)
    try:
        rc = proc.wait()
    except BaseException:
        stop_child(proc)
        raise
    return rc
