"""Lazy access to a lineage member's weights: list tensors without loading them, read one at a time.

A :class:`Checkpoint` is opened from a local directory or a hub id (resolved through huggingface_hub's
cache). It is the one door to the weights on disk: :meth:`Checkpoint.locations` says where every tensor's bytes
are (file, absolute offset, length, dtype, shape), parsed once per shard by
:func:`frankeneval.weights.safetensors_file.read_header` and checked against the file; tensor data is read on demand
from those locations (:mod:`frankeneval.weights.tensor_stream`), one tensor at a time, so three 7B checkpoints never
sit in RAM together. Pickle shards (``.bin``, only with ``allow_pickle``) are read through ``torch.load``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from frankeneval.errors import (
    ArchitectureMismatch,
    CheckpointNotFound,
    CorruptCheckpoint,
    MissingShard,
    UnsafeWeights,
)
from frankeneval.weights.architecture import Architecture, architecture_for_config
from frankeneval.weights.layermap import LayerMap
from frankeneval.weights.safetensors_file import (
    DTYPE_SIZES,
    TORCH_DTYPES,
    SafetensorsHeader,
    TensorLocation,
    read_header,
    torch_dtype,  # noqa: F401 - re-exported
)
from frankeneval.weights.tensor_stream import read_tensor

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"

# Files a lineage member needs besides its weights (copied by splice, downloaded by resolve).
METADATA_PATTERNS = ("*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken")

@dataclass(frozen=True)
class TensorInfo:
    """Shape, dtype and location of one stored tensor (no data)."""

    name: str  # as stored in the file
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shard: str  # file name within the checkpoint directory

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES.get(self.dtype, 4)


def resolve(
    ref: str | os.PathLike, *, revision: str | None = None, token: str | None = None
) -> tuple[Path, str, str | None]:
    """Local directory for a lineage member: ``(path, source_id, revision)``.

    ``ref`` is a local directory or a hub id. Hub ids go through huggingface_hub's cache
    (``snapshot_download``); offline (``HF_HUB_OFFLINE=1`` or no network) only the cache is consulted, and a
    miss raises :class:`CheckpointNotFound` naming the id and how to point at a local copy.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve(), str(path.resolve()), None
    ref = str(ref)
    if path.exists():
        raise CheckpointNotFound(f"{ref} is a file, not a checkpoint directory")
    if _looks_like_path(ref):
        raise CheckpointNotFound(f"no such local checkpoint directory: {path}")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import HFValidationError
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointNotFound(f"cannot resolve hub id {ref!r}: huggingface_hub is not installed") from exc
    patterns = [*METADATA_PATTERNS, "*.safetensors"]
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    attempts = [True] if offline else [False, True]
    last_error: Exception | None = None
    for local_only in attempts:
        try:
            local = snapshot_download(
                ref, revision=revision, token=token, allow_patterns=patterns, local_files_only=local_only
            )
            return Path(local), ref, revision or _snapshot_revision(Path(local))
        except HFValidationError as exc:
            reason = " ".join(str(exc).split())
            raise CheckpointNotFound(
                f"no such local checkpoint directory: {path}, and {ref!r} is not a valid hub id either ({reason})"
            ) from None
        except Exception as exc:  # network errors, missing repo, missing cache entry
            last_error = exc
    if Path(ref.split("/", 1)[0]).is_dir():  # "runs/x" with a local runs/: surely a mistyped path
        raise CheckpointNotFound(f"no such local checkpoint directory: {path} (nor is {ref!r} a hub id in the cache)")
    detail = " ".join(f"{type(last_error).__name__}: {last_error}".split())
    raise CheckpointNotFound(
        f"could not find {ref!r}: it is not a local directory and it is not in the Hugging Face cache"
        f"{' (HF_HUB_OFFLINE=1)' if offline else ' and the hub could not be reached'}. "
        f"Download it on a machine with network access (`huggingface-cli download {ref}`) and pass the "
        f"local directory instead, or set HF_HOME to a cache that holds it. ({detail})"
    )


def _looks_like_path(ref: str) -> bool:
    """True when ``ref`` can only be meant as a local path, not a hub id ``org/name``: it starts with ``.``,
    ``/`` or ``~``, has a backslash, or has not exactly one ``/``. (``org/name`` with a local folder ``org`` is
    still tried as a hub id first, and reported as a missing local directory when it is not one.)"""
    return ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") != 1 or os.path.isabs(ref)


def _snapshot_revision(path: Path) -> str | None:
    """The commit hash of a hub cache snapshot directory (its name), if it is one."""
    return path.name if path.parent.name == "snapshots" else None


class Checkpoint:
    """One lineage member on disk: config, tensor index, lazy per-tensor reads."""

    def __init__(
        self, path: Path, *, source_id: str | None = None, revision: str | None = None, allow_pickle: bool = False
    ):
        self.path = Path(path)
        self.source_id = source_id or str(self.path)
        self.revision = revision
        self.allow_pickle = allow_pickle
        self._handles: dict[str, Any] = {}
        self._headers: dict[str, SafetensorsHeader] = {}
        self._weight_map = self._read_weight_map()
        self._locations  # parse and check every safetensors header now, so a bad file fails at open

    @classmethod
    def open(
        cls,
        ref: str | os.PathLike,
        *,
        revision: str | None = None,
        allow_pickle: bool = False,
        token: str | None = None,
    ) -> Checkpoint:
        """Open a lineage member from a local directory or a hub id."""
        path, source_id, rev = resolve(ref, revision=revision, token=token)
        return cls(path, source_id=source_id, revision=rev, allow_pickle=allow_pickle)

    # -- index ------------------------------------------------------------------------------
    def _read_weight_map(self) -> dict[str, str]:
        p = self.path
        if (p / SAFETENSORS_INDEX).is_file():
            _check_inside(p, SAFETENSORS_INDEX)
            weight_map = _read_index(p / SAFETENSORS_INDEX)
        elif (p / SAFETENSORS_SINGLE).is_file():
            _check_inside(p, SAFETENSORS_SINGLE)
            weight_map = {k: SAFETENSORS_SINGLE for k in sorted(self._header(SAFETENSORS_SINGLE).tensors)}
        elif (p / PICKLE_INDEX).is_file() or (p / PICKLE_SINGLE).is_file():
            if not self.allow_pickle:
                raise UnsafeWeights(
                    f"{self.source_id} holds only pickle weights (pytorch_model*.bin), which can run arbitrary "
                    "code when loaded. Convert it to safetensors, or pass --allow-pickle (the franken_qwen wrapper: "
                    "model arg allow_pickle=true) if you trust its source."
                )
            if (p / PICKLE_INDEX).is_file():
                _check_inside(p, PICKLE_INDEX)
                weight_map = _read_index(p / PICKLE_INDEX)
            else:
                _check_inside(p, PICKLE_SINGLE)
                state = torch.load(p / PICKLE_SINGLE, map_location="cpu", mmap=True, weights_only=True)
                weight_map = {k: PICKLE_SINGLE for k in state}
        else:
            raise CheckpointNotFound(
                f"{self.source_id}: no weights found (expected {SAFETENSORS_INDEX} or {SAFETENSORS_SINGLE})"
            )
        for shard in dict.fromkeys(weight_map.values()):
            _check_plain_name(p, shard)
            _check_inside(p, shard)
        missing = sorted({s for s in weight_map.values() if not (p / s).is_file()})
        if missing:
            raise MissingShard(
                f"{self.source_id}: the weight index names {len(missing)} shard file(s) that are not on disk: "
                + ", ".join(missing[:5])
            )
        return weight_map

    @property
    def names(self) -> list[str]:
        """Tensor names as stored (hub scheme for hub checkpoints)."""
        return list(self._weight_map)

    @property
    def shards(self) -> list[str]:
        """Weight files, in index order."""
        return list(dict.fromkeys(self._weight_map.values()))

    def shard_of(self, name: str) -> str:
        return self._weight_map[self._stored_name(name)]

    def _stored_name(self, name: str) -> str:
        if name in self._weight_map:
            return name
        canon = self.architecture.canonical_name(name)
        if canon in self._canonical_to_stored:
            return self._canonical_to_stored[canon]
        raise KeyError(f"{self.source_id} has no tensor {name!r}")

    @cached_property
    def _canonical_to_stored(self) -> dict[str, str]:
        return {self.architecture.canonical_name(n): n for n in self._weight_map}

    @cached_property
    def config(self) -> dict[str, Any]:
        cfg = self.path / "config.json"
        if not cfg.is_file():
            return {}
        _check_inside(self.path, "config.json")
        return read_config(cfg)

    @cached_property
    def architecture(self) -> Architecture:
        """The family's description (:mod:`frankeneval.weights.architecture`), chosen by the config's model_type."""
        return architecture_for_config(self.config)

    @cached_property
    def layer_map(self) -> LayerMap:
        """The layer map of this checkpoint (stack sizes from the config when it states them)."""
        arch = self.architecture
        n_vis, n_llm = arch.layer_counts(self.config)
        return LayerMap.from_names(self.names, n_vision_blocks=n_vis, n_llm_layers=n_llm, architecture=arch)

    # -- where the bytes are ----------------------------------------------------------------
    def _header(self, shard: str) -> SafetensorsHeader:
        """The checked header of one safetensors shard (parsed once)."""
        h = self._headers.get(shard)
        if h is None:
            h = self._headers[shard] = read_header(self.path / shard)
        return h

    @cached_property
    def _locations(self) -> dict[str, TensorLocation]:
        out: dict[str, TensorLocation] = {}
        for shard in self.shards:
            if shard.endswith(".safetensors"):
                out.update(
                    (n, loc) for n, loc in self._header(shard).tensors.items() if self._weight_map.get(n) == shard
                )
        absent = [n for n, s in self._weight_map.items() if s.endswith(".safetensors") and n not in out]
        if absent:
            raise MissingShard(
                f"{self.source_id}: tensors listed in the index but absent from their shard: {absent[:5]}"
            )
        return out

    def locations(self) -> dict[str, TensorLocation]:
        """Stored name -> where its bytes are, for every tensor in a safetensors shard (headers only, checked)."""
        return dict(self._locations)

    def location(self, name: str) -> TensorLocation | None:
        """Where tensor ``name`` (either naming scheme) is stored; None for a tensor in a pickle shard."""
        return self._locations.get(self._stored_name(name))

    def tensor_infos(self) -> dict[str, TensorInfo]:
        """Shape and dtype of every tensor, read from the file headers only (no tensor data)."""
        infos: dict[str, TensorInfo] = {}
        for shard in self.shards:
            if shard.endswith(".safetensors"):
                for name, loc in self._header(shard).tensors.items():
                    if self._weight_map.get(name) == shard:
                        infos[name] = TensorInfo(name, loc.shape, loc.dtype, shard)
            else:
                state = torch.load(self.path / shard, map_location="meta", mmap=True, weights_only=True)
                for name, t in state.items():
                    infos[name] = TensorInfo(name, tuple(t.shape), _torch_to_st_dtype(t.dtype), shard)
        absent = [n for n in self._weight_map if n not in infos]
        if absent:
            raise MissingShard(
                f"{self.source_id}: tensors listed in the index but absent from their shard: {absent[:5]}"
            )
        return infos

    # -- reads ------------------------------------------------------------------------------
    def _pickle_shard(self, shard: str) -> dict[str, torch.Tensor]:
        h = self._handles.get(shard)
        if h is None:
            h = self._handles[shard] = torch.load(self.path / shard, map_location="cpu", mmap=True, weights_only=True)
        return h

    def read(self, name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """Read one tensor (either naming scheme), optionally moving / casting it."""
        stored = self._stored_name(name)
        loc = self._locations.get(stored)
        t = read_tensor(loc) if loc is not None else self._pickle_shard(self._weight_map[stored])[stored]
        if dtype is not None or str(device) != "cpu":
            t = t.to(device=device, dtype=dtype or t.dtype, non_blocking=True)
        return t

    def iter_tensors(self, names: Iterable[str] | None = None, **read_kwargs) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` one at a time, shard by shard (file order) when ``names`` is None."""
        if names is None:
            names = sorted(self._weight_map, key=lambda n: (self.shards.index(self._weight_map[n]), n))
        for n in names:
            yield n, self.read(n, **read_kwargs)

    def read_bytes(self, name: str):
        """The stored bytes of one tensor as a uint8 numpy array (pickle shards: its data, C order)."""
        t = self.read(name).contiguous()
        return t.reshape(-1).view(torch.uint8).numpy()

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- provenance -------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What identifies this checkpoint: source id, revision, and a hash of its weight bytes.

        ``weights_sha256`` is the SHA-256 of the weight index (tensor name -> shard) and the SHA-256 of every
        byte of every shard (:mod:`frankeneval.weights.fingerprint`), so two checkpoints that differ in any tensor
        byte never share it, whatever their names, sizes and mtimes. Each file's digest is cached by its
        (resolved path, device, inode, size, mtime_ns, ctime_ns): the first call on a 15 GB checkpoint reads it
        once, later ones cost a ``stat`` per shard.
        """
        from frankeneval.weights.fingerprint import ALGORITHM, file_digests

        digests = file_digests([self.path / s for s in self.shards])
        h = hashlib.sha256()
        h.update(json.dumps(self._weight_map, sort_keys=True).encode())
        for shard, digest in zip(self.shards, digests):
            h.update(f"\n{shard}:{digest}".encode())
        return {"source": self.source_id, "revision": self.revision, "path": str(self.path),
                "weights_sha256": h.hexdigest(), "weights_hash": f"{ALGORITHM}-content-v1"}

    def __repr__(self) -> str:
        return f"Checkpoint({self.source_id!r}, {len(self._weight_map)} tensors in {len(self.shards)} shard(s))"


# Files that hold a tokenizer's vocabulary (any one is enough; tokenizer_config.json alone is not).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "*.tiktoken")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's ``config.json`` as a JSON object, or one :class:`CorruptCheckpoint` line naming the file and
    what is wrong (not JSON, not an object, not UTF-8)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CorruptCheckpoint(f"{path} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); "
                                "restore the checkpoint's config.json") from None
    except UnicodeDecodeError:
        raise CorruptCheckpoint(f"{path} is not UTF-8 text; restore the checkpoint's config.json") from None
    if not isinstance(data, dict):
        raise CorruptCheckpoint(f"{path} is not a JSON object (it is a {type(data).__name__}); "
                                "restore the checkpoint's config.json")
    return data


def check_metadata_json(path: str | os.PathLike) -> None:
    """A local checkpoint folder's ``config.json`` (:func:`read_config`) and every other top-level ``*.json`` file a
    loader reads (tokenizer, processor, generation configs) parse as JSON; one :class:`CorruptCheckpoint` line
    naming the first that does not. A hub id (not a local folder) is left to its loader."""
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        return
    if (root / "config.json").is_file():
        read_config(root / "config.json")
    for f in sorted(root.glob("*.json")):
        if f.name in ("config.json", SAFETENSORS_INDEX, PICKLE_INDEX) or not f.is_file():
            continue
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptCheckpoint(f"{f} is not valid JSON ({' '.join(str(exc).split())[:200]}); restore that file "
                                    "of the checkpoint") from None


def tokenizer_files(path: str | os.PathLike) -> list[str]:
    """The tokenizer vocabulary files (:data:`TOKENIZER_FILES`) in a local checkpoint folder; empty when it has none."""
    root = Path(str(path)).expanduser()
    return sorted({f.name for pat in TOKENIZER_FILES for f in root.glob(pat) if f.is_file()})


def _check_plain_name(root: Path, shard: str) -> None:
    """A weight index's shard name must be a plain file name inside the checkpoint (no folder, no ``..``)."""
    if not shard or shard in (".", "..") or "/" in shard or "\\" in shard or "\0" in shard or os.path.isabs(shard):
        raise CorruptCheckpoint(
            f"{root}: the weight index names shard {shard!r}, which is not a plain file name inside the checkpoint"
        )


def inside_checkpoint(root: str | os.PathLike, name: str) -> bool:
    """True when ``root/name``, symlinks followed, stays inside the checkpoint folder ``root``.

    A huggingface_hub snapshot (``<repo>/snapshots/<rev>/``) holds symlinks into its own repo's ``blobs/``
    folder (``../../blobs/<hash>``): those count as inside; a link into another repo's blobs does not.
    """
    root = Path(root).resolve()
    target = (root / name).resolve()
    if target.is_relative_to(root):
        return True
    return root.parent.name == "snapshots" and target.parent == root.parent.parent / "blobs"


def _check_inside(root: Path, name: str) -> None:
    if not inside_checkpoint(root, name):
        raise CorruptCheckpoint(
            f"{root}: {name} is a symlink that leaves the checkpoint folder (to {(Path(root) / name).resolve()}); "
            "copy the file into the checkpoint instead"
        )


def _read_index(path: Path) -> dict[str, str]:
    """The ``weight_map`` of a weights index file (name -> shard), or a one-line :class:`CorruptCheckpoint`."""
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"{path}: weights index is not valid JSON ({exc})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CorruptCheckpoint(f"{path}: weights index has no \"weight_map\" object of tensor name -> shard file")
    return dict(weight_map)


def _torch_to_st_dtype(dtype: torch.dtype) -> str:
    for k, v in TORCH_DTYPES.items():
        if v == dtype:
            return k
    return str(dtype)


# -- compatibility --------------------------------------------------------------------------
@dataclass
class CompatibilityReport:
    """Result of comparing two or three checkpoints tensor by tensor (on canonical names)."""

    labels: list[str]
    missing: list[str]  # "label lacks X (present in other)"
    shape_mismatches: list[str]
    dtype_differences: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.shape_mismatches


def compare_architectures(
    checkpoints: Sequence[Checkpoint], labels: Sequence[str] | None = None
) -> CompatibilityReport:
    """Compare tensor names (canonical), shapes and dtypes of several checkpoints (headers only)."""
    labels = list(labels or [f"checkpoint{i}" for i in range(len(checkpoints))])
    infos = [{c.architecture.canonical_name(k): v for k, v in c.tensor_infos().items()} for c in checkpoints]
    all_names = sorted(set().union(*[set(i) for i in infos]))
    missing, shapes, dtypes = [], [], []
    for name in all_names:
        present = [lab for lab, info in zip(labels, infos) if name in info]
        for lab, info in zip(labels, infos):
            if name not in info:
                missing.append(f"{lab} lacks {name} (present in {', '.join(present)})")
        held = [(lab, info[name]) for lab, info in zip(labels, infos) if name in info]
        if len({h.shape for _, h in held}) > 1:
            shapes.append(f"{name}: " + " vs ".join(f"{lab} {list(h.shape)}" for lab, h in held))
        if len({h.dtype for _, h in held}) > 1:
            dtypes.append(f"{name}: " + " vs ".join(f"{lab} {h.dtype}" for lab, h in held))
    return CompatibilityReport(labels, missing, shapes, dtypes)


def check_compatible(
    checkpoints: Sequence[Checkpoint], labels: Sequence[str] | None = None, *, show: int = 8
) -> CompatibilityReport:
    """Raise :class:`ArchitectureMismatch` listing the first mismatches unless the checkpoints share
    every tensor name and shape. dtype differences are allowed and reported in the returned report."""
    report = compare_architectures(checkpoints, labels)
    if not report.ok:
        problems = report.missing + report.shape_mismatches
        lines = "\n  ".join(problems[:show])
        more = f"\n  ... and {len(problems) - show} more" if len(problems) > show else ""
        raise ArchitectureMismatch(
            f"checkpoints {', '.join(report.labels)} have different architectures "
            f"({len(report.missing)} missing tensor(s), {len(report.shape_mismatches)} shape mismatch(es)):"
            f"\n  {lines}{more}"
        )
    return report
