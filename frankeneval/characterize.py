"""Update characterization: energy and spectra of ΔIN = IN - Base and ΔRL = RL - IN, streamed.

:func:`characterize` reads every analysed weight matrix (LayerMap: ≥ 2-D weights that are not norms;
embeddings and lm_head included, off the unified axis) of Base, IN and RL exactly once, computes the
metrics of :mod:`frankeneval.spectra` on the GPU when there is one (CPU otherwise) and appends one JSON
line per matrix to ``matrices.jsonl``; at the end ``summary.json`` aggregates them (mean and sum per
unified layer, section, component, section/component and LLM region). A rerun skips the matrices already
in ``matrices.jsonl`` (resumable); ``run.json`` holds the run's metadata and settings, and a rerun with
different settings or different weights refuses to mix results.

:func:`compare` streams ΔRL of two or more lineages and writes, per matrix and per layer, the cosine
similarity and the top-r singular-subspace overlap between every pair (``compare.jsonl``,
``compare_summary.json``).

Streaming: one reader thread per checkpoint reads tensors straight from the safetensors files
(``os.preadv`` at the header's offsets -- no mmap, so the pages never count towards this process's RSS)
into a small ring of pinned host buffers and copies them to the GPU on a side stream; bounded queues
(``queue_depth`` tensors per checkpoint) keep memory bounded while the main thread computes. On CPU
tensors are read into ordinary buffers. Non-safetensors shards fall back to ``Checkpoint.read``.

Output schema (``SCHEMA``): see :data:`RECORD_DOC` and :data:`SUMMARY_DOC`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from frankeneval import __version__
from frankeneval.checkpoint import Checkpoint, check_compatible, torch_dtype
from frankeneval.errors import FrankenevalError, SpecError
from frankeneval.layermap import LayerMap, TensorRole, canonical_name
from frankeneval.spectra import (
    EPS,
    SVD_METHODS,
    as_matrix,
    choose_method,
    delta,
    dot64,
    frobenius_norm,
    gram,
    overlap_report,
    singular_values_batch,
    spectral_metrics,
    subspaces_from_gram,
    top_singular_subspaces,
)

SCHEMA = "frankeneval.characterize/1"
COMPARE_SCHEMA = "frankeneval.characterize.compare/1"
RUN_FILE = "run.json"
MATRICES_FILE = "matrices.jsonl"
SUMMARY_FILE = "summary.json"
COMPARE_RUN_FILE = "compare_run.json"
COMPARE_FILE = "compare.jsonl"
COMPARE_SUMMARY_FILE = "compare_summary.json"
REFERENCE_MAX_ELEMENTS = 100_000_000  # the reference implementation skips larger matrices; we do not

SPECTRAL_METRICS = (
    "spectral_norm",
    "nuclear_norm",
    "stable_rank",
    "effective_rank",
    "condition_number",
    "log_spectral_volume",
)
DELTA_METRICS = ("fro", "rel_fro", *SPECTRAL_METRICS)

RECORD_DOC = """One line of matrices.jsonl (one analysed weight matrix):
  name, shape (stored), matrix_shape [out, rest], numel, section, layer (unified index or null), block,
  component, submodule, region (early/middle/late for LLM tensors, else null), over_reference_limit,
  norm_base, norm_in, norm_rl (‖W‖_F), cos_in_rl (cosine of ΔIN and ΔRL, null if either is zero),
  delta_in / delta_rl: {fro: ‖Δ‖_F, rel_fro: ‖Δ‖_F / ‖W_IN‖_F, and with spectra: spectral_norm σ₁,
    nuclear_norm Σσ, stable_rank ‖Δ‖_F²/σ₁² (null for Δ = 0), effective_rank exp(-Σ p log p), p = σ/Σσ
    over σ > 1e-12 (null for Δ = 0), condition_number σ₁/(σ_min + 1e-12), log_spectral_volume
    Σ_{i≤volume_k} log(σᵢ + 1e-12), sigma_min, n_sigma, sigma_top (top_k σ, descending)},
  overlap_in_rl (with spectra and rank_r > 0; null if either Δ = 0): {r, left, right (mean cos² of the
    principal angles between the top-r left / right singular subspaces of ΔIN and ΔRL), left_cosines,
    right_cosines, chance_left = r/out, chance_right = r/rest},
  svd_method, seconds."""

SUMMARY_DOC = """summary.json:
  schema, run (= run.json: versions, models with fingerprints, settings, device), complete (every planned
  matrix measured), n_matrices, n_planned, seconds (compute wall time of the runs so far, last run),
  notes, off_axis (names of measured matrices with no unified layer: embeddings, lm_head),
  over_reference_limit (names with > 1e8 elements, which the reference skips),
  aggregates: {by_layer (keys: unified index as a string), by_section, by_component,
    by_section_component ("llm/attention"), by_region, all}: each group is
    {n, energy: {delta_in_fro, delta_rl_fro (sqrt of Σ‖Δ‖_F²), delta_in_rel_fro, delta_rl_rel_fro
      (sqrt(Σ‖Δ‖²)/sqrt(Σ‖W_IN‖²))}, delta_in / delta_rl: {metric: {mean, sum, n}} for fro, rel_fro and the
     spectral metrics, cos_in_rl: {mean, sum, n}, overlap_left / overlap_right: {mean, sum, n}}."""


# -- settings and metadata -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CharacterizeSettings:
    """What is measured. Two runs with equal settings (and weights) may share an output directory."""

    top_k: int = 50  # singular values kept per matrix
    volume_k: int = 50  # singular values in the log spectral volume (METHOD.md: 50)
    rank_r: int = 8  # top-r singular subspaces for the ΔIN/ΔRL overlap (0: skip)
    spectra: bool = True  # False: energy only (Frobenius norms, cosines)
    svd_method: str = "auto"
    sections: tuple[str, ...] | None = None  # None: every section

    def __post_init__(self) -> None:
        if self.svd_method not in SVD_METHODS:
            raise SpecError(f"svd_method must be one of {SVD_METHODS}, got {self.svd_method!r}")
        if self.top_k < 1 or self.volume_k < 1 or self.rank_r < 0:
            raise SpecError("top_k and volume_k must be >= 1 and rank_r >= 0")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: the GPU when CUDA is available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FrankenevalError("--device cuda was asked for but no CUDA GPU is available (use --device auto or cpu)")
    return dev


def _device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "host": platform.node()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _open(ref: str | os.PathLike | Checkpoint) -> Checkpoint:
    return ref if isinstance(ref, Checkpoint) else Checkpoint.open(ref)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


# -- the plan ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedMatrix:
    """One analysed matrix: its role and stored shape."""

    role: TensorRole
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.role.canonical


def plan_matrices(ckpt: Checkpoint, sections: Iterable[str] | None = None) -> list[PlannedMatrix]:
    """The analysed matrices of ``ckpt`` (optionally only some sections), in on-disk order."""
    lmap = ckpt.layer_map
    infos = {canonical_name(k): v for k, v in ckpt.tensor_infos().items()}
    wanted = None if sections is None else set(sections)
    if wanted is not None:
        unknown = wanted - {"vision", "projector", "llm", "embeddings", "final_norm", "lm_head"}
        if unknown:
            raise SpecError(f"unknown section(s) {sorted(unknown)}; choose from vision, projector, llm, embeddings, lm_head")
    order = {s: i for i, s in enumerate(ckpt.shards)}
    offsets = _all_offsets(ckpt)
    plan = [
        PlannedMatrix(role, infos[name].shape)
        for name, role in lmap.roles.items()
        if role.is_analysed_matrix(infos[name].shape) and (wanted is None or role.section in wanted)
    ]
    plan.sort(key=lambda p: (order.get(infos[p.name].shard, 0), offsets.get(p.name, 0), p.name))
    return plan


def _region(lmap: LayerMap, role: TensorRole) -> str | None:
    return lmap.region(role)


# -- reading -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Location:
    path: Path
    offset: int  # absolute byte offset in the file
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def _safetensors_index(path: Path) -> dict[str, _Location]:
    """canonical name -> location of its bytes, from one safetensors header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        out[canonical_name(name)] = _Location(path, 8 + n + start, end - start, torch_dtype(meta["dtype"]), tuple(meta["shape"]))
    return out


def _all_offsets(ckpt: Checkpoint) -> dict[str, int]:
    offsets: dict[str, int] = {}
    for shard in ckpt.shards:
        if shard.endswith(".safetensors"):
            offsets.update({k: v.offset for k, v in _safetensors_index(ckpt.path / shard).items()})
    return offsets


def _pread_into(fd: int, buf: torch.Tensor, offset: int) -> None:
    """Fill the uint8 CPU tensor ``buf`` from ``fd`` at ``offset``."""
    mv = memoryview(buf.numpy()).cast("B")
    got, total = 0, buf.numel()
    while got < total:
        n = os.preadv(fd, [mv[got:]], offset + got)
        if n <= 0:
            raise FrankenevalError(f"unexpected end of file while reading {total} bytes at offset {offset}")
        got += n


_END = object()


class _MemberReader(threading.Thread):
    """Reads the tensors ``names`` of one checkpoint, in order, onto ``device`` into a bounded queue."""

    def __init__(self, ckpt: Checkpoint, names: Sequence[str], device: torch.device, depth: int, chunk_bytes: int, stop: threading.Event):
        super().__init__(daemon=True, name=f"reader:{ckpt.path.name}")
        self.ckpt, self.names, self.device, self.stop = ckpt, list(names), device, stop
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.chunk_bytes = chunk_bytes
        self.bytes_read = 0
        self._index: dict[str, _Location] = {}
        for shard in ckpt.shards:
            if shard.endswith(".safetensors"):
                self._index.update(_safetensors_index(ckpt.path / shard))
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
                    buf = torch.empty(loc.nbytes, dtype=torch.uint8)
                    _pread_into(self._fd(loc.path), buf, loc.offset)
                    t = buf.view(loc.dtype).reshape(loc.shape)
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
                        _pread_into(self._fd(loc.path), slots[slot][:n], loc.offset + pos)
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
                    t = gpu.view(loc.dtype).reshape(loc.shape)
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


# -- per-matrix measurement ----------------------------------------------------------------------------
def measure_update(w_base: torch.Tensor, w_in: torch.Tensor, w_rl: torch.Tensor, settings: CharacterizeSettings) -> dict[str, Any]:
    """Energy (and spectra) of ΔIN and ΔRL of one matrix: the metric part of a matrices.jsonl record."""
    d_in = as_matrix(delta(w_base, w_in))
    d_rl = as_matrix(delta(w_in, w_rl))
    norms = torch.stack(
        [frobenius_norm(w_base), frobenius_norm(w_in), frobenius_norm(w_rl), frobenius_norm(d_in), frobenius_norm(d_rl), dot64(d_in, d_rl)]
    ).tolist()
    n_base, n_in, n_rl, f_in, f_rl, dot = norms
    rec: dict[str, Any] = {
        "norm_base": n_base,
        "norm_in": n_in,
        "norm_rl": n_rl,
        "cos_in_rl": dot / (f_in * f_rl) if f_in > 0 and f_rl > 0 else None,
        "delta_in": {"fro": f_in, "rel_fro": f_in / n_in if n_in > 0 else None},
        "delta_rl": {"fro": f_rl, "rel_fro": f_rl / n_in if n_in > 0 else None},
    }
    if not settings.spectra:
        return rec
    method = choose_method(d_in.shape, d_in.device) if settings.svd_method == "auto" else settings.svd_method
    rec["svd_method"] = method
    if method == "gram":  # one Gram per delta, one batched eigvalsh for both
        grams = [gram(d_in), gram(d_rl)]
        s_in, s_rl = (ev.flip(-1).clamp_min(0).sqrt() for ev in torch.linalg.eigvalsh(torch.stack(grams)).unbind(0))
    else:
        s_in, s_rl = singular_values_batch([d_in, d_rl], method=method)
    if settings.rank_r > 0:
        both = f_in > EPS and f_rl > EPS
        if both:
            if method == "gram":
                u_in, v_in = subspaces_from_gram(d_in, grams[0], settings.rank_r)
                u_rl, v_rl = subspaces_from_gram(d_rl, grams[1], settings.rank_r)
            else:
                _, u_in, v_in = top_singular_subspaces(d_in, settings.rank_r, method=method)
                _, u_rl, v_rl = top_singular_subspaces(d_rl, settings.rank_r, method=method)
        rec["overlap_in_rl"] = overlap_report(u_in, v_in, u_rl, v_rl) if both else None
    kw = {"top_k": settings.top_k, "volume_k": settings.volume_k}
    rec["delta_in"].update(spectral_metrics(s_in, fro_sq=f_in**2, **kw))
    rec["delta_rl"].update(spectral_metrics(s_rl, fro_sq=f_rl**2, **kw))
    return rec


def _role_fields(p: PlannedMatrix, lmap: LayerMap) -> dict[str, Any]:
    r = p.role
    rows = p.shape[0]
    rest = math.prod(p.shape[1:])
    return {
        "name": p.name,
        "shape": list(p.shape),
        "matrix_shape": [rows, rest],
        "numel": rows * rest,
        "section": r.section,
        "layer": r.layer,
        "block": r.block,
        "component": r.component,
        "submodule": r.submodule,
        "region": _region(lmap, r),
        "over_reference_limit": rows * rest > REFERENCE_MAX_ELEMENTS,
    }


# -- JSONL log (append-only, resumable) ----------------------------------------------------------------
def load_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete lines of a JSONL file (a torn last line from an interrupted run is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


class _JsonlLog:
    """Append-only JSONL; on open, a torn trailing line is cut off."""

    def __init__(self, path: Path):
        self.path = path
        self.records = load_records(path)
        good = "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.records)
        if path.is_file() and path.read_text() != good:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(good)
            os.replace(tmp, path)
        self._f = open(path, "a")

    def append(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, allow_nan=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.records.append(record)

    def close(self) -> None:
        self._f.close()


def _prepare_run_dir(out: Path, run_file: str, meta: dict[str, Any], *, overwrite: bool, files: Sequence[str]) -> None:
    """Create ``out``; refuse to resume a run whose settings or weights differ."""
    out.mkdir(parents=True, exist_ok=True)
    run_path = out / run_file
    if overwrite:
        for f in (run_file, *files):
            (out / f).unlink(missing_ok=True)
    if run_path.is_file():
        old = json.loads(run_path.read_text())
        if old.get("resume_key") != json.loads(json.dumps(meta["resume_key"])):  # compare as stored (tuples -> lists)
            raise SpecError(
                f"{out} holds a run with different settings or weights ({run_file} differs); "
                "use another --out directory or --overwrite"
            )
        meta["created"] = old.get("created", meta["created"])
    _atomic_write_json(run_path, meta)


# -- characterize --------------------------------------------------------------------------------------
def characterize(
    base: str | os.PathLike | Checkpoint,
    in_: str | os.PathLike | Checkpoint,
    rl: str | os.PathLike | Checkpoint,
    out_dir: str | os.PathLike,
    *,
    settings: CharacterizeSettings | None = None,
    device: str | torch.device = "auto",
    overwrite: bool = False,
    progress: bool = True,
    queue_depth: int = 2,
    chunk_bytes: int = 64 << 20,
    label: str | None = None,
) -> dict[str, Any]:
    """Measure ΔIN and ΔRL of every analysed matrix; write matrices.jsonl, summary.json, run.json.

    Returns the summary. Raises :class:`ArchitectureMismatch` when the three checkpoints do not share
    every tensor name and shape.
    """
    settings = settings or CharacterizeSettings()
    dev = resolve_device(device)
    ckpts = [_open(x) for x in (base, in_, rl)]
    check_compatible(ckpts, ["base", "in", "rl"])
    lmap = ckpts[0].layer_map
    plan = plan_matrices(ckpts[0], settings.sections)
    if not plan:
        raise FrankenevalError("no analysed weight matrices found (check --sections)")
    out = Path(out_dir)
    models = {k: c.fingerprint() for k, c in zip(("base", "in", "rl"), ckpts)}
    settings_d = asdict(settings)
    meta = {
        "schema": SCHEMA,
        "frankeneval": __version__,
        "created": _now(),
        "label": label,
        "models": models,
        "settings": settings_d,
        "n_vision_blocks": lmap.n_vision_blocks,
        "n_llm_layers": lmap.n_llm_layers,
        "n_planned": len(plan),
        "reference_deviation": (
            "deltas in float32 (the reference subtracts in fp16); matrices with more than 1e8 elements are "
            "measured (the reference skips them); embeddings and lm_head are measured, off the unified axis"
        ),
        "resume_key": {"settings": settings_d, "weights": [m["weights_sha256"] for m in models.values()]},
        **_device_info(dev),
    }
    _prepare_run_dir(out, RUN_FILE, meta, overwrite=overwrite, files=(MATRICES_FILE, SUMMARY_FILE))
    log = _JsonlLog(out / MATRICES_FILE)
    done = {r["name"] for r in log.records}
    todo = [p for p in plan if p.name not in done]
    t0 = time.perf_counter()
    try:
        bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="characterize", unit="matrix", disable=not progress, dynamic_ncols=True)
        with stream_tensors(ckpts, [p.name for p in todo], dev, queue_depth=queue_depth, chunk_bytes=chunk_bytes) as (items, bytes_read):
            by_name = {p.name: p for p in todo}
            for name, (w_base, w_in, w_rl) in items:
                t1 = time.perf_counter()
                rec = _role_fields(by_name[name], lmap)
                rec.update(measure_update(w_base, w_in, w_rl, settings))
                rec["seconds"] = round(time.perf_counter() - t1, 6)
                del w_base, w_in, w_rl
                log.append(rec)
                bar.update()
                bar.set_postfix(read=f"{bytes_read() / 1e9:.1f}GB", refresh=False)
        bar.close()
    finally:
        log.close()
    planned = {p.name for p in plan}
    records = [r for r in log.records if r["name"] in planned]
    summary = summarize(records, meta, n_planned=len(plan), seconds=time.perf_counter() - t0)
    _atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


def characterize_recipe(name: str, out_dir: str | os.PathLike, **kwargs) -> dict[str, Any]:
    """:func:`characterize` for a built-in recipe (``frankeneval.recipes.get_recipe(name).models``)."""
    from frankeneval.recipes import get_recipe  # lazy: recipes is an optional sibling module

    models = get_recipe(name).models
    return characterize(models["base"], models["in"], models["rl"], out_dir, label=name, **kwargs)


# -- aggregation ---------------------------------------------------------------------------------------
def _stat(values: Iterable[float | None]) -> dict[str, Any]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return {"mean": sum(vals) / len(vals) if vals else None, "sum": sum(vals) if vals else None, "n": len(vals)}


def _aggregate_group(records: list[dict[str, Any]]) -> dict[str, Any]:
    sq_in = sum(r["delta_in"]["fro"] ** 2 for r in records)
    sq_rl = sum(r["delta_rl"]["fro"] ** 2 for r in records)
    sq_w = sum(r["norm_in"] ** 2 for r in records)
    group: dict[str, Any] = {
        "n": len(records),
        "energy": {
            "delta_in_fro": math.sqrt(sq_in),
            "delta_rl_fro": math.sqrt(sq_rl),
            "delta_in_rel_fro": math.sqrt(sq_in / sq_w) if sq_w > 0 else None,
            "delta_rl_rel_fro": math.sqrt(sq_rl / sq_w) if sq_w > 0 else None,
        },
        "cos_in_rl": _stat(r.get("cos_in_rl") for r in records),
    }
    for d in ("delta_in", "delta_rl"):
        group[d] = {m: _stat(r[d].get(m) for r in records) for m in DELTA_METRICS if any(m in r[d] for r in records)}
    if any(r.get("overlap_in_rl") for r in records):
        group["overlap_left"] = _stat((r.get("overlap_in_rl") or {}).get("left") for r in records)
        group["overlap_right"] = _stat((r.get("overlap_in_rl") or {}).get("right") for r in records)
    return group


def _group_by(records: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        k = key(r)
        if k is not None:
            groups.setdefault(k, []).append(r)
    keys = sorted(groups, key=lambda k: (isinstance(k, str), k))
    return {str(k): groups[k] for k in keys}


GROUPINGS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "by_layer": lambda r: r["layer"],
    "by_section": lambda r: r["section"],
    "by_component": lambda r: r["component"],
    "by_section_component": lambda r: f"{r['section']}/{r['component']}",
    "by_region": lambda r: r["region"],
    "by_layer_component": lambda r: None if r["layer"] is None else f"{r['layer']}/{r['component']}",
}


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sum of every metric per unified layer, section, component, section/component, region."""
    out = {name: {k: _aggregate_group(v) for k, v in _group_by(records, key).items()} for name, key in GROUPINGS.items()}
    out["all"] = _aggregate_group(records) if records else None
    return out


def summarize(records: list[dict[str, Any]], run: dict[str, Any], *, n_planned: int, seconds: float | None = None) -> dict[str, Any]:
    """The summary.json object for the records measured so far."""
    run = {k: v for k, v in run.items() if k != "resume_key"}
    return {
        "schema": SCHEMA,
        "run": run,
        "complete": len(records) == n_planned,
        "n_matrices": len(records),
        "n_planned": n_planned,
        "seconds": seconds,
        "notes": [SUMMARY_DOC, RECORD_DOC],
        "off_axis": [r["name"] for r in records if r["layer"] is None],
        "over_reference_limit": [r["name"] for r in records if r.get("over_reference_limit")],
        "aggregates": aggregate(records),
    }


# -- compare across lineages ---------------------------------------------------------------------------
@dataclass
class LineageRef:
    """The IN and RL members of one lineage (Base is not needed for ΔRL), with a label."""

    label: str
    in_: str
    rl: str
    base: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def lineage_ref(item: str) -> LineageRef:
    """Parse a ``--compare`` item.

    * a characterize output directory (its run.json names the checkpoints; label = its label or dir name);
    * ``recipe:NAME`` (a built-in recipe);
    * ``[LABEL=]BASE,IN,RL`` or ``[LABEL=]IN,RL`` (paths or hub ids).
    """
    label = None
    if "=" in item and not Path(item).exists():
        label, item = item.split("=", 1)
    if item.startswith("recipe:"):
        from frankeneval.recipes import get_recipe  # lazy

        name = item[len("recipe:") :]
        m = get_recipe(name).models
        return LineageRef(label or name, str(m["in"]), str(m["rl"]), str(m["base"]))
    p = Path(item)
    if p.is_dir() and (p / RUN_FILE).is_file():
        run = json.loads((p / RUN_FILE).read_text())
        models = run["models"]
        src = lambda k: models[k].get("path") or models[k]["source"]  # noqa: E731
        return LineageRef(label or run.get("label") or p.name, src("in"), src("rl"), src("base"), {"run_dir": str(p)})
    parts = [x for x in item.split(",") if x]
    if len(parts) in (2, 3):
        base = parts[0] if len(parts) == 3 else None
        return LineageRef(label or f"lineage{abs(hash(item)) % 10000}", parts[-2], parts[-1], base)
    raise SpecError(
        f"cannot read --compare item {item!r}: give a characterize output directory, recipe:NAME, or [LABEL=]BASE,IN,RL"
    )


def compare(
    lineages: Sequence[LineageRef | str],
    out_dir: str | os.PathLike,
    *,
    rank_r: int = 8,
    sections: Sequence[str] | None = None,
    svd_method: str = "auto",
    device: str | torch.device = "auto",
    overwrite: bool = False,
    progress: bool = True,
    queue_depth: int = 2,
    chunk_bytes: int = 64 << 20,
) -> dict[str, Any]:
    """Cosine similarity and top-r subspace overlap between the ΔRL of two or more lineages.

    Writes compare.jsonl (per matrix, every pair) and compare_summary.json (per unified layer, section,
    region and overall, every pair). The ΔRL of all lineages must have the same matrices and shapes.
    """
    refs = [x if isinstance(x, LineageRef) else lineage_ref(x) for x in lineages]
    if len(refs) < 2:
        raise SpecError("--compare needs at least two lineages")
    labels = [r.label for r in refs]
    if len(set(labels)) != len(labels):
        raise SpecError(f"--compare labels must be distinct, got {labels} (use LABEL=... to name them)")
    if svd_method not in SVD_METHODS:
        raise SpecError(f"svd_method must be one of {SVD_METHODS}")
    dev = resolve_device(device)
    ckpts: list[Checkpoint] = []
    for r in refs:
        ckpts += [_open(r.in_), _open(r.rl)]
    check_compatible(ckpts, [f"{lab}/{m}" for lab in labels for m in ("in", "rl")])
    lmap = ckpts[0].layer_map
    plan = plan_matrices(ckpts[0], sections)
    if not plan:
        raise FrankenevalError("no analysed weight matrices found (check --sections)")
    out = Path(out_dir)
    fps = [c.fingerprint() for c in ckpts]
    settings = {"rank_r": rank_r, "sections": list(sections) if sections else None, "svd_method": svd_method}
    meta = {
        "schema": COMPARE_SCHEMA,
        "frankeneval": __version__,
        "created": _now(),
        "labels": labels,
        "lineages": [{"label": r.label, "in": fps[2 * i], "rl": fps[2 * i + 1], **r.extra} for i, r in enumerate(refs)],
        "settings": settings,
        "n_planned": len(plan),
        "resume_key": {"settings": settings, "labels": labels, "weights": [f["weights_sha256"] for f in fps]},
        **_device_info(dev),
    }
    _prepare_run_dir(out, COMPARE_RUN_FILE, meta, overwrite=overwrite, files=(COMPARE_FILE, COMPARE_SUMMARY_FILE))
    log = _JsonlLog(out / COMPARE_FILE)
    done = {r["name"] for r in log.records}
    todo = [p for p in plan if p.name not in done]
    pairs = [(i, j) for i in range(len(refs)) for j in range(i + 1, len(refs))]
    try:
        bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="compare", unit="matrix", disable=not progress, dynamic_ncols=True)
        with stream_tensors(ckpts, [p.name for p in todo], dev, queue_depth=queue_depth, chunk_bytes=chunk_bytes) as (items, _):
            by_name = {p.name: p for p in todo}
            for name, tensors in items:
                rec = _role_fields(by_name[name], lmap)
                rec.update(measure_rl_agreement(tensors, labels, pairs, rank_r=rank_r, svd_method=svd_method))
                del tensors
                log.append(rec)
                bar.update()
        bar.close()
    finally:
        log.close()
    planned = {p.name for p in plan}
    records = [r for r in log.records if r["name"] in planned]
    summary = summarize_compare(records, meta, n_planned=len(plan))
    _atomic_write_json(out / COMPARE_SUMMARY_FILE, summary)
    return summary


def measure_rl_agreement(
    tensors: Sequence[torch.Tensor], labels: Sequence[str], pairs: Sequence[tuple[int, int]], *, rank_r: int, svd_method: str = "auto"
) -> dict[str, Any]:
    """Per-matrix ΔRL agreement: ``tensors`` = [IN₀, RL₀, IN₁, RL₁, ...]."""
    deltas = [as_matrix(delta(tensors[2 * k], tensors[2 * k + 1])) for k in range(len(labels))]
    norms = torch.stack([frobenius_norm(d) for d in deltas]).tolist()
    dots = torch.stack([dot64(deltas[i], deltas[j]) for i, j in pairs]).tolist() if pairs else []
    subspaces = None
    if rank_r > 0:
        method = choose_method(deltas[0].shape, deltas[0].device) if svd_method == "auto" else svd_method

        def bases(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if method == "gram":
                return subspaces_from_gram(d, gram(d), rank_r)
            return top_singular_subspaces(d, rank_r, method=method)[1:]

        subspaces = [bases(d) if n > EPS else None for d, n in zip(deltas, norms)]
    out_pairs = []
    for (i, j), dot in zip(pairs, dots):
        entry: dict[str, Any] = {
            "a": labels[i],
            "b": labels[j],
            "dot": dot,
            "cosine": dot / (norms[i] * norms[j]) if norms[i] > 0 and norms[j] > 0 else None,
        }
        if subspaces is not None:
            if subspaces[i] is not None and subspaces[j] is not None:
                rep = overlap_report(subspaces[i][0], subspaces[i][1], subspaces[j][0], subspaces[j][1])
                entry.update(overlap_left=rep["left"], overlap_right=rep["right"], chance_left=rep["chance_left"], chance_right=rep["chance_right"])
            else:
                entry.update(overlap_left=None, overlap_right=None)
        out_pairs.append(entry)
    return {"delta_rl_fro": dict(zip(labels, norms)), "pairs": out_pairs}


def _compare_group(records: list[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(records), "pairs": {}}
    sq = {lab: sum(r["delta_rl_fro"][lab] ** 2 for r in records) for lab in labels}
    out["delta_rl_fro"] = {lab: math.sqrt(v) for lab, v in sq.items()}
    keys = {(p["a"], p["b"]) for r in records for p in r["pairs"]}
    for a, b in sorted(keys):
        ps = [p for r in records for p in r["pairs"] if (p["a"], p["b"]) == (a, b)]
        dot = sum(p["dot"] for p in ps)
        out["pairs"][f"{a}|{b}"] = {
            "a": a,
            "b": b,
            "cosine": dot / math.sqrt(sq[a] * sq[b]) if sq[a] > 0 and sq[b] > 0 else None,  # of the concatenated ΔRL
            "matrix_cosine": _stat(p.get("cosine") for p in ps),
            "overlap_left": _stat(p.get("overlap_left") for p in ps),
            "overlap_right": _stat(p.get("overlap_right") for p in ps),
        }
    return out


def summarize_compare(records: list[dict[str, Any]], run: dict[str, Any], *, n_planned: int) -> dict[str, Any]:
    """compare_summary.json: per group and pair, the cosine of the group's concatenated ΔRL, the mean
    per-matrix cosine and the mean left / right top-r subspace overlap."""
    labels = run["labels"]
    run = {k: v for k, v in run.items() if k != "resume_key"}
    groups = {
        name: {k: _compare_group(v, labels) for k, v in _group_by(records, GROUPINGS[name]).items()}
        for name in ("by_layer", "by_section", "by_component", "by_region")
    }
    return {
        "schema": COMPARE_SCHEMA,
        "run": run,
        "labels": labels,
        "complete": len(records) == n_planned,
        "n_matrices": len(records),
        "n_planned": n_planned,
        "aggregates": {**groups, "all": _compare_group(records, labels) if records else None},
    }
