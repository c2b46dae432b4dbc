"""Benchmark data: the hub dataset by default, or local files when ``FRANKENEVAL_DATA`` / a task argument points at
them.

Local layout accepted (the ``../shared/data`` shape; pass the root folder, the benchmark folder or the file)::

    gsm8k/test.jsonl                 question, answer ("… #### 42")
    math500/test.jsonl               problem, solution, answer, subject, level, unique_id
    mathvista/testmini.jsonl         MathVista rows (pid, question, image, choices, unit, precision, answer, …)
    mathvista/images/<pid>.jpg       the images (only needed by the image settings, not by the black-image controls)
    vision_probes/<task>/data.jsonl  probe pairs (see :mod:`frankeneval.evaluation.probes`)

Sub-sampling is the paper's: ``numpy.random.RandomState(seed).choice(n, k, replace=False)``, sorted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from frankeneval.errors import FrankenevalError
from frankeneval.evaluation.inputs_check import BrokenRow

__all__ = [
    "BenchmarkSource",
    "BENCHMARKS",
    "DEFAULT_SAMPLE_SIZE",
    "DEFAULT_SAMPLE_SEED",
    "DataNotFound",
    "data_root_from_env",
    "resolve_local_file",
    "Row",
    "read_jsonl",
    "row_where",
    "load_benchmark_rows",
    "subsample_indices",
    "subsample",
    "note_all_samples",
    "mathvista_image_path",
]

DEFAULT_SAMPLE_SIZE = 100
DEFAULT_SAMPLE_SEED = 123


class DataNotFound(FrankenevalError):
    """A benchmark could be read neither from a local path nor from the dataset hub."""


@dataclass(frozen=True)
class BenchmarkSource:
    """Where one benchmark lives: hub id / config / split, and its file in the local layout."""

    name: str
    hub_id: str
    hub_config: str | None
    hub_split: str
    local_file: str  # relative to the data root


BENCHMARKS: dict[str, BenchmarkSource] = {
    "gsm8k": BenchmarkSource("gsm8k", "openai/gsm8k", "main", "test", "gsm8k/test.jsonl"),
    "math500": BenchmarkSource("math500", "HuggingFaceH4/MATH-500", None, "test", "math500/test.jsonl"),
    "mathvista": BenchmarkSource("mathvista", "AI4Math/MathVista", None, "testmini", "mathvista/testmini.jsonl"),
}


def data_root_from_env() -> str | None:
    """``$FRANKENEVAL_DATA`` (empty -> None)."""
    value = os.environ.get("FRANKENEVAL_DATA", "").strip()
    return value or None


def resolve_local_file(benchmark: str, data_path: str | os.PathLike) -> Path:
    """The local JSONL of ``benchmark`` under ``data_path`` (a file, the benchmark folder or the data root)."""
    src = BENCHMARKS[benchmark]
    p = Path(data_path).expanduser()
    rel = Path(src.local_file)
    candidates = [p] if p.is_file() else [p / rel, p / rel.name]
    for c in candidates:
        if c.is_file():
            return Path(os.path.abspath(c))  # not resolve(): a symlinked file keeps its folder's images/
    raise DataNotFound(
        f"{benchmark}: no local data at {p} (looked for {', '.join(str(c) for c in candidates)}). "
        f"Either point FRANKENEVAL_DATA (or the task argument data_path) at a folder holding {src.local_file}, "
        f"or unset it to load the hub dataset {src.hub_id}"
        + (f" (config {src.hub_config})" if src.hub_config else "")
        + f", split {src.hub_split}."
    )


class Row(dict):
    """A row of a local JSONL file; ``where`` is its ``file:line`` (named when the row cannot be used)."""

    where: str = ""


def read_jsonl(path: str | os.PathLike, *, keep_broken: bool = False) -> list[dict]:
    """Rows of a JSONL file (blank lines skipped), each a :class:`Row` knowing its ``file:line``. A bad line raises
    a FrankenevalError naming it; ``keep_broken``: it becomes a
    :class:`~frankeneval.evaluation.inputs_check.BrokenRow` in its place instead (so index-based sub-samples do not
    shift; a run that selects it checks it)."""
    rows: list = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
                if not isinstance(value, dict):
                    raise TypeError(f"a JSON {type(value).__name__}, not an object")
            except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
                reason = (
                    f"not valid JSON ({exc.msg})" if isinstance(exc, json.JSONDecodeError) else f"not a row ({exc})"
                )
                if not keep_broken:
                    raise FrankenevalError(f"{path}:{i}: {reason}") from None
                rows.append(BrokenRow(f"{path}:{i}", reason))
                continue
            row = Row(value)
            row.where = f"{path}:{i}"
            rows.append(row)
    return rows


def row_where(row: Any, benchmark: str, index: int) -> str:
    """Where a benchmark row comes from: its ``file:line`` (local data), else the hub dataset and row index."""
    return getattr(row, "where", "") or f"{BENCHMARKS[benchmark].hub_id} row {index}"


def mathvista_image_path(jsonl: Path, row: dict) -> Path:
    """Absolute image path of a local MathVista row (``image`` relative to the JSONL's folder, else
    images/<pid>.jpg)."""
    rel = row.get("image") or f"images/{row['pid']}.jpg"
    return Path(os.path.abspath(jsonl.parent / rel))


def _load_hub(src: BenchmarkSource):
    try:
        import datasets

        return datasets.load_dataset(src.hub_id, src.hub_config, split=src.hub_split)
    except Exception as exc:  # offline, no such dataset, auth ...
        raise DataNotFound(
            f"{src.name}: could not load the hub dataset {src.hub_id} (split {src.hub_split}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Either make the hub reachable, "
            f"or point FRANKENEVAL_DATA (or the task argument data_path) at a folder holding {src.local_file}."
        ) from None


def load_benchmark_rows(benchmark: str, data_path: str | os.PathLike | None = None, *, keep_broken: bool = False):
    """The benchmark's rows: local JSONL rows (list of dicts) when ``data_path`` is given, else the hub Dataset.

    Local MathVista rows gain ``image_path`` (absolute path of the image, which may not exist).
    Hub MathVista rows keep the hub's ``decoded_image`` (PIL) column. ``keep_broken``: see :func:`read_jsonl`.
    """
    if benchmark not in BENCHMARKS:
        raise FrankenevalError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    if data_path is None:
        return _load_hub(BENCHMARKS[benchmark])
    path = resolve_local_file(benchmark, data_path)
    rows = read_jsonl(path, keep_broken=keep_broken)
    if benchmark == "mathvista":
        for row in rows:
            if isinstance(row, dict) and (row.get("image") or "pid" in row):  # else named when selected
                row["image_path"] = str(mathvista_image_path(path, row))
    return rows


def subsample_indices(n: int, k: int | None, seed: int = DEFAULT_SAMPLE_SEED) -> list[int]:
    """The paper's sub-sample: ``sorted(RandomState(seed).choice(n, k, replace=False))``; all when k is 0/None/≥ n."""
    if not k or k <= 0 or k >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.RandomState(seed).choice(n, k, replace=False))


def note_all_samples(k: int | None, n: int, what: str, option: str = "--samples") -> bool:
    """Say on stderr (one line) when ``k`` asks for more than the ``n`` items there are: the run uses all of them.
    Returns whether it said so."""
    if not k or k <= n:
        return False
    import sys

    print(f"frankeneval: note: {option} {k} is more than the {n} {what}; using all {n}", file=sys.stderr, flush=True)
    return True


def subsample(rows: Sequence[Any], k: int | None, seed: int = DEFAULT_SAMPLE_SEED) -> list[Any]:
    """``rows`` at :func:`subsample_indices`."""
    return [rows[i] for i in subsample_indices(len(rows), k, seed)]
