"""Reading a transfer run into a :class:`Leaderboard`: the finished cells' results files give each leaf task's
score, their samples files the sample count and a seeded 95 % percentile-bootstrap interval."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frankeneval.errors import FrankenevalError
from frankeneval.reports.leaderboard.model import METRICS, Entry, Leaderboard
from frankeneval.reports.leaderboard.samples import read_sample_scores, warn
from frankeneval.reports.leaderboard.statistics import fill_deltas_and_best, fill_paper
from frankeneval.reports.leaderboard.tasks import make_columns
from frankeneval.transferability.metrics import bootstrap_mean_ci

REFERENCES = ("base", "in", "rl")


@dataclass
class _Collected:
    """What the finished cells hold, gathered cell by cell."""

    missing: dict[str, str]  # planned cell key -> why it is not shown
    entries: dict[tuple[str, str, str], Entry] = field(default_factory=dict)
    tasks: set[str] = field(default_factory=set)
    models: list[str] = field(default_factory=list)  # in the order first read
    sample_paths: dict[str, dict[str, Path]] = field(default_factory=dict)  # model -> leaf task -> samples file
    prompts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # model -> [(label, reason)]
    origins: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # (model, leaf) -> (kind, note)
    samples_missing: dict[str, str] = field(default_factory=dict)  # "model::leaf task" -> the absent file


def prompt_label(value: Any) -> tuple[str, str]:
    """(shown label, reason) of a cell record's ``system_prompt``: a record ``{"name", "setting", "reason", "text"}``
    or a plain string."""
    if value is None or value == "":
        return "", ""
    if isinstance(value, dict):
        name = value.get("name") or value.get("setting") or ("text" if value.get("text") else "none")
        return str(name), str(value.get("reason") or "")
    text = str(value).replace("\n", " ").strip()
    return (text if len(text) <= 40 else text[:37] + "..."), ""


def _finished_cells(run_dir: Path, manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(records of the finished cells, {key: why} of the planned cells that are not finished), read-only.

    A corrupt or incomplete ``cells.jsonl`` line is named and skipped (the run store's one check); a planned cell
    without a record whose finished lmms-eval output is on disk (``cells/<model>/<task>``, only ever renamed into
    place once finished) is read from there, as ``transfer`` adopts it on its next run. A planned cell is finished
    as ``transfer`` decides it (:func:`frankeneval.transferability.cells.finished_cell`: a readable results file,
    made from the model content the manifest names, where it names one); any other is missing, with the reason."""
    from frankeneval.core.runstore import read_records
    from frankeneval.transferability.cells import finished_cell
    from frankeneval.transferability.manifest import CELL_FIELDS, STORE, plan_cells

    path = run_dir / STORE
    if not path.is_file():
        raise FrankenevalError(f"{run_dir} is not a transfer run (no {STORE}); run `frankeneval transfer` first")
    records = read_records(path, CELL_FIELDS)[1]
    missing: dict[str, str] = {}
    models = [str(m) for m in manifest.get("order") or manifest.get("models") or []]
    infos = manifest.get("models") if isinstance(manifest.get("models"), dict) else {}
    for cell in plan_cells(models, [str(t) for t in manifest.get("tasks") or []]):
        info = infos.get(cell.model) if isinstance(infos.get(cell.model), dict) else {}
        expected = info.get("fingerprint")
        res, samples, why = finished_cell(run_dir / cell.relpath(), expected if isinstance(expected, dict) else None,
                                          label=f"{cell.model} model", check_model=isinstance(expected, dict))
        if why is not None:
            records.pop(cell.key, None)
            missing[cell.key] = why
            continue
        if cell.key in records:
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
    run_dir = Path(run_dir).expanduser().absolute()
    manifest = _manifest(run_dir)
    records, missing = _finished_cells(run_dir, manifest)
    if not records:
        raise FrankenevalError(f"{run_dir}: no finished cells yet")
    got = _Collected(missing)
    for rec in records:
        _read_cell(run_dir, rec, metrics, seed, got, manifest)
    order = _row_order(manifest, got)
    models_info = manifest.get("models") or {}
    _manifest_prompts(order, models_info, got.prompts)
    board = Leaderboard(
        run_dir=run_dir,
        rows=order,
        descriptions={m: str((models_info.get(m) or {}).get("description", "")) for m in order},
        kinds={m: str((models_info.get(m) or {}).get("kind", "variant" if m not in REFERENCES else m)) for m in order},
        columns=make_columns(got.tasks),
        metrics=[m for m in metrics if any(k[2] == m for k in got.entries)],
        entries=got.entries,
        recipe=manifest.get("recipe"),
        settings=dict(manifest.get("settings") or {}),
        missing=got.missing,
        prompts={m: " / ".join(lab for lab, _ in got.prompts.get(m, [])) for m in order},
        prompt_reasons={m: " / ".join(r for _, r in got.prompts.get(m, []) if r) for m in order},
        seed=seed,
        skipped=[dict(x) for x in manifest.get("skipped_inputs") or [] if isinstance(x, dict)],
        samples_missing=got.samples_missing,
    )
    board.origins, board.origin_notes = _origin_marks(got.origins, order)
    fill_deltas_and_best(board)
    fill_paper(board, got.sample_paths, paper_metric)
    return board


def _manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest; ``{}`` (named on stderr) when unreadable: the finished cells are still in cells.jsonl."""
    from frankeneval.transferability.manifest import read_manifest

    try:
        return read_manifest(run_dir)
    except FrankenevalError as exc:
        warn(str(exc))
        return {}


def _read_cell(run_dir: Path, rec: dict[str, Any], metrics: Sequence[str], seed: int, got: _Collected,
               manifest: dict[str, Any] | None = None) -> None:
    """Add one finished cell's prompt, samples files, entries and origin (reused / regraded) to ``got``."""
    from frankeneval.transferability.cells import cell_origin
    from frankeneval.transferability.manifest import Cell

    model = str(rec["model"])
    note = origin_note(cell_origin(run_dir / Cell(model, str(rec["task"])).relpath(), rec), manifest or {})
    label = prompt_label(rec.get("system_prompt"))
    if label[0] and label not in got.prompts.setdefault(model, []):
        got.prompts[model].append(label)
    for task, rel in (rec.get("samples") or {}).items():
        path = run_dir / str(rel)
        if not path.is_file():  # e.g. a copy of the run without them: named in the report, never a silent N = 0
            got.samples_missing[f"{model}::{task}"] = str(path)
            continue
        got.sample_paths.setdefault(model, {})[str(task)] = path
    data = _read_results(run_dir, rec, got.missing)
    if data is None:
        return
    for task, task_metrics in (data.get("results") or {}).items():
        for metric in metrics:
            entry = _entry(run_dir, rec, task, task_metrics, metric, seed)
            if entry is not None:
                got.entries[(model, task, metric)] = entry
                got.tasks.add(task)
                if note is not None:
                    got.origins[(model, task)] = note
    if model not in got.models:
        got.models.append(model)


def _read_results(run_dir: Path, rec: dict[str, Any], missing: dict[str, str]) -> dict | None:
    """A cell's results file; None when unreadable (then shown as missing, with the reason)."""
    res_path = run_dir / str(rec["results"])
    try:
        data = json.loads(res_path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:  # the other cells still render
        missing[_cell_key(rec)] = f"results unreadable: {res_path} ({getattr(exc, 'strerror', None) or exc})"
        warn(f"{res_path}: results of {rec['model']} x {rec['task']} unreadable; shown as missing")
        return None
    return data


def _entry(run_dir: Path, rec: dict[str, Any], task: str, task_metrics: dict[str, Any], metric: str,
           seed: int) -> Entry | None:
    """One task's ``metric`` entry; None when the results file has neither a score nor judge errors."""
    value = _metric_value(task_metrics, metric)
    n_err = _metric_value(task_metrics, "judge_error") if metric == "judge_acc" else None
    n_time = _metric_value(task_metrics, "timed_out")  # --item-time-limit: left out of the score, counted here
    if value is None and not n_err and not n_time:  # (every item a judge error, or timed out: the count shows)
        return None
    sample_rel = (rec.get("samples") or {}).get(task)
    sample_path = run_dir / str(sample_rel) if sample_rel else None
    scores = read_sample_scores(sample_path, metric) if sample_path is not None and sample_path.is_file() else []
    entry = Entry(value=value, n=len(scores), ci=bootstrap_mean_ci(scores, seed=seed))
    if metric == "judge_acc":  # judge errors are reported beside the judge's accuracy, never as wrong
        entry.errors = int(n_err) if n_err is not None else 0
    n_limit = _metric_value(task_metrics, "hit_limit")
    entry.hit_limit = int(n_limit) if n_limit is not None else None
    entry.timed_out = int(n_time) if n_time is not None else None
    return entry


def _row_order(manifest: dict[str, Any], got: _Collected) -> list[str]:
    """The rows: the manifest's order (models with a cell or a missing one), then the rest; Base, IN, RL first."""
    order = [m for m in manifest.get("order", [])
             if m in got.models or any(k.startswith(f"{m}::") for k in got.missing)]
    order += [m for m in got.models if m not in order]
    return [m for m in REFERENCES if m in order] + [m for m in order if m not in REFERENCES]


def _manifest_prompts(order: list[str], models_info: dict[str, Any], prompts: dict[str, list[tuple[str, str]]]) -> None:
    """A row with no prompt in its cell records takes the manifest's, when it names one."""
    for m in order:
        info = models_info.get(m) or {}
        label = prompt_label(info.get("system_prompt"))
        if not prompts.get(m) and label[0]:
            prompts[m] = [(label[0], label[1] or str(info.get("system_prompt_reason") or ""))]


# -- cells not run here: --reuse-from and --regrade, as the run recorded them ----------------------------------------
ORIGIN_SYMBOLS = {"reused": "†", "regraded": "‡"}


def grading_words(mode: Any, judge: Any) -> str:
    """A grading setting in words: ``paper`` / ``seed`` with the judge on or off (None: as the environment set it)."""
    if mode == "seed":
        return {True: "the reference's grading, the judge deciding every item", False: "the reference's rules, "
                "no judge"}.get(judge, "the reference's grading, the judge as the environment set it")
    return {True: "rules first, then the judge", False: "rules only, no judge"}.get(
        judge, f"grading {mode or 'paper'}, the judge as the environment set it")


def origin_note(origin: dict[str, Any], manifest: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, footnote) of a cell's recorded origin (:func:`frankeneval.transferability.cells.cell_origin`): kind
    ``reused`` (``--reuse-from``) or ``regraded`` (``--regrade``); None for a cell run here."""
    reused, regraded = origin.get("reused_from"), origin.get("regraded_from")
    if reused and reused.get("run"):
        text = f"taken from the run {reused['run']} by --reuse-from (the same model content, task and settings; " \
               "not run here)"
        if reused.get("first_run"):
            text += f"; that run had taken it from {reused['first_run']}"
        return "reused", text
    if regraded and regraded.get("run"):
        settings = regraded.get("settings") or (manifest.get("regraded_from") or {}).get("settings") or {}
        if not settings:  # a regrade recorded before the cells named it: the run's own settings are the regrade's
            settings = manifest.get("settings") or {}
        grading = regraded.get("grading")
        text = (f"re-scored by --regrade{' ' + str(grading) if grading else ''} "
                f"({grading_words(settings.get('grading'), settings.get('judge'))}) from the responses stored in the "
                f"run {regraded['run']}")
        stored = regraded.get("stored_settings")
        if isinstance(stored, dict) and stored.get("grading"):
            text += f" (graded there with {grading_words(stored.get('grading'), stored.get('judge'))})"
        if regraded.get("responses_from"):
            text += f", generated by the run {regraded['responses_from']}"
        return "regraded", text + "; nothing generated"
    return None


def _origin_marks(origins: dict[tuple[str, str], tuple[str, str]],
                  order: Sequence[str]) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    """The marks of the reused / regraded entries and their footnotes: one mark per distinct footnote, ``†`` reused,
    ``‡`` regraded, numbered (``†1``, ``†2``) when a kind has several."""
    rank = {m: i for i, m in enumerate(order)}
    notes: dict[tuple[str, str], None] = {}
    for key in sorted(origins, key=lambda k: (rank.get(k[0], len(rank)), k[1])):
        notes.setdefault(origins[key], None)
    marks: dict[tuple[str, str], str] = {}
    for kind, symbol in ORIGIN_SYMBOLS.items():
        of_kind = [n for n in notes if n[0] == kind]
        for i, note in enumerate(of_kind, 1):
            marks[note] = symbol + (str(i) if len(of_kind) > 1 else "")
    return ({k: marks[v] for k, v in origins.items()},
            {marks[n]: n[1] for kind in ORIGIN_SYMBOLS for n in notes if n[0] == kind})
