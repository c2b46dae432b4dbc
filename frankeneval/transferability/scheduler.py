"""The GPU queue of a transfer run: which cell runs on which GPU; a failed cell is retried once on another GPU.

``gpus=N`` (N > 1) runs N cells at a time, one per GPU; ``gpus=1`` runs them one after the other on GPU 0;
``gpus=0`` runs them one after the other without a GPU assignment.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

from frankeneval.errors import FrankenevalError

__all__ = ["Attempt", "device_ids", "schedule"]

C = TypeVar("C")
Attempt = Callable[[C, "int | None", bool], bool]
"""``attempt(cell, gpu, last)``: run ``cell`` on ``gpu`` (None: no GPU); True when it finished. ``last``: no
retry follows, so a failure is final."""


def device_ids(gpus: int) -> list[str]:
    """The CUDA device ids the GPU pool hands out: the first ``gpus`` of this process's CUDA_VISIBLE_DEVICES
    (so ``CUDA_VISIBLE_DEVICES=2,3 ... --gpus 2`` runs cells on GPUs 2 and 3), else 0 ... gpus-1."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        return [str(g) for g in range(max(gpus, 1))]
    if gpus > len(visible):
        raise FrankenevalError(f"--gpus {gpus} but CUDA_VISIBLE_DEVICES={','.join(visible)} names {len(visible)}")
    return visible[:max(gpus, 1)]


def schedule(cells: Sequence[C], attempt: Attempt, gpus: int) -> None:
    """Run every cell through ``attempt``: on a pool of ``gpus`` GPUs when ``gpus > 1``, else one by one."""
    if gpus and gpus > 1:
        _pool(cells, attempt, gpus)
        return
    for cell in cells:
        attempt(cell, 0 if gpus == 1 else None, True)


def _take(free: queue.Queue[int], avoid: set[int]) -> int:
    """A free GPU the cell has not failed on (waits for one)."""
    while True:
        gpu = free.get()
        if gpu not in avoid:
            return gpu
        free.put(gpu)
        time.sleep(0.05)


def _with_retry(cell: C, attempt: Attempt, free: queue.Queue[int]) -> None:
    """Try ``cell`` on a free GPU; once more on another GPU when it failed, then it is recorded as failed."""
    failed_on: set[int] = set()
    for retry in range(2):
        gpu = _take(free, failed_on)
        try:
            if attempt(cell, gpu, retry == 1):
                return
        finally:
            free.put(gpu)
        failed_on.add(gpu)


def _pool(cells: Sequence[C], attempt: Attempt, gpus: int) -> None:
    free: queue.Queue[int] = queue.Queue()
    for g in range(gpus):
        free.put(g)
    with ThreadPoolExecutor(max_workers=gpus) as pool:
        futures = [pool.submit(_with_retry, c, attempt, free) for c in cells]
        try:
            for f in as_completed(futures):
                f.result()
        except BaseException:  # Ctrl-C, or a disk error that every cell would hit: start no further cell
            for f in futures:
                f.cancel()
            raise
