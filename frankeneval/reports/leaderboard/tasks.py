"""Task classification by name: a leaf task's dimension, condition and split; the columns and split parts."""

from __future__ import annotations

import re
from collections.abc import Iterable

from frankeneval.reports.leaderboard.model import CONDITIONS, DIMENSIONS, Column


def task_column(task: str) -> tuple[str, str]:
    """(dimension, condition) of a leaf task from its name."""
    name = task[len("franken_") :] if task.startswith("franken_") else task
    if name.endswith("_blackdesc"):
        condition, name = "black+desc", name[: -len("_blackdesc")]
    elif name.endswith("_black"):
        condition, name = "black", name[: -len("_black")]
    else:
        condition = "image"
    if "vision_reasoning" in name:
        dim = "vision+reasoning"
    else:
        for dim in ("perception", "alignment", "reasoning"):
            if dim in name:
                break
        else:
            dim = "reasoning" if re.search(r"math500|gsm8k|math", name) else name
    if dim == "reasoning" and condition == "image" and not re.search(r"mathvista|world", name):
        condition = "text"
    return dim, condition


def task_split(task: str) -> str:
    """The split a leaf task belongs to, from its name: ``v2`` (``_v2``), ``world`` (the demo's world), else ``v1``."""
    name = task[len("franken_") :] if task.startswith("franken_") else task
    if re.search(r"(^|_)v2(_|$)", name):
        return "v2"
    if name.startswith("world"):
        return "world"
    return "v1"


def make_columns(tasks: Iterable[str]) -> list[Column]:
    tasks = sorted(set(tasks))
    info = {t: task_column(t) for t in tasks}
    base_label = {t: ("v2 " if task_split(t) == "v2" else "") + (d if c in ("image", "text") else f"{d} ({c})")
                  for t, (d, c) in info.items()}
    clash = {lab for lab in base_label.values() if list(base_label.values()).count(lab) > 1}
    cols = []
    for t in tasks:
        d, c = info[t]
        label = base_label[t]
        if label in clash:
            short = t[len("franken_") :] if t.startswith("franken_") else t
            label = f"{label}: {short}"
        cols.append(Column(key=t, dimension=d, condition=c, label=label))

    def order(col: Column) -> tuple:
        d = DIMENSIONS.index(col.dimension) if col.dimension in DIMENSIONS else len(DIMENSIONS)
        cond = CONDITIONS.index(col.condition) if col.condition in CONDITIONS else 9
        return (col.is_control, task_split(col.key) == "v2", d, col.dimension, cond, col.key)

    return sorted(cols, key=order)


def split_parts(tasks: Iterable[str]) -> list:
    """The run's split parts (:class:`frankeneval.transferability.metrics.SplitPart`) from its leaf tasks, by name:
    a perception task and ``<task>_black``; an alignment or vision+reasoning task and ``<task>_blackdesc``; a
    reasoning task (MATH-500, GSM8K, the world's) alone. Ordered by split, then dimension."""
    from frankeneval.transferability.metrics import SplitPart

    tasks = set(tasks)
    parts = []
    for t in sorted(tasks):
        dim, cond = task_column(t)
        if cond not in ("image", "text"):
            continue
        if dim == "perception" and f"{t}_black" in tasks:
            parts.append(SplitPart(task_split(t), dim, t, f"{t}_black"))
        elif dim in ("alignment", "vision+reasoning") and f"{t}_blackdesc" in tasks:
            parts.append(SplitPart(task_split(t), dim, t, f"{t}_blackdesc"))
        elif dim == "reasoning" and "mathvista" not in t:
            parts.append(SplitPart(task_split(t), dim, t, None))
    split_order = ["v1", "v2"]
    return sorted(parts, key=lambda p: (split_order.index(p.split) if p.split in split_order else 9, p.split,
                                        DIMENSIONS.index(p.dimension), p.a))
