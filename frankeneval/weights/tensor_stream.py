"""The one tensor reader: bytes at a :class:`~frankeneval.weights.safetensors_file.TensorLocation`, read with
``os.preadv`` (no mmap, so the pages never count towards this process's RSS).

* :func:`read_into` -- fill a uint8 buffer from a file descriptor at an offset;
* :func:`read_tensor` -- one tensor, in its stored dtype and shape, on the CPU;
* :func:`stream_tensors` -- the same tensors of several checkpoints, one reader thread per checkpoint, onto a
  device: on CUDA through a small ring of pinned host buffers copied on a side stream; bounded queues
  (``queue_depth`` tensors per checkpoint) keep memory bounded while the caller computes. Tensors in
  non-safetensors shards fall back to ``Checkpoint.read``.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from frankeneval.errors import FrankenevalError
from frankeneval.weights.safetensors_file import TensorLocation, torch_dtype

if TYPE_CHECKING:
    from frankeneval.weights.checkpoint import Checkpoint

__all__ = ["read_into", "read_tensor", "stream_tensors"]


def read_into(fd: int, buf: torch.Tensor, offset: int) -> None:
    """Fill the uint8 CPU tensor ``buf`` from ``fd`` at ``offset``."""
    mv = memoryview(buf.numpy()).cast("B")
    got, total = 0, buf.numel()
    while got < total:
        n = os.preadv(fd, [mv[got:]], offset + got)
        if n <= 0:
            raise FrankenevalError(f"unexpected end of file while reading {total} bytes at offset {offset}")
        got += n


def read_tensor(loc: TensorLocation, fd: int | None = None) -> torch.Tensor:
    """The tensor at ``loc`` on the CPU, in its stored dtype and shape (``fd``: an open descriptor of its file)."""
    buf = torch.empty(loc.nbytes, dtype=torch.uint8)
    if fd is None:
        fd = os.open(loc.file, os.O_RDONLY)
        try:
            read_into(fd, buf, loc.offset)
        finally:
            os.close(fd)
    else:
        read_into(fd, buf, loc.offset)
    return buf.view(torch_dtype(loc.dtype)).reshape(loc.shape)


_END = object()


class _MemberReader(threading.Thread):
    """Reads the tensors ``names`` of one checkpoint, in order, onto ``device`` into a bounded queue."""

    def __init__(self, ckpt: Checkpoint, names: Sequence[str], device: torch.device, depth: int, chunk_bytes: int,
                 stop: threading.Event):
        super().__init__(daemon=True, name=f"reader:{ckpt.path.name}")
        self.ckpt, self.names, self.device, self.stop = ckpt, list(names), device, stop
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.chunk_bytes = chunk_bytes
        self.bytes_read = 0
        self._index = {ckpt.architecture.canonical_name(n): loc for n, loc in ckpt.locations().items()}
        self._fds: dict[Path, int] = {}

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def run(self) -> None:
        cuda = self.device.type == "cuda"
        try:
            if cuda:
                if self.device.index is None:  # "cuda" -> the current device (set_device needs an index)
                    self.device = torch.device("cuda", torch.cuda.current_device())
                torch.cuda.set_device(self.device)
                stream = torch.cuda.Stream(self.device)
                slots = [torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
                events: list[torch.cuda.Event | None] = [None, None]
            for name in self.names:
                if self.stop.is_set():
                    return
                loc = self._index.get(name)
                event = None
                if loc is None:  # pickle shard or unusual layout: the Checkpoint API
                    t = self.ckpt.read(name, device=self.device)
                    if cuda:
                        torch.cuda.current_stream(self.device).synchronize()
                    self.bytes_read += t.numel() * t.element_size()
                elif not cuda:
                    t = read_tensor(loc, self._fd(loc.file))
                    self.bytes_read += loc.nbytes
                else:
                    with torch.cuda.stream(stream):
                        gpu = torch.empty(loc.nbytes, dtype=torch.uint8, device=self.device)
                    pos, k = 0, 0
                    while pos < loc.nbytes:
                        n = min(self.chunk_bytes, loc.nbytes - pos)
                        slot = k % 2
                        if events[slot] is not None:
                            events[slot].synchronize()  # the previous copy out of this slot is done
                        read_into(self._fd(loc.file), slots[slot][:n], loc.offset + pos)
                        with torch.cuda.stream(stream):
                            gpu[pos : pos + n].copy_(slots[slot][:n], non_blocking=True)
                            ev = torch.cuda.Event()
                            ev.record(stream)
                        events[slot] = ev
                        pos, k = pos + n, k + 1
                        self.bytes_read += n
                    with torch.cuda.stream(stream):
                        event = torch.cuda.Event()
                        event.record(stream)
                    t = gpu.view(torch_dtype(loc.dtype)).reshape(loc.shape)
                if not self._put((name, t, event)):
                    return
            self._put(_END)
        except BaseException as exc:  # hand the failure to the consumer
            self._put(exc)
        finally:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


@contextmanager
def stream_tensors(
    checkpoints: Sequence[Checkpoint],
    names: Sequence[str],
    device: torch.device,
    *,
    queue_depth: int = 2,
    chunk_bytes: int = 64 << 20,
) -> Iterator[tuple[Iterator[tuple[str, list[torch.Tensor]]], Callable[[], int]]]:
    """Yield ``(iterator of (name, [tensor per checkpoint]), bytes_read())``, reading each tensor once.

    One reader thread per checkpoint; at most ``queue_depth`` tensors per checkpoint wait on the device
    while the caller computes. Tensors arrive in their stored dtype and shape, on ``device``.
    """
    stop = threading.Event()
    readers = [_MemberReader(c, names, device, queue_depth, chunk_bytes, stop) for c in checkpoints]
    for r in readers:
        r.start()

    def items() -> Iterator[tuple[str, list[torch.Tensor]]]:
        for expected in names:
            tensors = []
            for r in readers:
                item = r.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is _END:
                    raise FrankenevalError(f"{r.ckpt.source_id}: reader ended early")
                name, t, event = item
                if name != expected:  # pragma: no cover - readers follow the same list
                    raise FrankenevalError(f"reader order mismatch: {name} != {expected}")
                if event is not None:
                    cur = torch.cuda.current_stream(device)
                    cur.wait_event(event)
                    t.record_stream(cur)
                tensors.append(t)
            yield expected, tensors

    try:
        yield items(), lambda: sum(r.bytes_read for r in readers)
    finally:
        stop.set()
        for r in readers:
            while True:  # drain so a blocked put returns
                try:
                    r.queue.get_nowait()
                except queue.Empty:
                    break
            r.join(timeout=30)
