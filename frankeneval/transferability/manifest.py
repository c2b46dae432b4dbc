"""A transfer run's folder: the splits, the cell list, the manifest (``transfer.json``) and the folder's lock.

Layout and resuming: :mod:`frankeneval.transferability.transfer`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frankeneval.core.locks import file_lock
from frankeneval.core.outdir import claim_for
from frankeneval.core.results import safe_name, write_json_atomic
from frankeneval.errors import FrankenevalError

__all__ = [
    "CELL_FIELDS",
    "DEFAULT_SPLITS",
    "DEFAULT_TASKS",
    "MANIFEST",
    "REFERENCE_LABELS",
    "REFERENCE_ORDER",
    "RUN_LOCK",
    "SPLITS",
    "STORE",
    "Cell",
    "patch_manifest",
    "plan_cells",
    "read_manifest",
    "record_skipped_inputs",
    "run_folder",
    "split_tasks",
    "update_manifest",
]

# the paper's splits as lmms-eval task groups (tasks/groups/franken_*.yaml); v1 is the default
SPLITS: dict[str, tuple[str, ...]] = {
    "v1": ("franken_perception", "franken_alignment", "franken_reasoning"),
    "v2": ("franken_v2_perception", "franken_v2_vision_reasoning", "franken_v2_reasoning"),
}
DEFAULT_SPLITS = "v1"
DEFAULT_TASKS: tuple[str, ...] = SPLITS[DEFAULT_SPLITS]
MANIFEST = "transfer.json"
STORE = "cells.jsonl"
# a cells.jsonl record without one of them, or with one of another type, is not a finished cell
CELL_FIELDS = {"model": str, "task": str, "results": str}
REFERENCE_LABELS = {"base": "Base", "in": "IN", "rl": "RL"}
REFERENCE_ORDER: tuple[str, ...] = ("base", "in", "rl")  # rows before the variants
RUN_LOCK = ".frankeneval.lock"


def split_tasks(splits: str) -> list[str]:
    """The task groups of ``--splits``: ``v1``, ``v2`` or ``both`` (v1's groups, then v2's)."""
    key = str(splits).strip().lower()
    if key == "both":
        return [*SPLITS["v1"], *SPLITS["v2"]]
    if key not in SPLITS:
        raise FrankenevalError(f"--splits {splits!r}: choose v1, v2 or both")
    return list(SPLITS[key])


@dataclass(frozen=True)
class Cell:
    """One (model, task) pair of the leaderboard."""

    model: str
    task: str

    @property
    def key(self) -> str:
        return f"{self.model}::{self.task}"

    @property
    def slug(self) -> str:
        """The task part as a folder name (a comma list of tasks is one cell; lmms-eval splits paths on commas)."""
        return self.task.replace(",", "+")

    def relpath(self) -> Path:
        return Path("cells") / self.model / self.slug


def plan_cells(models: Iterable[str], tasks: Iterable[str]) -> list[Cell]:
    """Every (model, task) pair, model-major (so a model's cells run next to each other)."""
    tasks = list(tasks)
    return [Cell(m, t) for m in models for t in tasks]


# -- transfer.json ----------------------------------------------------------------------------------
def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's manifest; ``{}`` when there is none yet."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FrankenevalError(f"{path}: unreadable run manifest ({type(exc).__name__}); delete it and rerun "
                               "`frankeneval transfer` to rewrite it") from None
    if not isinstance(data, dict):
        raise FrankenevalError(f"{path}: the run manifest is not a JSON object; delete it and rerun "
                               "`frankeneval transfer`")
    return data


def _write(run_dir: Path, data: Mapping[str, Any]) -> None:
    write_json_atomic(run_dir / MANIFEST, data, indent=2, ensure_ascii=False)


def _merged_order(old: Sequence[str], models: Iterable[str]) -> list[str]:
    """Base, IN and RL first, then the variants in the order they were first run."""
    order = list(old)
    order += [m for m in models if m not in order]
    return [m for m in REFERENCE_ORDER if m in order] + [m for m in order if m not in REFERENCE_ORDER]


def update_manifest(run_dir: Path, recipe: str | None, models: Mapping[str, Mapping[str, str]], tasks: Sequence[str],
                    settings: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
                    plan: Sequence[str] = ()) -> dict[str, Any]:
    """Merge this run's models, tasks and settings into the manifest; returns what was written. ``plan``: every
    model the run will evaluate, also those not materialized yet (``--evict-variants``): they join ``order``, so a
    report of an interrupted run lists their cells as missing instead of leaving them out."""
    old = read_manifest(run_dir)
    merged_models = dict(old.get("models") or {})
    merged_models.update({k: dict(v) for k, v in models.items()})
    all_tasks = list(old.get("tasks") or [])
    all_tasks += [t for t in tasks if t not in all_tasks]
    data = {"recipe": recipe or old.get("recipe"), "models": merged_models,
            "order": _merged_order(old.get("order") or [], [*models, *plan]), "tasks": all_tasks,
            "settings": dict(settings)}
    if old.get("skipped_inputs"):  # items earlier cells left out as broken (kept: those cells ran without them)
        data["skipped_inputs"] = old["skipped_inputs"]
    if extra:  # top-level keys of this run (``evict_variants``); absent otherwise, as before
        data.update(extra)
    _write(run_dir, data)
    return data


def record_skipped_inputs(run_dir: Path, skipped: Sequence[Mapping[str, Any]]) -> None:
    """Add the items left out as broken (``{"task", "id", "path", "reason"}``) to the manifest's ``skipped_inputs``."""
    if not skipped:
        return
    data = read_manifest(run_dir)
    known = {(s.get("task"), s.get("id")): dict(s) for s in data.get("skipped_inputs") or [] if isinstance(s, dict)}
    known.update({(s["task"], s["id"]): dict(s) for s in skipped})
    data["skipped_inputs"] = list(known.values())
    _write(run_dir, data)


def patch_manifest(run_dir: Path, updates: Mapping[str, Mapping[str, Any]]) -> None:
    """Set fields of model entries of the manifest (a None value removes the field); the rest is kept as is."""
    data = read_manifest(run_dir)
    entries = dict(data.get("models") or {})
    for label, fields in updates.items():
        entry = dict(entries.get(label) or {})
        for key, value in fields.items():
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = value
        entries[label] = entry
    data["models"] = entries
    _write(run_dir, data)


# -- the run folder ---------------------------------------------------------------------------------
@contextmanager
def run_folder(run_dir: str | os.PathLike, labels: Iterable[str], tasks: Iterable[str]) -> Iterator[tuple[Path, int]]:
    """(the absolute run folder, its lock's descriptor) for the block: names and folder checked, folder made,
    its lock held (a second run fails at once naming the first's pid)."""
    for label in labels:
        safe_name(label, "model / variant name")
    for task in tasks:
        safe_name(Cell("m", str(task)).slug, "task name")
    # new, empty, or transfer's own (its manifest or run store, or the output marker): the one output-folder guard
    run_dir = claim_for("transfer", run_dir).path
    with file_lock(run_dir / RUN_LOCK, wait=False, what=f"run folder {run_dir}") as fd:
        yield run_dir, fd
