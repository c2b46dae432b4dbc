"""Content fingerprints of weight files: SHA-256 of every byte, cached per file.

A checkpoint's fingerprint (:meth:`frankeneval.weights.checkpoint.Checkpoint.fingerprint`) is built from the
SHA-256 of each of its weight files (header and tensor bytes), so two checkpoints with the same shard names,
sizes, mtimes and headers but different tensors never share one. SHA-256 is the fastest of hashlib's strong
hashes on current x86 CPUs (SHA-NI; see bench/bench_fingerprint.py and BENCHMARKS.md), so the historical key
name ``weights_sha256`` is kept.

Hashing a 15 GB checkpoint takes seconds to tens of seconds, so a file's digest is cached in
``<frankeneval cache>/fingerprints/`` (``$FRANKENEVAL_FINGERPRINT_CACHE`` overrides) keyed by its resolved path,
device, inode, size, ``mtime_ns`` and ``ctime_ns``. ``ctime`` is in the key because a file rewritten in place
with its mtime restored (``os.utime``, ``touch -d``, ``cp -p``/``rsync -t`` over it) keeps path, inode, size and
mtime, but the kernel always moves its ctime. One small JSON file per entry, written atomically
(:func:`frankeneval.core.results.write_json_atomic`), so concurrent runs never corrupt the cache; an unreadable
or unwritable cache only costs a re-hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from frankeneval.core.paths import default_cache_dir
from frankeneval.core.results import write_json_atomic

ALGORITHM = "sha256"
CACHE_VERSION = 1
_BUFFER = 4 << 20  # 4 MiB reads: a few MB of RSS however large the file


def fingerprint_cache_dir() -> Path:
    """``$FRANKENEVAL_FINGERPRINT_CACHE`` or ``<frankeneval cache>/fingerprints``."""
    env = os.environ.get("FRANKENEVAL_FINGERPRINT_CACHE")
    if env:
        return Path(env).expanduser()
    return default_cache_dir() / "fingerprints"


def _hash_file(path: Path) -> str:
    """SHA-256 of every byte of ``path`` (hashlib releases the GIL, so several files hash in parallel)."""
    h = hashlib.new(ALGORITHM)
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _key(path: Path) -> tuple[Path, dict]:
    real = path.resolve()
    st = real.stat()
    stamp = {"path": str(real), "dev": st.st_dev, "inode": st.st_ino, "size": st.st_size,
             "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}
    return real, stamp


def file_digest(path: str | os.PathLike, *, cache: bool = True) -> str:
    """The SHA-256 hex digest of the file ``path`` (symlinks followed), from the cache when its stamp matches."""
    real, stamp = _key(Path(path))
    entry = fingerprint_cache_dir() / (
        hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:32] + ".json"
    )
    if cache:
        try:
            rec = json.loads(entry.read_text())
            if rec.get("stamp") == stamp and rec.get("version") == CACHE_VERSION and rec.get("algorithm") == ALGORITHM:
                return str(rec["digest"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    digest = _hash_file(real)
    if _key(real)[1] != stamp:  # changed while we read it: do not cache a digest of a moving target
        return digest
    if cache:
        try:
            write_json_atomic(
                entry, {"version": CACHE_VERSION, "algorithm": ALGORITHM, "stamp": stamp, "digest": digest}
            )
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
    return digest


def file_digests(paths: Sequence[str | os.PathLike], *, cache: bool = True, workers: int | None = None) -> list[str]:
    """:func:`file_digest` of each path, hashed in parallel threads (one file per thread)."""
    paths = list(paths)
    workers = max(1, min(len(paths), workers or os.cpu_count() or 1))
    if workers == 1:
        return [file_digest(p, cache=cache) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: file_digest(p, cache=cache), paths))


# -- the content identity of a run's inputs (run-store headers, transfer cells) --------------------------------
def model_fingerprint(ref: str | os.PathLike, *, allow_pickle: bool = True) -> str | None:
    """The ``weights_sha256`` of the checkpoint ``ref`` (a local folder or a hub id in the cache), as
    :meth:`frankeneval.weights.checkpoint.Checkpoint.fingerprint` computes it (every byte, cached per file); None
    when ``ref`` is not a checkpoint on disk (an in-memory model)."""
    from frankeneval.errors import FrankenevalError
    from frankeneval.weights.checkpoint import Checkpoint

    try:
        return str(Checkpoint.open(ref, allow_pickle=allow_pickle).fingerprint()["weights_sha256"])
    except (FrankenevalError, OSError):
        return None


def data_fingerprint(rows: object, files: Sequence[str | os.PathLike] = ()) -> str:
    """SHA-256 of the data a run reads: ``rows`` (the selected rows' fields, as canonical JSON) and the content of
    every file of ``files`` in order (:func:`file_digests`; paths are not part of it, so a moved copy is equal)."""
    h = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str, ensure_ascii=False).encode())
    for digest in file_digests(files) if files else ():
        h.update(f"\n{digest}".encode())
    return h.hexdigest()


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 of a data folder's content: every regular file under it (hidden entries skipped), as its path
    relative to ``folder`` and its :func:`file_digest` (cached per file, so a rerun rehashes only changed files)."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    h = hashlib.sha256()
    for path, digest in zip(files, file_digests(files) if files else ()):
        h.update(f"{path.relative_to(root).as_posix()}\0{digest}\n".encode())
    return h.hexdigest()
