"""Benchmark: the content fingerprint of a checkpoint, cold (every byte hashed) and warm (the per-file cache hit).

    python bench/bench_fingerprint.py /path/to/checkpoint            # e.g. a 7B hub snapshot
    python bench/bench_fingerprint.py /path/to/checkpoint --no-drop  # leave the page cache alone
    python bench/bench_fingerprint.py --algorithms 512              # raw hashlib speeds on 512 MB in memory

For each repeat: evicts the shards from the page cache (``posix_fadvise(DONTNEED)``, no root needed; skipped with
``--no-drop``) and empties a private fingerprint cache, times ``Checkpoint.fingerprint()`` (cold: reads and hashes
every byte, one thread per shard), then times it again (warm: a ``stat`` and a small JSON read per shard). Also
times a hot-page-cache cold hash (data in RAM, so pure hashing) and prints the raw speed of hashlib's algorithms.
Prints a table and writes ``bench_fingerprint.json`` into the current folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def _evict(paths: list[Path]) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd) if os.access(p, os.W_OK) else None
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def algorithms(mb: int) -> dict[str, float]:
    """GB/s of hashlib's algorithms on ``mb`` MB of random bytes in memory (one thread)."""
    data = os.urandom(mb << 20)
    out = {}
    for name in ("sha256", "sha1", "blake2b", "blake2s", "sha512", "md5", "sha3_256"):
        h = hashlib.new(name)
        t = time.perf_counter()
        h.update(data)
        out[name] = len(data) / (time.perf_counter() - t) / 1e9
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", help="checkpoint directory (local dir or hub snapshot)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-drop", action="store_true",
                    help="do not evict the shards from the page cache before cold runs")
    ap.add_argument("--algorithms", type=int, default=256, metavar="MB",
                    help="raw hashlib speed on MB in memory (0: skip)")
    args = ap.parse_args(argv)

    result: dict = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    if args.algorithms:
        result["hashlib_gb_per_s"] = algorithms(args.algorithms)
        print("hashlib, one thread, in memory: "
              + ", ".join(f"{k} {v:.2f} GB/s" for k, v in result["hashlib_gb_per_s"].items()))
    if not args.checkpoint:
        Path("bench_fingerprint.json").write_text(json.dumps(result, indent=2))
        return 0

    cache = Path(tempfile.mkdtemp(prefix="fe-fp-cache-"))
    os.environ["FRANKENEVAL_FINGERPRINT_CACHE"] = str(cache)
    from frankeneval.weights.checkpoint import Checkpoint

    ckpt = Checkpoint.open(args.checkpoint)
    shards = [ckpt.path / s for s in ckpt.shards]
    size = sum(p.stat().st_size for p in shards)
    result.update(checkpoint=str(ckpt.path), shards=len(shards), bytes=size, runs=[])
    print(f"{ckpt.path}: {len(shards)} shard(s), {size / 1e9:.2f} GB")
    rows = []
    for r in range(args.repeats):
        shutil.rmtree(cache, ignore_errors=True)
        dropped = False if args.no_drop else _evict(shards)
        c = Checkpoint.open(args.checkpoint)  # headers parsed outside the timing
        t0 = time.perf_counter()
        cold = c.fingerprint()
        t_cold = time.perf_counter() - t0
        c = Checkpoint.open(args.checkpoint)
        t0 = time.perf_counter()
        warm = c.fingerprint()
        t_warm = time.perf_counter() - t0
        assert cold == warm
        shutil.rmtree(cache, ignore_errors=True)  # data now in the page cache: pure hashing
        t0 = time.perf_counter()
        c.fingerprint()
        t_hot = time.perf_counter() - t0
        run = {"repeat": r, "cold_s": t_cold, "cold_from_disk": dropped, "hot_page_cache_s": t_hot, "warm_s": t_warm,
               "cold_gb_per_s": size / t_cold / 1e9, "hot_gb_per_s": size / t_hot / 1e9}
        result["runs"].append(run)
        rows.append(run)
    shutil.rmtree(cache, ignore_errors=True)
    print("| repeat | cold (disk) | cold (page cache) | warm (cache hit) |")
    print("| --- | --- | --- | --- |")
    for run in rows:
        print(f"| {run['repeat']} | {run['cold_s']:.2f} s ({run['cold_gb_per_s']:.2f} GB/s) | "
              f"{run['hot_page_cache_s']:.2f} s ({run['hot_gb_per_s']:.2f} GB/s) | {run['warm_s'] * 1e3:.1f} ms |")
    Path("bench_fingerprint.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
