"""The transferability report: the paper's table, the paired transitions, then the leaderboard.

**The paper's table** (first): per split (v1, v2, ...) model x M_vis (perception: image vs black image, n_TF / N),
M_v2r (alignment and v2 vision+reasoning: image vs black image + description, n_TT / N) and M_rea (reasoning
accuracy), each with a 95 % percentile-bootstrap interval over items, and its difference to IN with a paired
bootstrap interval; then **the transitions** (n_TT / n_TF / n_FT / n_FF, net gain, side-effect and lift rates) per
model x split part. Both come from the per-item correctness in lmms-eval's samples files, paired by doc id
(:mod:`frankeneval.transferability.metrics`): the task's primary score, ``judge_acc`` when the judge ran (rules
first, then the judge), else ``rule_acc``; items unscored on either side (judge errors) are excluded from N and
counted. A split part is found by name: a leaf task and its control ``<task>_black`` (perception) or
``<task>_blackdesc`` (alignment, vision+reasoning); a reasoning task stands alone. Every row shows the system prompt
the cells recorded (``system_prompt`` of the cell records; "—" when none was recorded).

**The leaderboard**: Base, IN, RL and each Frankenstein variant x perception / alignment / reasoning.

Reads every finished cell of a transfer run (:mod:`frankeneval.transferability.transfer`): lmms-eval's results file gives each
leaf task's score (``rule_acc``, and ``judge_acc`` when the judge ran), its samples file the per-sample
correctness from which the sample count and a seeded 95 % percentile-bootstrap interval are computed.

Columns: a task maps to a dimension from its name (``perception``, ``alignment``, ``reasoning`` for MATH-500 /
GSM8K / reasoning tasks) and a condition (the image; the controls ``black`` and ``black+desc``). Each
entry shows the score, its interval, and its difference to IN and to RL; the best row per column is marked.

Formats: ``md`` (a table per metric), ``csv`` (tidy: one line per model x column x metric), ``html`` (one
self-contained page: tables, a bar chart and the layer plots of characterization / localization runs, all
images embedded as data URIs) and ``latex`` (booktabs).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from frankeneval.errors import FrankenevalError
from frankeneval.core.results import atomic_write_text
from frankeneval.transferability.metrics import BOOTSTRAP_SAMPLES

__all__ = [
    "FORMATS",
    "METRICS",
    "Column",
    "Entry",
    "Leaderboard",
    "bootstrap_ci",
    "build_leaderboard",
    "find_plots",
    "read_item_table",
    "render",
    "split_parts",
    "task_column",
    "task_split",
    "write_report",
]

FORMATS: tuple[str, ...] = ("md", "csv", "html", "latex")
METRICS: tuple[str, ...] = ("rule_acc", "judge_acc")
METRIC_LABELS = {"rule_acc": "rule", "judge_acc": "judge"}
DIMENSIONS: tuple[str, ...] = ("perception", "alignment", "vision+reasoning", "reasoning")
CONDITIONS: tuple[str, ...] = ("image", "text", "black", "black+desc")


@dataclass(frozen=True)
class Column:
    """One leaderboard column: a dimension under a condition (one lmms-eval leaf task)."""

    key: str  # the leaf task name
    dimension: str
    condition: str
    label: str

    @property
    def is_control(self) -> bool:
        return self.condition in ("black", "black+desc")


@dataclass
class Entry:
    """One model's score in one column for one metric."""

    value: float | None  # the lmms-eval results file's aggregate
    n: int  # samples that carry a score
    ci: tuple[float, float] | None
    delta_in: float | None = None
    delta_rl: float | None = None
    best: bool = False
    errors: int | None = None  # judge_acc only: items the judge could not decide (judge_error), not in value / n
    hit_limit: int | None = None  # answers that hit max_new_tokens (the task's hit_limit count), when recorded


@dataclass
class Leaderboard:
    run_dir: Path
    rows: list[str]  # model labels, IN and RL first
    descriptions: dict[str, str]
    kinds: dict[str, str]
    columns: list[Column]
    metrics: list[str]
    entries: dict[tuple[str, str, str], Entry] = field(default_factory=dict)  # (row, column key, metric)
    recipe: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # planned cell key ("model::task") -> why it is not shown
    paper_metric: str = "rule_acc"  # the per-item correctness the paper table and the transitions use
    parts: list = field(default_factory=list)  # metrics.SplitPart of the run, in table order
    paper: dict = field(default_factory=dict)  # (row, part key) -> metrics.PaperCell
    prompts: dict[str, str] = field(default_factory=dict)  # row -> the system prompt its cells recorded ("—": none)
    prompt_reasons: dict[str, str] = field(default_factory=dict)  # row -> why that prompt (when recorded)
    seed: int = 0
    skipped: list[dict] = field(default_factory=list)  # inputs left out as broken (transfer --skip-broken)

    def get(self, row: str, column: str, metric: str) -> Entry | None:
        return self.entries.get((row, column, metric))

    def row_label(self, row: str) -> str:
        return {"base": "Base", "in": "IN", "rl": "RL"}.get(row, row)

    def prompt(self, row: str) -> str:
        return self.prompts.get(row) or "—"

    def splits(self) -> list[str]:
        return list(dict.fromkeys(p.split for p in self.parts))


# -- statistics -----------------------------------------------------------------------------------
def bootstrap_ci(scores: Sequence[float], *, seed: int = 0, n_boot: int = BOOTSTRAP_SAMPLES, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``scores`` (:func:`frankeneval.transferability.metrics.bootstrap_mean_ci`)."""
    from frankeneval.transferability.metrics import bootstrap_mean_ci

    return bootstrap_mean_ci(scores, seed=seed, n_boot=n_boot, level=level)


def _sample_score(value: Any) -> float | None:
    """Per-sample correctness from a samples-file metric field: ``{"score": 0/1, ...}`` or a number."""
    if isinstance(value, dict):
        value = value.get("score")
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _sample_rows(path: Path, use: str) -> Iterable[dict]:
    """The JSON-object lines of a samples file; an unreadable file or line is named on stderr (``use``: what it is
    then left out of) and skipped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if not isinstance(row, dict):
                    _warn(f"{path}:{i}: corrupt samples line; left out of {use}")
                    continue
                yield row
    except OSError as exc:
        _warn(f"{path}: samples unreadable ({exc.strerror or exc}); left out of {use}")


def read_sample_scores(path: Path, metric: str) -> list[float]:
    """Per-sample scores of ``metric``; an unreadable file or line is named on stderr and left out (n shows it)."""
    scores = (_sample_score(row.get(metric)) for row in _sample_rows(path, "n and the interval"))
    return [s for s in scores if s is not None]


def _item_id(row: dict, value: Any) -> str | None:
    """The doc id of a samples line: the metric's own ``id``, else the doc's ``id``, else lmms-eval's ``doc_id``."""
    if isinstance(value, dict) and value.get("id") is not None:
        return str(value["id"])
    doc = row.get("doc")
    if isinstance(doc, dict) and doc.get("id") is not None:
        return str(doc["id"])
    return None if row.get("doc_id") is None else f"doc_{row['doc_id']}"


def read_item_table(path: Path, metric: str) -> dict[str, bool | None]:
    """``{doc id: correct}`` of ``metric`` in one samples file; ``None`` for an item without a score (a judge error,
    or the metric absent on that line). Unreadable files / lines are named on stderr and left out."""
    out: dict[str, bool | None] = {}
    for row in _sample_rows(path, "the paired metrics"):
        value = row.get(metric)
        key = _item_id(row, value)
        if key is None:
            continue
        s = _sample_score(value)
        out[key] = None if s is None else s >= 0.5
    return out


def _warn(msg: str) -> None:
    print(f"frankeneval: warning: {msg}", file=sys.stderr, flush=True)


# -- columns --------------------------------------------------------------------------------------
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


def _make_columns(tasks: Iterable[str]) -> list[Column]:
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
        return (col.is_control, task_split(col.key) == "v2", d, col.dimension, CONDITIONS.index(col.condition) if col.condition in CONDITIONS else 9, col.key)

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


def _prompt_label(value: Any) -> tuple[str, str]:
    """(shown label, reason) of a cell record's ``system_prompt``: a record ``{"name", "setting", "reason", "text"}``
    or a plain string."""
    if value is None or value == "":
        return "", ""
    if isinstance(value, dict):
        name = value.get("name") or value.get("setting") or ("text" if value.get("text") else "none")
        return str(name), str(value.get("reason") or "")
    text = str(value).replace("\n", " ").strip()
    return (text if len(text) <= 40 else text[:37] + "..."), ""


# -- reading a run --------------------------------------------------------------------------------
def _finished_cells(run_dir: Path, manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(records of the finished cells, {key: why} of the planned cells that are not finished), read-only.

    A corrupt or incomplete ``cells.jsonl`` line is named and skipped (the run store's one check); a planned cell
    without a record whose finished lmms-eval output is on disk (``cells/<model>/<task>``, only ever renamed into
    place once finished) is read from there, as ``transfer`` adopts it on its next run."""
    from frankeneval.core.runstore import read_records
    from frankeneval.transferability.transfer import CELL_FIELDS, STORE, find_results, plan_cells

    path = run_dir / STORE
    if not path.is_file():
        raise FrankenevalError(f"{run_dir} is not a transfer run (no {STORE}); run `frankeneval transfer` first")
    records = read_records(path, CELL_FIELDS)[1]
    missing: dict[str, str] = {}
    models = [str(m) for m in manifest.get("order") or manifest.get("models") or []]
    for cell in plan_cells(models, [str(t) for t in manifest.get("tasks") or []]):
        if cell.key in records:
            continue
        res, samples = find_results(run_dir / cell.relpath())
        if res is None:
            missing[cell.key] = "not finished"
            continue
        records[cell.key] = {"model": cell.model, "task": cell.task, "results": str(res.relative_to(run_dir)),
                             "samples": {t: str(p.relative_to(run_dir)) for t, p in sorted(samples.items())}}
    return list(records.values()), missing


def _cell_key(rec: dict[str, Any]) -> str:
    return f"{rec['model']}::{rec['task']}"


def _metric_value(metrics: dict[str, Any], metric: str) -> float | None:
    """``metric,<filter>`` from a results entry (filter ``none`` preferred)."""
    keys = [k for k in metrics if k.split(",", 1)[0] == metric and "," in k]
    keys.sort(key=lambda k: (k.split(",", 1)[1] != "none", k))
    for k in keys:
        v = metrics[k]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v) if math.isfinite(v) else None
    return None


def build_leaderboard(run_dir: str | os.PathLike, *, metrics: Sequence[str] = METRICS, seed: int = 0,
                      paper_metric: str = "auto") -> Leaderboard:
    """Collect every finished cell of ``run_dir`` into a :class:`Leaderboard` (and its paper table: ``paper_metric``
    is the per-item correctness paired, ``auto`` = ``judge_acc`` when the judge ran, else ``rule_acc``)."""
    from frankeneval.transferability.transfer import read_manifest

    run_dir = Path(run_dir).expanduser().absolute()
    try:
        manifest = read_manifest(run_dir)
    except FrankenevalError as exc:  # the finished cells are still readable from cells.jsonl
        _warn(str(exc))
        manifest = {}
    records, missing = _finished_cells(run_dir, manifest)
    if not records:
        raise FrankenevalError(f"{run_dir}: no finished cells yet")
    entries: dict[tuple[str, str, str], Entry] = {}
    tasks: set[str] = set()
    seen_models: list[str] = []
    sample_paths: dict[str, dict[str, Path]] = {}  # model -> leaf task -> samples file
    prompts: dict[str, list[tuple[str, str]]] = {}
    for rec in records:
        model = str(rec["model"])
        label = _prompt_label(rec.get("system_prompt"))
        if label[0] and label not in prompts.setdefault(model, []):
            prompts[model].append(label)
        for task, rel in (rec.get("samples") or {}).items():
            sample_paths.setdefault(model, {})[str(task)] = run_dir / str(rel)
        res_path = run_dir / str(rec["results"])
        try:
            data = json.loads(res_path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:  # shown as missing, with the reason; the other cells still render
            missing[_cell_key(rec)] = f"results unreadable: {res_path} ({getattr(exc, 'strerror', None) or exc})"
            _warn(f"{res_path}: results of {model} x {rec['task']} unreadable; shown as missing")
            continue
        for task, task_metrics in (data.get("results") or {}).items():
            for metric in metrics:
                value = _metric_value(task_metrics, metric)
                n_err = _metric_value(task_metrics, "judge_error") if metric == "judge_acc" else None
                if value is None and not n_err:  # (a cell whose every item was a judge error still shows the count)
                    continue
                sample_rel = (rec.get("samples") or {}).get(task)
                scores = read_sample_scores(run_dir / sample_rel, metric) if sample_rel else []
                entries[(model, task, metric)] = Entry(value=value, n=len(scores), ci=bootstrap_ci(scores, seed=seed))
                if metric == "judge_acc":  # judge errors are reported beside the judge's accuracy, never as wrong
                    entries[(model, task, metric)].errors = int(n_err) if n_err is not None else 0
                n_limit = _metric_value(task_metrics, "hit_limit")
                entries[(model, task, metric)].hit_limit = int(n_limit) if n_limit is not None else None
                tasks.add(task)
        if model not in seen_models:
            seen_models.append(model)
    order = [m for m in manifest.get("order", []) if m in seen_models or any(k.startswith(f"{m}::") for k in missing)]
    order += [m for m in seen_models if m not in order]
    order = [m for m in ("base", "in", "rl") if m in order] + [m for m in order if m not in ("base", "in", "rl")]
    models_info = manifest.get("models") or {}
    for m in order:  # no prompt in the cell records: the manifest's, when it names one
        info = models_info.get(m) or {}
        label = _prompt_label(info.get("system_prompt"))
        if not prompts.get(m) and label[0]:
            prompts[m] = [(label[0], label[1] or str(info.get("system_prompt_reason") or ""))]
    used_metrics = [m for m in metrics if any(k[2] == m for k in entries)]
    board = Leaderboard(
        run_dir=run_dir,
        rows=order,
        descriptions={m: str((models_info.get(m) or {}).get("description", "")) for m in order},
        kinds={m: str((models_info.get(m) or {}).get("kind", "variant" if m not in ("base", "in", "rl") else m)) for m in order},
        columns=_make_columns(tasks),
        metrics=used_metrics,
        entries=entries,
        recipe=manifest.get("recipe"),
        settings=dict(manifest.get("settings") or {}),
        missing=missing,
        prompts={m: " / ".join(lab for lab, _ in prompts.get(m, [])) for m in order},
        prompt_reasons={m: " / ".join(r for _, r in prompts.get(m, []) if r) for m in order},
        seed=seed,
        skipped=[dict(x) for x in manifest.get("skipped_inputs") or [] if isinstance(x, dict)],
    )
    _fill_deltas_and_best(board)
    _fill_paper(board, sample_paths, paper_metric)
    return board


def _fill_paper(board: Leaderboard, sample_paths: dict[str, dict[str, Path]], paper_metric: str) -> None:
    """The paper's table and the transitions (:mod:`frankeneval.transferability.metrics`) from the samples files."""
    from frankeneval.transferability.metrics import paper_cells

    if paper_metric == "auto":
        paper_metric = "judge_acc" if "judge_acc" in board.metrics else "rule_acc"
    board.paper_metric = paper_metric
    board.parts = split_parts({t for paths in sample_paths.values() for t in paths})
    needed = {t for p in board.parts for t in (p.a, p.b) if t}
    items = {m: {t: read_item_table(path, paper_metric) for t, path in sample_paths.get(m, {}).items() if t in needed}
             for m in board.rows}
    board.paper = paper_cells(items, board.parts, reference="in", seed=board.seed)


def _fill_deltas_and_best(board: Leaderboard) -> None:
    for col in board.columns:
        for metric in board.metrics:
            ref_in = board.get("in", col.key, metric)
            ref_rl = board.get("rl", col.key, metric)
            values = []
            for row in board.rows:
                e = board.get(row, col.key, metric)
                if e is None or e.value is None:
                    continue
                e.delta_in = e.value - ref_in.value if ref_in and ref_in.value is not None else None
                e.delta_rl = e.value - ref_rl.value if ref_rl and ref_rl.value is not None else None
                values.append(e.value)
            if not values:
                continue
            top = max(values)
            for row in board.rows:
                e = board.get(row, col.key, metric)
                if e is not None and e.value is not None and abs(e.value - top) < 1e-12:
                    e.best = True


# -- formatting -----------------------------------------------------------------------------------
def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _n_of(board: Leaderboard, col: Column, metric: str) -> str:
    ns = {e.n for r in board.rows if (e := board.get(r, col.key, metric)) is not None}
    return f"n={ns.pop()}" if len(ns) == 1 else "n varies"


def _cell_parts(board: Leaderboard, row: str, col: Column, metric: str, show_n: bool) -> tuple[str, str, str] | None:
    """(score, interval, deltas) strings of one entry, or None."""
    e = board.get(row, col.key, metric)
    if e is not None and e.value is None and e.errors:
        return "–", "", f"{e.errors} judge error{'s' if e.errors != 1 else ''}"
    if e is None or e.value is None:
        return None
    ci = f"[{_pct(e.ci[0])}, {_pct(e.ci[1])}]" if e.ci else ""
    deltas = []
    if row != "in" and e.delta_in is not None:
        deltas.append(f"ΔIN {_pct(e.delta_in, True)}")
    if row != "rl" and e.delta_rl is not None:
        deltas.append(f"ΔRL {_pct(e.delta_rl, True)}")
    if show_n:
        deltas.append(f"n={e.n}")
    if e.errors:
        deltas.append(f"{e.errors} judge error{'s' if e.errors != 1 else ''}")
    if e.hit_limit:
        deltas.append(f"{e.hit_limit} hit the token limit")
    return _pct(e.value), ci, ", ".join(deltas)


def _title(board: Leaderboard) -> str:
    s = board.settings
    bits = [f"recipe {board.recipe}" if board.recipe else None,
            f"sample size {s['sample_size']} (seed {s.get('sample_seed')})" if s.get("sample_size") else None]
    return "Transferability report" + (" — " + ", ".join(b for b in bits if b) if any(bits) else "")


def _legend() -> str:
    return ("Scores in % (lmms-eval results); [95 % bootstrap interval over samples]; ΔIN / ΔRL: difference to IN / RL "
            "in points; best per column in bold. Judge errors (items the judge could not decide) are left out of the "
            "judge score and counted beside it; answers that hit the token limit are counted beside the score.")


# -- the paper's table and the transitions ---------------------------------------------------------
def _short(task: str) -> str:
    return task.removeprefix("franken_")


def split_title(split: str) -> str:
    return {"v1": "Splits v1", "v2": "Splits v2", "world": "The trained world"}.get(split, f"Split {split}")


def part_label(board: Leaderboard, part) -> str:
    """``M_vis (perception)``; the task's name is added when a split has two parts of one dimension."""
    same = [p for p in board.parts if p.split == part.split and p.dimension == part.dimension]
    return f"{part.metric} ({part.dimension}{': ' + _short(part.a) if len(same) > 1 else ''})"


def _paper_n(board: Leaderboard, part) -> str | None:
    ns = {c.metric.n for r in board.rows if (c := board.paper.get((r, part.key))) is not None}
    return f"N={ns.pop()}" if len(ns) == 1 else None


def _ci(ci: tuple[float, float] | None, signed: bool = False) -> str:
    return f"[{_pct(ci[0], signed)}, {_pct(ci[1], signed)}]" if ci else ""


def paper_parts(board: Leaderboard, row: str, part) -> tuple[str, str] | None:
    """(metric text, ΔIN text) of one paper-table cell, or None when the model has no such cell."""
    cell = board.paper.get((row, part.key))
    if cell is None:
        return None
    ind = cell.metric
    bits = [_pct(ind.value), _ci(ind.ci)] if ind.value is not None else ["–"]
    extra = []
    if _paper_n(board, part) is None or ind.n == 0:
        extra.append(f"N={ind.n}")
    if ind.excluded:
        extra.append(f"{ind.excluded} excluded")
    text = " ".join(b for b in bits if b) + (f" ({', '.join(extra)})" if extra else "")
    if row == "in":
        delta = "ref"
    elif cell.diff_ref is None or cell.diff_ref.value is None:
        delta = "–"
    else:
        delta = f"{_pct(cell.diff_ref.value, True)} {_ci(cell.diff_ref.ci, True)}".strip()
    return text, delta


TRANSITION_HEADS = ("N", "excl.", "acc A", "acc B", "Δ", "TT", "TF", "FT", "FF", "net gain", "side-effect", "lift")


def _pair_label(part) -> str:
    ctl = "black" if part.b and part.b.endswith("_black") else "black+desc"
    return f"image vs {ctl}"


def transition_rows(board: Leaderboard) -> list[tuple[str, Any, list[str]]]:
    """(row, part, [N, excluded, acc A, acc B, Δ, TT, TF, FT, FF, net gain, side-effect, lift]) of every paired part."""
    out = []
    for part in board.parts:
        if part.b is None:
            continue
        for row in board.rows:
            cell = board.paper.get((row, part.key))
            if cell is None or cell.transitions is None:
                continue
            t = cell.transitions
            out.append((row, part, [str(t.n), str(t.excluded), _pct(t.acc_a), _pct(t.acc_b), _pct(t.delta, True),
                                    str(t.n_tt), str(t.n_tf), str(t.n_ft), str(t.n_ff), f"{t.net_gain:+d}",
                                    _pct(t.side_effect_rate), _pct(t.lift_rate)]))
    return out


def _paper_legend(board: Leaderboard) -> str:
    return (f"Per-item correctness: {board.paper_metric} of lmms-eval's samples files, paired by doc id; N = items "
            "scored under both settings (items unscored on either side, e.g. judge errors, or seen on one side only "
            "are excluded and counted). M_vis = n_TF / N on perception (right with the image, wrong with a black "
            "image); M_v2r = n_TT / N on alignment and vision+reasoning (right with the image and from the black "
            "image + description); M_rea = accuracy on reasoning. In %, [95 % percentile bootstrap over items, "
            f"{BOOTSTRAP_SAMPLES} resamples, seed {board.seed}]; ΔIN = model − IN in points on the items both scored, "
            "[paired bootstrap interval]. Prompt: the system prompt the cells recorded (— : none recorded).")


def _transitions_legend() -> str:
    return ("A = the image, B = its control, on the same items. TT / TF (A right, B wrong) / FT / FF: item counts; "
            "acc and Δ = acc A − acc B in %; net gain = n_FT − n_TF; side-effect = n_TF / (n_TT + n_TF); "
            "lift = n_FT / (n_FF + n_FT) (in %; – when the denominator is 0).")


def paper_markdown(board: Leaderboard) -> list[str]:
    if not board.parts:
        return []
    lines = ["## The paper's table: M_vis, M_v2r, M_rea", "", _paper_legend(board), ""]
    for split in board.splits():
        parts = [p for p in board.parts if p.split == split]
        heads = []
        for p in parts:
            n = _paper_n(board, p)
            heads += [f"{part_label(board, p)}{' ' + n if n else ''}", "ΔIN"]
        lines += [f"### {split_title(split)}", "", "| model | prompt | " + " | ".join(heads) + " |",
                  "|---|---|" + "---:|" * len(heads)]
        for row in board.rows:
            cells = []
            for p in parts:
                pp = paper_parts(board, row, p)
                cells += list(pp) if pp else ["–", "–"]
            if all(c == "–" for c in cells):
                continue
            lines.append(f"| {board.row_label(row)} | {board.prompt(row)} | " + " | ".join(cells) + " |")
        lines.append("")
    trans = transition_rows(board)
    if trans:
        lines += ["## Transitions: the image vs its control", "", _transitions_legend(), "",
                  "| model | prompt | split | part | " + " | ".join(TRANSITION_HEADS) + " |",
                  "|---|---|---|---|" + "---:|" * len(TRANSITION_HEADS)]
        for row, part, vals in trans:
            lines.append(f"| {board.row_label(row)} | {board.prompt(row)} | {part.split} | {part.dimension} "
                         f"({_pair_label(part)}) | " + " | ".join(vals) + " |")
        lines.append("")
    return lines


def paper_csv_rows(board: Leaderboard) -> list[dict[str, Any]]:
    """Tidy rows of the paper table (``table=paper``) and the transitions (``table=transitions``)."""
    out: list[dict[str, Any]] = []
    for part in board.parts:
        for row in board.rows:
            cell = board.paper.get((row, part.key))
            if cell is None:
                continue
            ind, d = cell.metric, cell.diff_ref
            base = {"model": board.row_label(row), "kind": board.kinds.get(row, ""), "prompt": board.prompt(row),
                    "prompt_reason": board.prompt_reasons.get(row, ""), "split": part.split,
                    "dimension": part.dimension, "task": part.a, "control_task": part.b or "",
                    "correctness": board.paper_metric}
            out.append({"table": "paper", **base, "metric": part.metric, "value": _num(ind.value),
                        "ci_low": _num(ind.ci[0] if ind.ci else None), "ci_high": _num(ind.ci[1] if ind.ci else None),
                        "n": ind.n, "excluded": ind.excluded,
                        "delta_in": _num(d.value if d else None), "delta_in_ci_low": _num(d.ci[0] if d and d.ci else None),
                        "delta_in_ci_high": _num(d.ci[1] if d and d.ci else None), "delta_in_n": d.n if d else ""})
            t = cell.transitions
            if t is not None:
                out.append({"table": "transitions", **base, "n": t.n, "excluded": t.excluded,
                            "excluded_unscored": t.excluded_unscored, "excluded_unpaired": t.excluded_unpaired,
                            "acc_a": _num(t.acc_a), "acc_b": _num(t.acc_b), "delta": _num(t.delta),
                            "n_tt": t.n_tt, "n_tf": t.n_tf, "n_ft": t.n_ft, "n_ff": t.n_ff, "net_gain": t.net_gain,
                            "side_effect_rate": _num(t.side_effect_rate), "lift_rate": _num(t.lift_rate),
                            "m_vis": _num(t.m_vis), "m_v2r": _num(t.m_v2r)})
    return out


def paper_latex(board: Leaderboard) -> list[str]:
    out: list[str] = []
    for split in board.splits():
        parts = [p for p in board.parts if p.split == split]
        out += [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{ll" + "rr" * len(parts) + "}",
                r"\toprule", "Model & Prompt & " + " & ".join(
                    f"{_tex(part_label(board, p))} & $\\Delta$IN" for p in parts) + r" \\",
                " & & " + " & ".join(f"{_tex(_paper_n(board, p) or 'N varies')} & " for p in parts) + r" \\",
                r"\midrule"]
        for row in board.rows:
            cells = []
            for p in parts:
                pp = paper_parts(board, row, p)
                cells += [_tex(x) for x in pp] if pp else ["--", "--"]
            out.append(f"{_tex(board.row_label(row))} & {_tex(board.prompt(row))} & " + " & ".join(cells) + r" \\")
        caption = (f"{_tex(split_title(split))}: M\\_vis = $n_{{TF}}/N$ (perception), M\\_v2r = $n_{{TT}}/N$ "
                   "(alignment, vision+reasoning), M\\_rea = accuracy (reasoning), in \\% with 95\\% bootstrap "
                   "intervals over items; $\\Delta$IN: difference to IN in points with a paired bootstrap interval; "
                   f"per-item correctness: {_tex(board.paper_metric)}.")
        out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", rf"\label{{tab:paper-{split}}}",
                r"\end{table}", ""]
    trans = transition_rows(board)
    if trans:
        out += [r"\begin{table}[t]", r"\centering", r"\scriptsize",
                r"\begin{tabular}{llll" + "r" * len(TRANSITION_HEADS) + "}", r"\toprule",
                "Model & Prompt & Split & Part & " + " & ".join(_tex(h).replace("Δ", "$\\Delta$") for h in TRANSITION_HEADS)
                + r" \\", r"\midrule"]
        for row, part, vals in trans:
            out.append(" & ".join(_tex(x) for x in (board.row_label(row), board.prompt(row), part.split,
                                                    f"{part.dimension} ({_pair_label(part)})", *vals)) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex(_transitions_legend())}}}",
                r"\label{tab:transitions}", r"\end{table}", ""]
    return out


def paper_html(board: Leaderboard) -> list[str]:
    esc = html.escape
    if not board.parts:
        return []
    parts_html = ["<h2>The paper's table: M_vis, M_v2r, M_rea</h2>", f'<p class="legend">{esc(_paper_legend(board))}</p>']
    for split in board.splits():
        parts = [p for p in board.parts if p.split == split]
        parts_html.append(f"<h3>{esc(split_title(split))}</h3>")
        parts_html.append(f'<table class="paper" id="paper-{esc(split)}"><thead><tr><th class="model">model</th>'
                          '<th class="model">prompt</th>')
        for p in parts:
            n = _paper_n(board, p)
            parts_html.append(f"<th>{esc(part_label(board, p))}<span class='ci'>{esc(n or '')}</span></th><th>ΔIN</th>")
        parts_html.append("</tr></thead><tbody>")
        for row in board.rows:
            cls = ' class="ref"' if row in ("base", "in", "rl") else ""
            reason = board.prompt_reasons.get(row, "")
            parts_html.append(f"<tr{cls}><td class='model'>{esc(board.row_label(row))}</td>"
                              f"<td class='desc' title='{esc(reason)}'>{esc(board.prompt(row))}</td>")
            for p in parts:
                pp = paper_parts(board, row, p)
                parts_html += [f"<td>{esc(x)}</td>" for x in (pp or ("–", "–"))]
            parts_html.append("</tr>")
        parts_html.append("</tbody></table>")
    trans = transition_rows(board)
    if trans:
        parts_html += ["<h2>Transitions: the image vs its control</h2>",
                       f'<p class="legend">{esc(_transitions_legend())}</p>',
                       '<table class="transitions" id="transitions"><thead><tr><th class="model">model</th>'
                       '<th class="model">prompt</th><th class="model">split</th><th class="model">part</th>'
                       + "".join(f"<th>{esc(h)}</th>" for h in TRANSITION_HEADS) + "</tr></thead><tbody>"]
        for row, part, vals in trans:
            parts_html.append(f"<tr><td class='model'>{esc(board.row_label(row))}</td><td class='desc'>"
                              f"{esc(board.prompt(row))}</td><td class='desc'>{esc(part.split)}</td><td class='desc'>"
                              f"{esc(part.dimension)} ({esc(_pair_label(part))})</td>"
                              + "".join(f"<td>{esc(v)}</td>" for v in vals) + "</tr>")
        parts_html.append("</tbody></table>")
    return parts_html


def missing_note(board: Leaderboard) -> str | None:
    """One line naming the planned cells that are not in the tables (and why), or None."""
    if not board.missing:
        return None
    items = []
    for key, why in board.missing.items():
        model, _, task = key.partition("::")
        items.append(f"{board.row_label(model)} × {task} ({why})")
    return f"Missing cells ({len(items)}; rerun `frankeneval transfer` to finish them): " + "; ".join(items)


def skipped_note(board: Leaderboard, show: int = 10) -> str | None:
    """One line naming the inputs the cells left out as broken (``transfer --skip-broken``), or None."""
    if not board.skipped:
        return None
    items = [f"{x.get('task')} {x.get('id')}: {x.get('path')} ({x.get('reason')})" for x in board.skipped[:show]]
    more = f"; ... {len(board.skipped) - show} more in transfer.json" if len(board.skipped) > show else ""
    return (f"Skipped broken inputs ({len(board.skipped)}; left out of their task's cells, --skip-broken): "
            + "; ".join(items) + more)


def to_markdown(board: Leaderboard) -> str:
    lines = [f"# {_title(board)}", ""]
    for note in (missing_note(board), skipped_note(board)):
        if note:
            lines += [f"**{note}**", ""]
    lines += paper_markdown(board)
    lines += ["## Leaderboard", "", _legend(), ""]
    for metric in board.metrics:
        varying = {c.key: _n_of(board, c, metric) == "n varies" for c in board.columns}
        heads = [f"{c.label} ({_n_of(board, c, metric)})" if not varying[c.key] else c.label for c in board.columns]
        lines.append(f"### {METRIC_LABELS.get(metric, metric)} ({metric})")
        lines.append("")
        lines.append("| model | blocks | prompt | " + " | ".join(heads) + " |")
        lines.append("|---|---|---|" + "---:|" * len(heads))
        for row in board.rows:
            cells = []
            for c in board.columns:
                parts = _cell_parts(board, row, c, metric, varying[c.key])
                if parts is None:
                    cells.append("–")
                    continue
                score, ci, deltas = parts
                e = board.get(row, c.key, metric)
                score = f"**{score}**" if e and e.best else score
                cells.append(" ".join(x for x in (score, ci, f"({deltas})" if deltas else "") if x))
            desc = board.descriptions.get(row, "") if board.kinds.get(row) == "variant" else ""
            lines.append(f"| {board.row_label(row)} | {desc.replace('|', '/')} | {board.prompt(row)} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def to_csv(board: Leaderboard) -> str:
    """One tidy CSV, ``table`` first: ``paper`` rows (model x split part: metric, interval, N, excluded, ΔIN and its
    paired interval), ``transitions`` rows (n_TT ... lift), then ``leaderboard`` rows (model x column x metric)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n", restval="")
    w.writeheader()
    for r in paper_csv_rows(board):
        w.writerow(r)
    for row in board.rows:
        for c in board.columns:
            for metric in board.metrics:
                e = board.get(row, c.key, metric)
                if e is None:
                    continue
                w.writerow({"table": "leaderboard", "model": board.row_label(row), "kind": board.kinds.get(row, ""),
                            "prompt": board.prompt(row), "prompt_reason": board.prompt_reasons.get(row, ""),
                            "description": board.descriptions.get(row, ""), "column": c.label, "task": c.key,
                            "split": task_split(c.key), "dimension": c.dimension, "condition": c.condition,
                            "metric": metric, "value": _num(e.value), "ci_low": _num(e.ci[0] if e.ci else None),
                            "ci_high": _num(e.ci[1] if e.ci else None), "n": e.n, "delta_in": _num(e.delta_in),
                            "delta_rl": _num(e.delta_rl), "best": int(e.best),
                            "judge_errors": "" if e.errors is None else e.errors,
                            "hit_limit": "" if e.hit_limit is None else e.hit_limit})
    return buf.getvalue()


CSV_FIELDS = ["table", "model", "kind", "prompt", "prompt_reason", "description", "split", "dimension", "column", "task",
              "control_task", "condition", "correctness", "metric", "value", "ci_low", "ci_high", "n", "excluded",
              "excluded_unscored", "excluded_unpaired", "delta_in", "delta_in_ci_low", "delta_in_ci_high",
              "delta_in_n", "delta_rl", "best", "judge_errors", "hit_limit", "acc_a", "acc_b", "delta", "n_tt", "n_tf", "n_ft",
              "n_ff", "net_gain", "side_effect_rate", "lift_rate", "m_vis", "m_v2r"]


def _num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _tex(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in text)


def to_latex(board: Leaderboard) -> str:
    out = [f"% {_title(board)}", "% " + _legend(), "% needs \\usepackage{booktabs}"]
    out += ["% " + note for note in (missing_note(board), skipped_note(board)) if note]
    out += paper_latex(board)
    for metric in board.metrics:
        cols = board.columns
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                r"\begin{tabular}{l" + "r" * len(cols) + "}", r"\toprule",
                "Model & " + " & ".join(_tex(c.label) for c in cols) + r" \\",
                " & " + " & ".join(_tex(_n_of(board, c, metric)) for c in cols) + r" \\", r"\midrule"]
        for i, row in enumerate(board.rows):
            if i == sum(r in ("base", "in", "rl") for r in board.rows) and 0 < i < len(board.rows):
                out.append(r"\midrule")
            cells = []
            for c in cols:
                e = board.get(row, c.key, metric)
                if e is None or e.value is None:
                    cells.append("--")
                    continue
                v = _pct(e.value)
                v = rf"\textbf{{{v}}}" if e.best else v
                ci = rf"{{\scriptsize[{_pct(e.ci[0])}, {_pct(e.ci[1])}]}}" if e.ci else ""
                d = []
                if row != "in" and e.delta_in is not None:
                    d.append(rf"{_pct(e.delta_in, True)}")
                if row != "rl" and e.delta_rl is not None:
                    d.append(rf"{_pct(e.delta_rl, True)}")
                dd = rf" {{\scriptsize({'/'.join(d)})}}" if d else ""
                cells.append(f"{v}\\,{ci}{dd}")
            out.append(_tex(board.row_label(row)) + " & " + " & ".join(cells) + r" \\")
        caption = (f"{METRIC_LABELS.get(metric, metric)} accuracy (\\%) with 95\\% bootstrap intervals; in brackets the "
                   "difference to IN / RL in points; best per column in bold.")
        out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}",
                rf"\label{{tab:transfer-{metric.replace('_', '-')}}}", r"\end{table}", ""]
    return "\n".join(out)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def find_plots(dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """PNG files under ``dirs`` (recursively; sorted, each once)."""
    seen: dict[Path, None] = {}
    for d in dirs:
        p = Path(d).expanduser()
        files = [p] if p.is_file() and p.suffix.lower() == ".png" else sorted(p.rglob("*.png")) if p.is_dir() else []
        for f in files:
            seen.setdefault(f.resolve(), None)
    return list(seen)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1b1b1b;background:#fff}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}p.legend{color:#555;font-size:13px}
table{border-collapse:collapse;margin:12px 0;font-size:14px}
th,td{border:1px solid #c9c9c9;padding:6px 10px;text-align:right;vertical-align:top}
th{background:#eef1f6}td.model,th.model{text-align:left;font-weight:600}td.desc{text-align:left;color:#555;font-size:12px}
td.best,tr.ref td.best{background:#e3f4e1;font-weight:700}span.ci,span.delta{display:block;font-size:11px;color:#666;font-weight:400}
tr.ref td{background:#fafafa}figure{display:inline-block;margin:8px;vertical-align:top}
figure img{max-width:560px;border:1px solid #ddd}figcaption{font-size:12px;color:#555}
"""


def to_html(board: Leaderboard, plots: Sequence[Path] = (), chart_png: bytes | None = None) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(_title(board))}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(_title(board))}</h1>"]
    parts += [f'<p class="missing">{esc(note)}</p>' for note in (missing_note(board), skipped_note(board)) if note]
    parts += paper_html(board)
    if board.metrics:
        parts += ["<h2>Leaderboard</h2>", f'<p class="legend">{esc(_legend())}</p>']
    for metric in board.metrics:
        parts.append(f"<h2>{esc(METRIC_LABELS.get(metric, metric))} ({esc(metric)})</h2>")
        parts.append(f'<table class="leaderboard" id="table-{esc(metric)}"><thead><tr><th class="model">model</th>'
                     '<th class="model">blocks</th><th class="model">prompt</th>')
        for c in board.columns:
            parts.append(f"<th>{esc(c.label)}<span class='ci'>{esc(_n_of(board, c, metric))}</span></th>")
        parts.append("</tr></thead><tbody>")
        for row in board.rows:
            cls = ' class="ref"' if row in ("base", "in", "rl") else ""
            desc = board.descriptions.get(row, "") if board.kinds.get(row) == "variant" else ""
            parts.append(f"<tr{cls}><td class='model'>{esc(board.row_label(row))}</td><td class='desc'>{esc(desc)}</td>"
                         f"<td class='desc'>{esc(board.prompt(row))}</td>")
            for c in board.columns:
                e = board.get(row, c.key, metric)
                varying = _n_of(board, c, metric) == "n varies"
                cp = _cell_parts(board, row, c, metric, varying)
                if cp is None or e is None:
                    parts.append("<td>–</td>")
                    continue
                score, ci, deltas = cp
                td = ' class="best"' if e.best else ""
                parts.append(f"<td{td}>{esc(score)}<span class='ci'>{esc(ci)}</span><span class='delta'>{esc(deltas)}</span></td>")
            parts.append("</tr>")
        parts.append("</tbody></table>")
    if chart_png:
        parts.append("<h2>Scores by column</h2>")
        parts.append(f'<figure><img alt="leaderboard chart" src="{_data_uri(chart_png)}"></figure>')
    if plots:
        parts.append("<h2>Layer plots (characterization and localization)</h2>")
        for p in plots:
            try:
                data = p.read_bytes()
            except OSError:
                continue
            parts.append(f'<figure><img alt="{esc(p.stem)}" src="{_data_uri(data)}"><figcaption>{esc(p.parent.name)}/{esc(p.name)}</figcaption></figure>')
    parts.append("</body></html>")
    return "\n".join(parts)


def render(board: Leaderboard, fmt: str, *, plots: Sequence[Path] = (), chart: bool = True) -> str:
    """The leaderboard as ``md``, ``csv``, ``html`` or ``latex`` text."""
    if fmt == "md":
        return to_markdown(board)
    if fmt == "csv":
        return to_csv(board)
    if fmt == "latex":
        return to_latex(board)
    if fmt == "html":
        png = None
        if chart:
            from frankeneval.reports.leaderboard_plots import leaderboard_chart_png

            png = leaderboard_chart_png(board)
        return to_html(board, plots, png)
    raise FrankenevalError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")


def default_plot_dirs(run_dir: Path) -> list[Path]:
    """Plot folders looked at by default: ``<run>/plots`` and sibling characterization / localization runs."""
    cands = [run_dir / "plots"]
    parent = run_dir.parent
    for name in ("characterize", "characterization", "localize", "localization", "localize_reasoning", "localize_vision"):
        cands.append(parent / name)
    return [c for c in cands if c.exists()]


def write_report(
    run_dir: str | os.PathLike,
    formats: Sequence[str] = FORMATS,
    *,
    out_dir: str | os.PathLike | None = None,
    plot_dirs: Sequence[str | os.PathLike] | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``report.<ext>`` for each format into ``out_dir`` (default: the run dir); returns the paths."""
    board = build_leaderboard(run_dir, seed=seed)
    out = Path(out_dir or board.run_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    plots = find_plots(default_plot_dirs(board.run_dir) if plot_dirs is None else plot_dirs)
    ext = {"md": "md", "csv": "csv", "html": "html", "latex": "tex"}
    written = {}
    for fmt in formats:
        text = render(board, fmt, plots=plots)
        path = out / f"report.{ext[fmt]}"
        atomic_write_text(path, text)
        written[fmt] = path
    return written
