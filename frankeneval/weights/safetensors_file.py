"""The one safetensors header parser: where each tensor's bytes are, checked against the file.

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON (``name -> {dtype,
shape, data_offsets}`` plus an optional ``__metadata__``), then the tensor data; ``data_offsets`` count from the
end of the header. :func:`read_header` reads only the header and returns a :class:`TensorLocation` (absolute byte
offset, length, dtype, shape) per tensor, after checking that the header length fits in the file, the header
is a JSON object of well-formed entries, every tensor's data lies inside the file, no two tensors overlap and
each length equals dtype size x number of elements. Any violation raises :class:`CorruptCheckpoint` as one
line naming the file (and the tensor).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from frankeneval.errors import CorruptCheckpoint

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}

TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_DTYPES.update({k: getattr(torch, a) for k, a in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
                                                       ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"))
                     if hasattr(torch, a)})


def torch_dtype(st_dtype: str) -> torch.dtype:
    """torch dtype of a safetensors dtype string."""
    return TORCH_DTYPES[st_dtype]


@dataclass(frozen=True)
class TensorLocation:
    """Where one tensor's bytes are: file, absolute byte offset, length, dtype, shape."""

    name: str
    file: Path
    offset: int  # absolute byte offset in the file
    nbytes: int
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.offset + self.nbytes

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed, checked safetensors header: its raw JSON bytes and every tensor's location, in header order."""

    path: Path
    raw: bytes
    data_start: int
    tensors: dict[str, TensorLocation]


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and check the header of the safetensors file ``path`` (reads the header only, never tensor data)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise CorruptCheckpoint(f"{path}: not a safetensors file ({size} bytes, shorter than the 8-byte "
                                        "header length)")
            n = int.from_bytes(f.read(8), "little")
            if n > size - 8 or n > MAX_HEADER_BYTES:
                raise CorruptCheckpoint(
                    f"{path}: not a safetensors file: its header length {n} does not fit in the file ({size} bytes)"
                    if n > size - 8
                    else f"{path}: safetensors header length {n} is over the {MAX_HEADER_BYTES}-byte limit"
                )
            raw = f.read(n)
    except OSError as exc:
        raise CorruptCheckpoint(f"{path}: cannot read safetensors file: {exc}") from exc
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise CorruptCheckpoint(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptCheckpoint(f"{path}: safetensors header is a JSON {type(header).__name__}, not an object")
    start = 8 + n
    tensors = {name: _location(path, name, entry, start, size) for name, entry in header.items()
               if name != "__metadata__"}
    _check_no_overlap(path, tensors.values())
    return SafetensorsHeader(path, raw, start, tensors)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _location(path: Path, name: str, entry: Any, start: int, size: int) -> TensorLocation:
    """One header entry as a location, after checking it against the file."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise CorruptCheckpoint(f"{where}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise CorruptCheckpoint(f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(s) for s in shape):
        raise CorruptCheckpoint(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise CorruptCheckpoint(f"{where}: data_offsets {offsets!r} is not a [begin, end] pair with 0 <= begin <= end")
    begin, end = offsets
    if start + end > size:
        raise CorruptCheckpoint(
            f"{where}: data bytes {begin}..{end} lie past the end of the file ({size - start} bytes of data)"
        )
    loc = TensorLocation(name, path, start + begin, end - begin, dtype, tuple(shape))
    expected = loc.numel * DTYPE_SIZES[dtype]
    if loc.nbytes != expected:
        raise CorruptCheckpoint(
            f"{where}: holds {loc.nbytes} bytes but {dtype} x {list(shape)} needs {expected}"
        )
    return loc


def _check_no_overlap(path: Path, locations) -> None:
    last: TensorLocation | None = None
    for loc in sorted((loc for loc in locations if loc.nbytes), key=lambda loc: (loc.offset, loc.end)):
        if last is not None and loc.offset < last.end:
            raise CorruptCheckpoint(f"{path}: tensors {last.name!r} and {loc.name!r} overlap "
                                    "(their bytes share the file)")
        last = loc


def pack_shards(sizes: Iterable[tuple[str, int]], shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped into shards in order: a new shard starts when the next tensor would push the current one
    past ``shard_bytes`` (a tensor larger than ``shard_bytes`` gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in sizes:
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards
