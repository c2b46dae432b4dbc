"""One writer per output, and child processes that die with their parent.

* :func:`file_lock` -- an exclusive ``flock`` on a lock file (waits, or fails with one line naming the holder's
  pid); re-entrant within a thread, and other threads of the process wait too. The lock file is removed when
  the lock is released; one left by a killed process is simply re-locked by the next run (the kernel dropped
  the dead holder's lock).
* :func:`output_lock` -- :func:`file_lock` on ``<parent>/.<name>.lock``: the lock of one output folder or file.
* :func:`pid_alive` -- whether a process of this host still runs (temp names carry their writer's pid).
* :func:`start_child` / :func:`stop_child` -- a subprocess in its own process group that gets SIGKILL when its
  parent dies (``prctl(PR_SET_PDEATHSIG)`` on Linux), and is killed with its whole group on an exception.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from frankeneval.errors import FrankenevalError

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


def _holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


def _acquire(lock_path: Path, wait: bool, what: str) -> int:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children unless passed
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
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise


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
        raise OutputBusy(f"{what} is in use by another frankeneval run of this process (another thread); wait for it to finish")
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
                try:
                    os.unlink(lock_path)  # still ours: nobody else can hold it now
                except OSError:
                    pass
                os.close(fd)  # type: ignore[arg-type]
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
