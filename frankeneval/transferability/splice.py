"""Materialize a Frankenstein checkpoint from a :class:`~frankeneval.transferability.mergespec.MergeSpec`, and check
one.

:func:`materialize` writes an ordinary hub-layout checkpoint (``model-0000i-of-0000n.safetensors`` +
``model.safetensors.index.json`` + the host's config / tokenizer / processor / chat template / generation
config) that transformers, lmms-eval and vLLM load like any other model, plus ``frankeneval_provenance.json``
(the resolved spec, source ids / revisions / fingerprints, which tensor came from where, frankeneval
version).

Tensors are never decoded: each output shard's safetensors header is written first, then every tensor's
bytes are copied straight from its source shard's byte range (``os.copy_file_range`` -- in-kernel, no
user-space buffer; a bounded read/write loop where unavailable). So splicing runs at ``cp`` speed with a few
MB of memory. The write goes to a temporary directory next to ``out_dir`` and is renamed into place
(:func:`frankeneval.core.results.staged_directory`), so an
interrupted run leaves nothing at ``out_dir``; a rerun with the same spec and unchanged sources is a no-op.

**Computed tensors.** A spec's ``transforms`` (:class:`~frankeneval.transferability.mergespec.Transform`: the
reference's noise ablation and interpolation variants) make the tensors they select computed rather than copied:
each is read, rewritten by its steps in order, and written in its stored dtype and shape (one tensor in memory at
a time). The arithmetic is the reference's (``scripts/transferability_test.py``, ``ModelManager.get_model``), the
same torch expressions in the tensor's own dtype (the reference loads bfloat16, the dtype of the Qwen2.5-VL
checkpoints; a donor of another dtype is cast to the tensor's first):

* noise (:func:`noised`): ``std = W.std().item()`` (every element of the tensor, unbiased, torch's default),
  ``eps * std`` with ``eps ~ N(0, 1)``, and ``(1 - r) * W + r * (eps * std)``. ``eps`` is drawn in float32 by a
  ``torch.Generator`` seeded with :func:`tensor_seed` (the spec's seed and the tensor's name) and cast to the
  tensor's dtype, so each tensor's noise is fixed by the seed and its name alone (the reference draws unseeded
  ``torch.randn_like``);
* interpolation (:func:`interpolated`): ``(1 - a) * W + a * W_donor``, the donor's tensor of the same decoder
  layer and path (``alpha`` 1: "replaced by").

The provenance records every computed tensor's steps under ``computed`` (seed, the tensor's generator seed, alpha,
the donor and its tensor); its ``tensors`` entry names the source the tensor was read from before the steps.

:func:`verify` re-reads every tensor of a materialized checkpoint and compares its bytes with its declared
source (bit-exact); a computed tensor is recomputed from its recorded sources and steps and compared bit for bit.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import math
import mmap
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frankeneval import __version__
from frankeneval.core.locks import output_lock
from frankeneval.core.paths import default_cache_dir
from frankeneval.core.results import (
    discard_directory,
    foreign_entries,
    refuse_inputs,
    staged_directory,
    write_all,
    write_json_atomic,
)
from frankeneval.errors import ArchitectureMismatch, FrankenevalError, SpecError
from frankeneval.transferability.mergespec import MergeSpec, Transform, resolve_ref, variant_phrase
from frankeneval.weights.checkpoint import (
    METADATA_PATTERNS,
    SAFETENSORS_INDEX,
    Checkpoint,
    check_compatible,
    inside_checkpoint,
)
from frankeneval.weights.layermap import canonical_name
from frankeneval.weights.safetensors_file import DTYPE_SIZES, TensorLocation, pack_shards, read_header

PROVENANCE = "frankeneval_provenance.json"
DEFAULT_SHARD_BYTES = 5 * 1024**3  # like the hub's 7B checkpoints (about 4-5 GB per shard)
FORMAT_VERSION = 1  # bump when the bytes written for the same spec + sources change
TRANSFORMS_VERSION = 1  # bump when the bytes computed for the same transforms change (splices with transforms only)
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_COPY_CHUNK = 64 * 1024**2
# Files of a source that are never copied into a splice (weights index, our own stamps).
_NOT_COPIED = {SAFETENSORS_INDEX, "pytorch_model.bin.index.json", PROVENANCE, "frankeneval_lineage.json"}


class SpliceError(FrankenevalError):
    """A splice could not be materialized or checked."""


# -- reading source shards ---------------------------------------------------------------------
def _locate(ckpt: Checkpoint) -> dict[str, TensorLocation | None]:
    """canonical name -> the Checkpoint's byte location of every tensor (None for tensors in pickle shards)."""
    locations = ckpt.locations()
    return {canonical_name(n): locations.get(n) for n in ckpt.names}


# -- the plan ------------------------------------------------------------------------------------
@dataclass
class SplicePlan:
    """Every output tensor with its source, resolved against the opened source checkpoints."""

    spec: MergeSpec
    checkpoints: dict[str, Checkpoint]
    tensors: dict[str, str]  # output (hub) name -> source name, in host file order
    locations: dict[str, dict[str, TensorLocation | None]]  # source -> canonical name -> bytes
    fingerprints: dict[str, dict[str, Any]]
    build_hash: str
    dtype_notes: list[str] = field(default_factory=list)
    computed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # output name -> transform steps

    def stored(self, name: str) -> TensorLocation | None:
        return self.locations[self.tensors[name]][name]

    def counts(self) -> dict[str, int]:
        """Number of output tensors per source."""
        out: dict[str, int] = {}
        for s in self.tensors.values():
            out[s] = out.get(s, 0) + 1
        return out

    @property
    def total_bytes(self) -> int:
        return sum(self._nbytes(n) for n in self.tensors)

    def _nbytes(self, name: str) -> int:
        st = self.stored(name)
        if st is not None:
            return st.nbytes
        info = self.checkpoints[self.tensors[name]].tensor_infos()
        stored = {canonical_name(k): v for k, v in info.items()}[name]
        return stored.numel * DTYPE_SIZES.get(stored.dtype, 4)


def open_sources(spec: MergeSpec, *, allow_pickle: bool = False) -> dict[str, Checkpoint]:
    """Open every source the spec uses (host first); hub ids resolve through the Hugging Face cache.
    Pickle (``.bin``) sources only with ``allow_pickle`` (``--allow-pickle``)."""
    out = {}
    for name in spec.used_sources():
        ref = resolve_ref(spec.sources[name])
        out[name] = Checkpoint.open(ref, revision=spec.revisions.get(name), allow_pickle=allow_pickle)
    return out


def plan_splice(
    spec: MergeSpec, checkpoints: dict[str, Checkpoint] | None = None, *, allow_pickle: bool = False
) -> SplicePlan:
    """Open the sources, refuse incompatible ones, and decide the source of every output tensor."""
    ckpts = checkpoints or open_sources(spec, allow_pickle=allow_pickle)
    names = [n for n in ckpts if n in spec.assigned_sources()]  # donors only: checked tensor by tensor instead
    labels = [f"{n} ({spec.sources[n]})" for n in names]
    if len(names) > 1:
        report = check_compatible([ckpts[n] for n in names], labels)
        dtype_notes = list(report.dtype_differences)
    else:
        dtype_notes = []
    host = ckpts[spec.host]
    lmap = host.layer_map
    if lmap.n_llm_layers != spec.n_layers:
        raise ArchitectureMismatch(
            f"the spec is written for {spec.n_layers} LLM layers but host {spec.host} ({spec.sources[spec.host]}) "
            f"has {lmap.n_llm_layers}"
        )
    locations = {n: _locate(c) for n, c in ckpts.items()}
    host_loc = locations[spec.host]
    order = sorted(host_loc, key=lambda k: _host_order_key(host, host_loc[k], k))
    tensors = {name: spec.source_of(lmap.role(name)) for name in order}
    _check_tied_embeddings(spec, host, tensors)
    fingerprints = {n: {"ref": spec.sources[n], **c.fingerprint()} for n, c in ckpts.items()}
    build = {
        "format": FORMAT_VERSION,
        "spec": spec.spec_hash(),
        "sources": {n: fp["weights_sha256"] for n, fp in fingerprints.items()},
    }
    if spec.transforms:
        build["transforms"] = TRANSFORMS_VERSION
    build_hash = hashlib.sha256(json.dumps(build, sort_keys=True).encode()).hexdigest()
    plan = SplicePlan(spec, ckpts, tensors, locations, fingerprints, build_hash, dtype_notes)
    for i, transform in enumerate(spec.transforms):
        _plan_transform(plan, i, transform)
    return plan


# -- computed tensors ------------------------------------------------------------------------------
def tensor_seed(seed: int, name: str) -> int:
    """The generator seed of one tensor's noise: the first 8 bytes (little-endian) of SHA-256 of
    ``"<seed>:<canonical tensor name>"``, top bit cleared."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def noised(w, ratio: float, seed: int):
    """``(1 - ratio) * w + ratio * (eps * std(w))`` in ``w``'s dtype: the reference's noise ablation
    (``std = weight.std().item()``, ``random_weight = torch.randn_like(weight) * std``,
    ``(1 - noise_ratio) * weight + noise_ratio * random_weight``), with ``eps`` drawn in float32 from a generator
    seeded with ``seed`` (:func:`tensor_seed`) and cast to ``w``'s dtype."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    eps = torch.randn(tuple(w.shape), generator=generator, dtype=torch.float32).to(w.dtype)
    std = w.std().item()
    random_weight = eps * std
    return (1 - ratio) * w + ratio * random_weight


def interpolated(w, donor, alpha: float):
    """``(1 - alpha) * w + alpha * donor`` in ``w``'s dtype (the donor cast to it): the reference's interpolation
    (``(1 - alpha) * base_state[key] + alpha * donor_state[key]``)."""
    return (1 - alpha) * w + alpha * donor.to(w.dtype)


def compute_tensor(checkpoints: Mapping[str, Checkpoint], source: str, name: str, steps: Sequence[Mapping[str, Any]]):
    """Tensor ``name`` of ``checkpoints[source]`` rewritten by its transform ``steps`` (as the provenance records
    them), contiguous, in its stored dtype and shape."""
    w = checkpoints[source].read(name)
    for step in steps:
        if step["op"] == "noise":
            w = noised(w, float(step["ratio"]), int(step["tensor_seed"]))
        elif step["op"] == "interpolate":
            w = interpolated(w, checkpoints[step["donor"]].read(step["donor_tensor"]), float(step["alpha"]))
        else:
            raise SpliceError(f"{name}: unknown transform step {step.get('op')!r}")
    return w.contiguous()


def _tensor_bytes(t) -> Any:
    import torch

    return t.reshape(-1).view(torch.uint8).numpy()


def _llm_match(arch, canonical: str) -> tuple[int, str] | None:
    """(decoder layer, path inside the layer) of a canonical LLM tensor name under ``arch``'s llm group."""
    for group in arch.groups:
        if group.section == "llm":
            hit = group.match(canonical)
            if hit is not None:
                return int(hit[0]), hit[1]
    return None


def _plan_transform(plan: SplicePlan, index: int, transform: Transform) -> None:
    """Add ``transform``'s step to every tensor it selects (``plan.computed``); refuse in one line a selection
    that holds no tensor, a tensor that is not floating point, or a donor that lacks a tensor or has another shape."""
    spec = plan.spec
    lmap = plan.checkpoints[spec.host].layer_map
    layers, comps = set(transform.layers), set(transform.components)
    what = f"transform {index + 1} ({transform.describe()})"
    selected: dict[str, int] = {}  # name -> unified layer
    for name in plan.tensors:
        role = lmap.role(name)
        if role.section == "llm" and role.block in layers and role.component in comps:
            selected[name] = int(role.layer)
    if not selected:
        raise SpecError(f"{what} selects no tensor of host {spec.host} ({spec.sources[spec.host]})")
    donor = donor_infos = donor_arch = None
    if transform.op == "interpolate":
        donor = plan.checkpoints[transform.donor]
        donor_arch = donor.architecture
        donor_infos = {donor_arch.canonical_name(k): v for k, v in donor.tensor_infos().items()}
        if not any(g.section == "llm" for g in donor_arch.groups):
            raise SpecError(f"{what}: donor {transform.donor} ({spec.sources[transform.donor]}) has no LLM layers "
                            f"({donor_arch.display_name})")
    missing: list[str] = []
    for name in selected:
        dtype, shape, _ = _entry(plan, name)
        if dtype not in _FLOAT_DTYPES:
            raise SpecError(f"{what}: {name} is {dtype}, not a floating-point tensor")
        if transform.op == "noise":
            if math.prod(shape) < 2:
                raise SpecError(f"{what}: {name} has {math.prod(shape)} element(s); its std is undefined")
            step = {"op": "noise", "transform": index + 1, "layer": selected[name], "ratio": transform.ratio,
                    "seed": transform.seed, "tensor_seed": tensor_seed(int(transform.seed), name)}
        else:
            hit = _llm_match(lmap.architecture, name)
            donor_name = None
            if hit is not None:
                group = next(g for g in donor_arch.groups if g.section == "llm")
                donor_name = group.expand(hit[0]) + hit[1]
            info = donor_infos.get(donor_name) if donor_name else None
            if info is None:
                missing.append(donor_name or name)
                continue
            if tuple(info.shape) != tuple(shape):
                raise SpecError(f"{what}: donor {transform.donor} tensor {info.name} has shape {list(info.shape)} but "
                                f"{name} has {list(shape)}")
            if info.dtype not in _FLOAT_DTYPES:
                raise SpecError(f"{what}: donor {transform.donor} tensor {info.name} is {info.dtype}, "
                                "not a floating-point tensor")
            if info.dtype != dtype:
                note = f"donor {transform.donor} {info.dtype} cast to {dtype} for interpolation"
                if note not in plan.dtype_notes:
                    plan.dtype_notes.append(note)
            step = {"op": "interpolate", "transform": index + 1, "layer": selected[name], "alpha": transform.alpha,
                    "donor": transform.donor, "donor_tensor": info.name}
        plan.computed.setdefault(name, []).append(step)
    if missing:
        depth = len({m[0] for n in donor_infos if (m := _llm_match(donor_arch, n)) is not None})
        raise SpecError(f"{what}: donor {transform.donor} ({spec.sources[transform.donor]}) lacks {len(missing)} of "
                        f"the {len(selected)} tensors it needs, e.g. {missing[0]} (the donor has {depth} LLM layers, "
                        f"the host {lmap.n_llm_layers})")


def _host_order_key(host: Checkpoint, st: TensorLocation | None, name: str) -> tuple:
    if st is None:
        return (str(host.shard_of(name)), 0, name)
    return (st.file.name, st.offset, name)


def _check_tied_embeddings(spec: MergeSpec, host: Checkpoint, tensors: dict[str, str]) -> None:
    tied = host.config.get("tie_word_embeddings", (host.config.get("text_config") or {}).get("tie_word_embeddings"))
    if tied and "lm_head.weight" not in tensors and spec.parts["lm_head"] != spec.parts["embeddings"]:
        raise SpecError(
            f"the host ties lm_head to the token embeddings (tie_word_embeddings), so lm_head cannot come from "
            f"{spec.parts['lm_head']} while embeddings come from {spec.parts['embeddings']}"
        )


# -- writing -------------------------------------------------------------------------------------
def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    """Append ``length`` bytes of ``src_fd`` from ``offset`` to ``dst_fd`` (at its current position)."""
    global _FAST_COPY
    done = 0
    if _FAST_COPY:
        try:
            while done < length:
                n = os.copy_file_range(src_fd, dst_fd, min(length - done, 1 << 30), offset + done)
                if n == 0:
                    raise SpliceError("source file ended early (truncated shard?)")
                done += n
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
            _FAST_COPY = False  # fall back for the rest of the process
    buf = bytearray(min(_COPY_CHUNK, max(length - done, 1)))
    view = memoryview(buf)
    while done < length:
        want = min(len(buf), length - done)
        n = os.preadv(src_fd, [view[:want]], offset + done)
        if n == 0:
            raise SpliceError("source file ended early (truncated shard?)")
        write_all(dst_fd, view[:n])
        done += n


_FAST_COPY = hasattr(os, "copy_file_range")


def _entry(plan: SplicePlan, name: str) -> tuple[str, tuple[int, ...], int]:
    st = plan.stored(name)
    if st is not None:
        return st.dtype, st.shape, st.nbytes
    src = plan.tensors[name]
    info = {canonical_name(k): v for k, v in plan.checkpoints[src].tensor_infos().items()}[name]
    return info.dtype, info.shape, info.numel * DTYPE_SIZES.get(info.dtype, 4)


def _write_shard(path: Path, names: list[str], plan: SplicePlan, fds: dict[Path, int], bar) -> int:
    """Write one safetensors shard: our own header, then each tensor's bytes copied from its source."""
    entries = [(n, *_entry(plan, n)) for n in names]
    # alignment: larger element sizes first (stable, so source-offset order is kept and reads stay sequential)
    entries.sort(key=lambda e: -DTYPE_SIZES.get(e[1], 1))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for n, dtype, shape, nbytes in entries:
        header[n] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, len(raw).to_bytes(8, "little") + raw)
        for n, _dtype, _shape, nbytes in entries:
            st = plan.stored(n)
            if n in plan.computed:
                data = _tensor_bytes(compute_tensor(plan.checkpoints, plan.tensors[n], n, plan.computed[n]))
                if data.nbytes != nbytes:
                    raise SpliceError(f"{n}: computed {data.nbytes} bytes, expected {nbytes}")
                write_all(fd, memoryview(data))
            elif st is not None:
                src_fd = fds.get(st.file)
                if src_fd is None:
                    src_fd = fds[st.file] = os.open(st.file, os.O_RDONLY)
                _copy_range(src_fd, fd, st.offset, nbytes)
            else:
                write_all(fd, plan.checkpoints[plan.tensors[n]].read_bytes(n))
            if bar is not None:
                bar.update(nbytes)
    finally:
        os.close(fd)
    return offset


def _copy_metadata(host_dir: Path, out: Path) -> list[str]:
    copied = []
    for p in sorted(host_dir.iterdir()):
        if not p.is_file() or p.name in _NOT_COPIED:
            continue
        if any(fnmatch.fnmatch(p.name, pat) for pat in METADATA_PATTERNS):
            if not inside_checkpoint(host_dir, p.name):
                raise SpliceError(f"{p} is a symlink that leaves the host checkpoint folder (to {p.resolve()}); "
                                  "copy the file into the checkpoint instead")
            shutil.copyfile(p, out / p.name)  # follows hub-cache symlinks (into the repo's own blobs/)
            copied.append(p.name)
    return copied


def _read_provenance(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None


def _holds(out_dir: Path, build_hash: str) -> bool:
    """True when ``out_dir`` is a complete splice of the same spec and source contents (:func:`splice_damage`)."""
    prov = _read_provenance(out_dir)
    if not prov or prov.get("build_hash") != build_hash or not (out_dir / SAFETENSORS_INDEX).is_file():
        return False
    for shard, size in (prov.get("shards") or {}).items():
        p = out_dir / shard
        if not p.is_file() or p.stat().st_size != size:
            return False
    return bool(prov.get("shards")) and not splice_damage(out_dir)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # one of them: a tokenizer transformers loads


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def splice_damage(out_dir: str | os.PathLike) -> list[str]:
    """What keeps the materialized splice ``out_dir`` from loading; [] when it is complete.

    Checked: a readable provenance; ``config.json`` parses as a JSON object; a tokenizer file is there; every file
    copied from the host is there (and, where the provenance records its SHA-256, unchanged); the weight index
    parses and every weight file it or the provenance lists is there, of the recorded size, with a loadable
    safetensors header. Headers and small files only: no tensor bytes are read."""
    from frankeneval.errors import CorruptCheckpoint

    out = Path(out_dir)
    prov = _read_provenance(out)
    if not isinstance(prov, dict):
        return [f"no readable {PROVENANCE}"]
    damage: list[str] = []
    try:
        if not isinstance(json.loads((out / "config.json").read_text(encoding="utf-8")), dict):
            damage.append("config.json is not a JSON object")
    except FileNotFoundError:
        damage.append("config.json is missing")
    except (OSError, ValueError) as exc:
        damage.append(f"config.json is unreadable ({getattr(exc, 'strerror', None) or exc})")
    if not any((out / t).is_file() for t in TOKENIZER_FILES):
        damage.append(f"no tokenizer ({' / '.join(TOKENIZER_FILES)})")
    sums = prov.get("metadata_sha256") or {}
    gone = [n for n in prov.get("metadata_from_host") or [] if n != "config.json" and not (out / n).is_file()]
    if gone:
        damage.append("missing host file(s): " + ", ".join(gone))
    changed = [n for n, h in sums.items() if (out / n).is_file() and _file_sha256(out / n) != h]
    if changed:
        damage.append("host file(s) changed since the splice was written: " + ", ".join(changed))
    try:
        index = json.loads((out / SAFETENSORS_INDEX).read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise ValueError("weight_map is not an object")
    except FileNotFoundError:
        return [*damage, f"{SAFETENSORS_INDEX} is missing"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [*damage, f"{SAFETENSORS_INDEX} is unreadable ({getattr(exc, 'strerror', None) or exc})"]
    sizes = prov.get("shards") or {}
    for shard in dict.fromkeys([*map(str, weight_map.values()), *sizes]):
        path = out / shard
        if not path.is_file():
            damage.append(f"weight file {shard} is missing")
        elif shard in sizes and path.stat().st_size != sizes[shard]:
            damage.append(f"weight file {shard} has {path.stat().st_size} bytes, not {sizes[shard]}")
        elif shard.endswith(".safetensors"):
            try:
                read_header(path)
            except CorruptCheckpoint as exc:
                damage.append(f"weight file {shard}: {exc}")
    return damage


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"frankeneval splice: {msg}", file=sys.stderr, flush=True)


def _input_paths(plan: SplicePlan) -> list[tuple[str, Path]]:
    """(label, path) of every source folder and every file it resolves to (hub-cache blobs)."""
    out: list[tuple[str, Path]] = []
    for name, ckpt in plan.checkpoints.items():
        out.append((name, ckpt.path))
        try:
            out += [(name, p) for p in ckpt.path.iterdir() if p.is_symlink()]
        except OSError:
            pass
    return out


def _owned_splice(out: Path) -> str | None:
    """None when ``out`` holds exactly a frankeneval splice (its provenance and the files it lists)."""
    prov = _read_provenance(out)
    if prov is None:
        return f"it is a non-empty folder that is not a frankeneval splice (no readable {PROVENANCE})"
    expected = {PROVENANCE, SAFETENSORS_INDEX, *(prov.get("shards") or {}), *(prov.get("metadata_from_host") or [])}
    return foreign_entries(out, expected)


def materialize(
    spec: MergeSpec,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    progress: bool = True,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    plan: SplicePlan | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Write the Frankenstein checkpoint ``spec`` declares to ``out_dir`` (atomically) and return its path.

    Skips the work when ``out_dir`` already holds this spec built from the same source contents (checked by
    hash) unless ``force``. Refuses sources that do not share tensor names and shapes
    (:class:`~frankeneval.errors.ArchitectureMismatch` naming the first mismatches).

    Never deletes what frankeneval did not write: ``out_dir`` must not be, hold or lie inside a source (even
    with ``force``), and an existing ``out_dir`` is replaced only when it holds exactly a frankeneval splice.
    One writer at a time: a second process writing the same ``out_dir`` waits, then finds the splice done.
    """
    out = Path(out_dir).expanduser().absolute()
    plan = plan or plan_splice(spec, allow_pickle=allow_pickle)
    refuse_inputs(out, _input_paths(plan), "splice output")
    with output_lock(out):
        return _materialize_locked(spec, out, force=force, progress=progress, shard_bytes=shard_bytes, plan=plan)


def _materialize_locked(spec: MergeSpec, out: Path, *, force: bool, progress: bool, shard_bytes: int,
                        plan: SplicePlan) -> Path:
    if not force and _holds(out, plan.build_hash):
        _log(progress, f"{out} already holds this splice ({plan.build_hash[:12]}); skipping (use --force to rewrite)")
        return out
    if out.exists() and not out.is_dir():
        raise SpliceError(f"{out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    fds: dict[Path, int] = {}
    t0 = time.perf_counter()
    try:
        with staged_directory(out, owned=_owned_splice, inputs=_input_paths(plan)) as tmp:
            shards = pack_shards(((n, plan._nbytes(n)) for n in plan.tensors), shard_bytes)
            n = len(shards)
            weight_map: dict[str, str] = {}
            shard_sizes: dict[str, int] = {}
            total = 0
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=plan.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                           desc=f"splice {spec.name or out.name}", leave=False)
            try:
                for i, names in enumerate(shards):
                    fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                    total += _write_shard(tmp / fname, names, plan, fds, bar)
                    shard_sizes[fname] = (tmp / fname).stat().st_size
                    weight_map.update({name: fname for name in names})
            finally:
                if bar is not None:
                    bar.close()
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            write_json_atomic(tmp / SAFETENSORS_INDEX, index, indent=2)
            copied = _copy_metadata(plan.checkpoints[spec.host].path, tmp)
            provenance = {
                "frankeneval_version": __version__,
                "format": FORMAT_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_hash": plan.build_hash,
                "spec_hash": spec.spec_hash(),
                "spec": spec.to_dict(),
                "phrase": spec.phrase,
                "host": spec.host,
                "sources": plan.fingerprints,
                "metadata_from_host": copied,
                "metadata_sha256": {name: _file_sha256(tmp / name) for name in copied},
                "dtype_differences": plan.dtype_notes,
                "tensor_counts": plan.counts(),
                "shards": shard_sizes,
                "tensors": dict(plan.tensors),
            }
            if spec.transforms:
                provenance["computed"] = plan.computed
                if spec.phrase and _is_variant_phrase(spec.phrase):
                    provenance["phrase_layers"] = (
                        "the phrase's layer numbers are 0-based decoder indices (the reference's phrase form); "
                        "spec, transforms and every other layer here are unified LLM layers 1-n")
            write_json_atomic(tmp / PROVENANCE, provenance, indent=1)
    finally:
        for fd in fds.values():
            os.close(fd)
    _log(progress, f"wrote {out} ({total / 1e6:.1f} MB, {len(plan.tensors)} tensors, {n} shard(s)) "
                   f"in {time.perf_counter() - t0:.1f} s: {spec.describe()}")
    return out


def _is_variant_phrase(phrase: str) -> bool:
    try:
        return variant_phrase(phrase) is not None
    except FrankenevalError:
        return False


def default_splice_cache() -> Path:
    """Where :func:`materialize_cached` puts splices: ``$FRANKENEVAL_SPLICE_CACHE`` or
    ``<frankeneval cache>/splices``."""
    env = os.environ.get("FRANKENEVAL_SPLICE_CACHE")
    if env:
        return Path(env).expanduser()
    return default_cache_dir() / "splices"


def cache_path(spec: MergeSpec, cache_dir: str | os.PathLike | None = None, *, plan: SplicePlan | None = None,
               allow_pickle: bool = False) -> Path:
    """The cache directory of ``spec``: ``<cache>/<name>-<build hash[:16]>`` (spec + source contents)."""
    plan = plan or plan_splice(spec, allow_pickle=allow_pickle)
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", spec.name or "splice").strip("_") or "splice"
    return Path(cache_dir or default_splice_cache()).expanduser() / f"{slug}-{plan.build_hash[:16]}"


def materialize_cached(spec: MergeSpec, cache_dir: str | os.PathLike | None = None, *, progress: bool = True,
                       shard_bytes: int = DEFAULT_SHARD_BYTES, allow_pickle: bool = False,
                       leases: list[SpliceLease] | None = None) -> Path:
    """Materialize ``spec`` into a cache directory keyed by its hash (reused when present and complete, rebuilt
    when damaged) and return it. ``leases``: a :class:`SpliceLease` on the folder is appended, taken under the
    folder's lock before it is released (so no eviction can come in between); the caller releases it."""
    plan = plan_splice(spec, allow_pickle=allow_pickle)
    out = cache_path(spec, cache_dir, plan=plan)
    with output_lock(out):
        path = materialize(spec, out, progress=progress, shard_bytes=shard_bytes, plan=plan)
        if leases is not None:
            leases.append(lease_splice(path))
    return path


# -- the cache's lifecycle: who owns a cached splice, and deleting one ---------------------------------
def splice_stamp(path: str | os.PathLike) -> dict[str, Any] | None:
    """What identifies one materialized splice folder: its build hash, its provenance file's SHA-256 (it holds the
    creation time) and the folder's inode; None when there is no readable provenance."""
    try:
        raw = (Path(path) / PROVENANCE).read_bytes()
        inode = os.lstat(path).st_ino
        build = json.loads(raw).get("build_hash")
    except (OSError, ValueError, AttributeError):
        return None
    return {"build_hash": build, "provenance_sha256": hashlib.sha256(raw).hexdigest(), "inode": inode}


def materialize_owned(spec: MergeSpec, cache_dir: str | os.PathLike | None, *, allow_pickle: bool = False,
                      known: Sequence[Mapping[str, Any] | None] = (),
                      leases: list[SpliceLease] | None = None) -> tuple[Path, dict[str, Any] | None]:
    """:func:`materialize_cached`, and (its folder, its stamp when the caller owns it, else None).

    Owned: nothing was there when it was called (under the folder's output lock, which ``materialize``
    re-enters: no other writer in between), or what was there has one of the stamps ``known`` (the caller's
    own, recorded by an earlier, interrupted run). ``leases``: as :func:`materialize_cached`."""
    out = Path(cache_path(spec, cache_dir, allow_pickle=allow_pickle)).expanduser().absolute()
    with output_lock(out):
        existed = os.path.lexists(out)
        before = splice_stamp(out) if existed else None
        kw = {} if leases is None else {"leases": leases}
        path = Path(materialize_cached(spec, cache_dir, progress=False, allow_pickle=allow_pickle, **kw)).absolute()
        if path != out or (existed and (before is None or before not in [k for k in known if k])):
            return path, None
        return path, splice_stamp(path)


# -- leases: who uses a cached splice right now ------------------------------------------------------------------
LEASE_SUFFIX = ".lease"


def _leases_dir(out: Path) -> Path:
    """``<cache>/.<splice>.leases/``: one file per live user of the splice (beside it, as its lock file)."""
    return out.parent / f".{out.name}.leases"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (``/proc/<pid>/stat`` field 22; None where unknown): a lease names its
    process by pid and start, so a pid the kernel reused for another process does not keep a lease alive."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass
class SpliceLease:
    """One user's lease on a cached splice (:func:`lease_splice`); :meth:`release` (or leaving a ``with``) ends it."""

    splice: Path
    file: Path

    def release(self) -> None:
        try:
            self.file.unlink()
        except FileNotFoundError:
            pass
        try:
            self.file.parent.rmdir()  # the last lease gone: no empty folder left beside the splice
        except OSError:
            pass

    def __enter__(self) -> SpliceLease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lease_splice(out: str | os.PathLike) -> SpliceLease:
    """Take a lease on the splice folder ``out`` for this process: :func:`evict_splice` keeps a splice while a
    live process holds a lease on it. A lease is a file ``<pid>-<random>.lease`` (pid and process start time)
    in ``<cache>/.<splice>.leases/``, created exclusively under the folder's output lock; the lease of a
    process that died is ignored (and removed by the next eviction)."""
    out = Path(out).expanduser().absolute()
    with output_lock(out):
        folder = _leases_dir(out)
        if folder.is_symlink():
            raise SpliceError(f"{folder} is a symbolic link; remove it (frankeneval keeps splice leases there)")
        folder.mkdir(exist_ok=True)
        pid = os.getpid()
        file = folder / f"{pid}-{os.urandom(4).hex()}{LEASE_SUFFIX}"
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            write_all(fd, json.dumps({"pid": pid, "start": _process_start(pid),
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        finally:
            os.close(fd)
    return SpliceLease(out, file)


def live_leases(out: str | os.PathLike, *, sweep: bool = False) -> list[int]:
    """The pids of the live processes holding a lease on ``out`` (:func:`lease_splice`). ``sweep`` (under the
    folder's lock): remove the leases of dead processes."""
    from frankeneval.core.locks import pid_alive

    folder = _leases_dir(Path(out).expanduser().absolute())
    try:
        files = [e for e in os.scandir(folder) if e.name.endswith(LEASE_SUFFIX) and e.is_file(follow_symlinks=False)]
    except OSError:
        return []
    pids = []
    for e in files:
        try:
            lease = json.loads(Path(e.path).read_text())
            pid, start = int(lease["pid"]), lease.get("start")
        except (OSError, ValueError, KeyError, TypeError):
            pid, start = int(e.name.split("-", 1)[0]) if e.name.split("-", 1)[0].isdigit() else 0, None
        if pid_alive(pid) and (start is None or _process_start(pid) in (None, start)):
            pids.append(pid)
        elif sweep:
            Path(e.path).unlink(missing_ok=True)
    if sweep and not pids:
        try:
            folder.rmdir()
        except OSError:
            pass
    return sorted(set(pids))


def _why_kept(out: Path, stamp: Mapping[str, Any], inputs: Sequence[tuple[str, str]]) -> str | None:
    """None when ``out`` may be deleted, else why not (see :func:`evict_splice`)."""
    if out.is_symlink() or not out.is_dir():
        return "it is not a folder"
    users = live_leases(out, sweep=True)
    if users:
        return f"{IN_USE} (pid {', '.join(map(str, users))})"
    if splice_stamp(out) != dict(stamp):
        return "it is not the splice this run wrote (replaced or changed since)"
    if not _holds(out, str(stamp.get("build_hash"))):
        return "it is not a complete splice of its build"
    why = _owned_splice(out)
    if why:
        return why
    sources = (_read_provenance(out) or {}).get("sources") or {}
    recorded = [(str(n), str(s["path"])) for n, s in sources.items() if isinstance(s, dict) and s.get("path")]
    try:
        refuse_inputs(out, [*inputs, *recorded], "splice to delete")
    except FrankenevalError:
        return "it is, holds or lies inside an input of this run"
    return None


IN_USE = "another run is using it"  # the reason evict_splice gives while a live process holds a lease


def evict_splice(out: str | os.PathLike, stamp: Mapping[str, Any], inputs: Sequence[tuple[str, str]]) -> str | None:
    """Delete the cached splice ``out`` the caller materialized; None when it is gone, else why it was kept.

    Kept while another live process holds a lease on it (:func:`lease_splice`; the caller releases its own
    first), and unless it is still the folder of ``stamp``, holds exactly a complete frankeneval splice and is,
    holds and lies inside no input (``(label, path)`` pairs, and the sources its provenance records). Under the
    folder's output lock (which leases are taken under too); deleted by
    :func:`frankeneval.core.results.discard_directory`."""
    out = Path(out).expanduser().absolute()
    with output_lock(out):
        if not os.path.lexists(out):
            return None
        why = _why_kept(out, stamp, inputs)
        if why is None:
            discard_directory(out)
    return why


# -- checking --------------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    """Result of :func:`verify`: every tensor compared byte for byte with its declared source."""

    out_dir: Path
    n_tensors: int = 0
    n_checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # declared in provenance, absent from the checkpoint
    extra: list[str] = field(default_factory=list)  # in the checkpoint, not declared
    source_changes: list[str] = field(default_factory=list)  # sources whose fingerprint changed since the splice
    per_source: dict[str, int] = field(default_factory=dict)
    damage: list[str] = field(default_factory=list)  # what keeps it from loading (splice_damage)
    n_computed: int = 0  # tensors recomputed from their recorded transforms (counted in n_checked too)

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.missing or self.extra or self.damage)

    def summary(self) -> str:
        if self.ok:
            src = ", ".join(f"{k}: {v}" for k, v in sorted(self.per_source.items()))
            warn = f" (warning: {'; '.join(self.source_changes)})" if self.source_changes else ""
            comp = f"; {self.n_computed} of them recomputed from their transforms" if self.n_computed else ""
            return (f"OK: {self.n_checked}/{self.n_tensors} tensors equal their declared sources bit for bit "
                    f"({src}{comp}){warn}")
        head = (f"FAILED: {len(self.mismatches)} mismatching, {len(self.missing)} missing, "
                f"{len(self.extra)} undeclared tensor(s)")
        if self.damage:
            head += f"; damaged, it cannot be loaded (rerun the splice to rebuild it): {len(self.damage)} problem(s)"
        lines = [head]
        lines += [f"  damaged: {m}" for m in self.damage]
        lines += [f"  mismatch: {m}" for m in self.mismatches[:20]]
        lines += [f"  missing: {m}" for m in self.missing[:20]]
        lines += [f"  undeclared: {m}" for m in self.extra[:20]]
        lines += [f"  note: {m}" for m in self.source_changes]
        return "\n".join(lines)


def _equal_ranges(a: mmap.mmap, a0: int, b: mmap.mmap, b0: int, length: int) -> bool:
    pos = 0
    while pos < length:
        n = min(_COPY_CHUNK, length - pos)
        if a[a0 + pos : a0 + pos + n] != b[b0 + pos : b0 + pos + n]:
            return False
        pos += n
    return True


def _open_recorded_source(name: str, info: dict[str, Any], allow_pickle: bool = False) -> Checkpoint:
    path = info.get("path")
    if path and Path(path).is_dir():
        return Checkpoint(Path(path), source_id=info.get("ref") or path, revision=info.get("revision"),
                          allow_pickle=allow_pickle)
    return Checkpoint.open(resolve_ref(info["ref"]), revision=info.get("revision"), allow_pickle=allow_pickle)


def verify(out_dir: str | os.PathLike, *, progress: bool = False, allow_pickle: bool = False) -> VerifyReport:
    """Check a materialized splice: every tensor equals its declared source tensor, bit for bit.

    Also reports tensors missing from / not declared in the provenance file, and sources whose fingerprint
    changed since the splice was written (their comparison is still made).
    """
    out = Path(out_dir).expanduser()
    prov = _read_provenance(out)
    if prov is None:
        raise SpliceError(f"{out} has no readable {PROVENANCE}: it is not a frankeneval splice")
    report = VerifyReport(out, damage=splice_damage(out))
    try:
        result = Checkpoint(out)
    except FrankenevalError as exc:  # weights that cannot be opened: nothing to compare
        if not report.damage:
            report.damage.append(str(exc))
        return report
    sources: dict[str, Checkpoint] = {}
    for name, info in prov["sources"].items():
        ckpt = _open_recorded_source(name, info, allow_pickle)
        if os.path.realpath(ckpt.path) == os.path.realpath(out):
            raise SpliceError(
                f"{out}: its recorded source {name} is the splice itself; there is nothing to check it against"
            )
        sources[name] = ckpt
        if ckpt.fingerprint()["weights_sha256"] != info.get("weights_sha256"):
            report.source_changes.append(f"source {name} ({info.get('ref')}) changed since the splice was written")
    declared: dict[str, str] = prov["tensors"]
    computed: dict[str, list[dict[str, Any]]] = prov.get("computed") or {}
    out_loc = _locate(result)
    src_loc = {n: _locate(c) for n, c in sources.items()}
    report.n_tensors = len(out_loc)
    report.extra = sorted(set(out_loc) - set(declared))
    report.missing = sorted(set(declared) - set(out_loc))
    maps: dict[Path, mmap.mmap] = {}
    files = []

    def mapped(path: Path) -> mmap.mmap:
        m = maps.get(path)
        if m is None:
            f = open(path, "rb")  # noqa: SIM115 - closed in the finally below
            files.append(f)
            m = maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return m

    names = [n for n in out_loc if n in declared]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names), desc=f"check {out.name}", unit="tensor", leave=False)
    try:
        for name in names:
            src = declared[name]
            report.per_source[src] = report.per_source.get(src, 0) + 1
            o = out_loc[name]
            s = src_loc.get(src, {}).get(name, "absent")
            if src not in sources or s == "absent":
                report.mismatches.append(f"{name}: declared source {src} has no such tensor")
            elif name in computed:
                report.n_computed += 1
                why = _recomputed_differs(result, sources, src, name, computed[name])
                if why:
                    report.mismatches.append(f"{name}: {why}")
            elif o is None or s is None:  # pickle shards: compare through torch
                import torch

                if not torch.equal(result.read(name), sources[src].read(name)):
                    report.mismatches.append(f"{name}: differs from {src}")
            elif (o.dtype, o.shape) != (s.dtype, s.shape):
                report.mismatches.append(f"{name}: {o.dtype}{list(o.shape)} but {src} has {s.dtype}{list(s.shape)}")
            elif not _equal_ranges(mapped(o.file), o.offset, mapped(s.file), s.offset, o.nbytes):
                report.mismatches.append(f"{name}: bytes differ from {src} ({sources[src].source_id})")
            report.n_checked += 1
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
        for m in maps.values():
            m.close()
        for f in files:
            f.close()
    return report


def _recomputed_differs(result: Checkpoint, sources: Mapping[str, Checkpoint], src: str, name: str,
                        steps: Sequence[Mapping[str, Any]]) -> str | None:
    """None when the splice's tensor ``name`` equals ``src``'s rewritten by ``steps`` bit for bit, else why not."""
    import torch

    ops = " then ".join(str(step.get("op")) for step in steps)
    try:
        want = compute_tensor(sources, src, name, steps)
    except (FrankenevalError, KeyError, RuntimeError, ValueError) as exc:
        return f"cannot recompute it from {src} by {ops} ({type(exc).__name__}: {exc})"
    got = result.read(name).contiguous()
    if got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
        return f"{got.dtype}{list(got.shape)} but {src} by {ops} gives {want.dtype}{list(want.shape)}"
    if not torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)):
        return f"bytes differ from {src} rewritten by {ops}"
    return None


def read_provenance(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The provenance record of a materialized splice."""
    prov = _read_provenance(Path(out_dir))
    if prov is None:
        raise SpliceError(f"{out_dir} has no readable {PROVENANCE}")
    return prov


__all__ = (
    "DEFAULT_SHARD_BYTES",
    "IN_USE",
    "PROVENANCE",
    "SpliceError",
    "SpliceLease",
    "SplicePlan",
    "VerifyReport",
    "cache_path",
    "compute_tensor",
    "default_splice_cache",
    "evict_splice",
    "interpolated",
    "lease_splice",
    "live_leases",
    "materialize",
    "materialize_cached",
    "materialize_owned",
    "noised",
    "open_sources",
    "plan_splice",
    "read_provenance",
    "splice_damage",
    "splice_stamp",
    "tensor_seed",
    "verify",
)
