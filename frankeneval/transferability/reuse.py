"""Cells from another transfer run: ``--reuse-from RUN`` (take its identical cells) and ``--regrade`` (score its
stored responses again under another grading, without generating).

**Reuse** (:func:`reuse_cells`): a pending cell of this run is taken from ``RUN`` when ``RUN`` has a finished cell of
the same task made from the same model content -- its fingerprint (a checkpoint's weights sha, a variant's splice build
hash), never its label -- with the same system prompt and the same settings (the run stores' headers: sample size and
seed, token budget, model args, grading, judge, time limit ..., and the data's content fingerprints; only the data
folder's path may differ). Its files are hard-linked (copied where links fail) into this run's cell folder, stamped
and recorded like a cell run here, plus ``reused_from`` (the run, its label, task and cell folder). A cell of ``RUN``
under the same label whose model content, prompt or settings differ is refused, and the progress says why; the cell
then runs here.

**Regrade** (:func:`regrade_run`): every finished cell of ``RUN`` is scored again into a new run folder (never
``RUN`` itself): each model's stored responses (lmms-eval's ``*_samples_<task>.jsonl``: the raw response, and its
finish reason from the ``hit_limit`` / ``timed_out`` fields) are written to ``<out>/replay/<model>.json``
(:func:`write_replay`) and the cells run through lmms-eval as any cell, with ``franken_qwen``'s ``replay=`` model arg:
no model is loaded, each request gets its stored response back (the item and its prompt checked against the stored
ones), and the tasks' own ``process_results`` and aggregations score it under the new grading settings. A regraded
cell is so what a fresh run with those settings gives for the same responses. ``GRADING``: ``rules`` (the judge off),
``judge`` (rules first, the judge for the rest: ``--grading paper --judge``) or ``seed`` (the reference's grading, the
judge deciding every item: ``--grading seed --judge``); ``judge=False`` with ``seed`` keeps only the reference's
rules. Everything else (sample, seed, prompts, token budget, who wrote the black + description texts) is the stored
run's.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from frankeneval.errors import FrankenevalError
from frankeneval.transferability import cells
from frankeneval.transferability.manifest import (
    CELL_FIELDS,
    STORE,
    Cell,
    read_manifest,
    record_skipped_inputs,
    run_folder,
)

__all__ = ["GRADINGS", "REPLAY_DIR", "grading_settings", "regrade_run", "reuse_cells", "write_replay"]

GRADINGS = ("rules", "judge", "seed")
REPLAY_DIR = "replay"
# header keys that may differ between two runs whose cells are interchangeable (the data's content is compared)
_FREE_SETTINGS = ("data_dir",)


# -- --reuse-from -------------------------------------------------------------------------------------------------
def _read_store(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, dict]]:
    from frankeneval.core.runstore import read_records

    path = run_dir / STORE
    if not path.is_file():
        raise FrankenevalError(f"{run_dir} is not a transfer run (no {STORE})")
    return read_records(path, CELL_FIELDS)


def settings_difference(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str | None:
    """None when two run-store headers give interchangeable cells, else what differs, in words."""
    from frankeneval.core.runstore import INPUTS, input_change

    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return "no record of its settings"
    change = input_change(old.get(INPUTS), new.get(INPUTS) or {}) if (old.get(INPUTS) or new.get(INPUTS)) else None
    if change:
        return f"it was made with {change}"
    keys = sorted(k for k in set(old) | set(new) if k not in (INPUTS, *_FREE_SETTINGS) and old.get(k) != new.get(k))
    if keys:
        return "its settings differ in " + ", ".join(f"{k} ({old.get(k)!r} there, {new.get(k)!r} here)" for k in keys)
    return None


def _prompt_key(prompt: Any) -> tuple[Any, Any] | None:
    """What of a recorded system prompt shapes the answers: its name and text (not why it was chosen)."""
    if isinstance(prompt, Mapping):
        return prompt.get("name"), prompt.get("text")
    return None


def _usable(fingerprint: Any) -> bool:
    """A fingerprint that identifies content (a dict with no unknown value)."""
    return isinstance(fingerprint, Mapping) and bool(fingerprint) and all(v for v in fingerprint.values())


def reuse_cells(job: Any, source: Path) -> list[Cell]:
    """Take the pending cells of ``job`` (a :class:`.transfer._CellRun`) that ``source`` holds identically (see the
    module docstring); returns the cells still to run. Each reused cell is placed and recorded as one run here."""
    source = Path(source).expanduser().absolute()
    if source == job.run_dir:
        raise FrankenevalError(f"--reuse-from {source}: that is this run's own folder")
    header, records = _read_store(source)
    why_settings = settings_difference(header, job.store.header)
    if why_settings:
        job.progress(f"[reuse] nothing taken from {source}: {why_settings}")
        return list(job.pending)
    by_task: dict[str, list[dict]] = {}
    for rec in records.values():
        by_task.setdefault(str(rec["task"]), []).append(rec)
    skipped = [s for s in read_manifest(source).get("skipped_inputs") or [] if isinstance(s, dict)]
    left: list[Cell] = []
    for cell in job.pending:
        fingerprint = job.models[cell.model].get("fingerprint")
        prompt = _prompt_key(job.prompts[cell.model][0].record())
        rec, why = _match(source, by_task.get(cell.task, []), cell, fingerprint, prompt)
        if rec is None:
            if why:
                job.progress(f"[reuse] {cell.model} x {cell.task} not taken from {source}: {why}; running it")
            left.append(cell)
            continue
        _take(job, source, rec, cell)
        record_skipped_inputs(job.run_dir, [s for s in skipped if _covers(rec, s)])
        job.result.reused.append(cell)
    if job.result.reused:
        job.progress(f"[reuse] {len(job.result.reused)} cells taken from {source}; {len(left)} to run")
    return left


def _covers(rec: Mapping[str, Any], skipped: Mapping[str, Any]) -> bool:
    """Whether an item the source left out as broken belongs to the cell of ``rec`` (one of its samples' tasks)."""
    return str(skipped.get("task")) in {str(t) for t in (rec.get("samples") or {})} | {str(rec["task"])}


def _match(source: Path, candidates: Sequence[dict], cell: Cell, fingerprint: Any,
           prompt: Any) -> tuple[dict | None, str | None]:
    """(the source's record to take, None) or (None, why the cell of the same label was refused / None: no such
    cell)."""
    if _usable(fingerprint):
        for rec in candidates:
            if rec.get("model_fingerprint") != fingerprint or _prompt_key(rec.get("system_prompt")) != prompt:
                continue
            res = cells.finished_cell(source / Cell(str(rec["model"]), cell.task).relpath(), fingerprint)[0]
            if res is not None:
                return rec, None
    same = next((r for r in candidates if r.get("model") == cell.model), None)
    if same is None:
        return None, None
    if not _usable(fingerprint):
        return None, "the model content here is unknown (its weights could not be fingerprinted)"
    made = same.get("model_fingerprint")
    if made != fingerprint:
        from frankeneval.core.runstore import input_change

        change = (input_change({f"{cell.model} model": made}, {f"{cell.model} model": dict(fingerprint)})
                  if isinstance(made, dict) else None)
        return None, f"it was made with {change or f'other {cell.model} model content (of unknown content)'}"
    if _prompt_key(same.get("system_prompt")) != prompt:
        return None, "it was made with another system prompt"
    why = cells.finished_cell(source / cell.relpath(), fingerprint)[2]
    return None, f"its cell is not usable ({why})"


def link_tree(src: Path, dest: Path, skip: Sequence[str] = ()) -> None:
    """Hard-link (copy where links fail) every file under ``src`` to the same place under ``dest``."""
    for path in sorted(src.rglob("*")):
        if path.is_dir() or path.name in skip:
            continue
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _take(job: Any, source: Path, rec: Mapping[str, Any], cell: Cell) -> None:
    """Link the source's cell of ``rec`` into ``cell``'s folder of this run, stamp, place and record it."""
    src_cell = Cell(str(rec["model"]), cell.task)
    final = job.run_dir / cell.relpath()
    partial = final.with_name(final.name + ".partial")
    cells.clear(partial)
    partial.mkdir(parents=True)
    link_tree(source / src_cell.relpath(), partial, skip=(cells.CELL_STAMP,))
    job.record_extra[cell.key] = {**dict(job.record_extra.get(cell.key) or {}), "reused_from": {
        "run": str(source), "model": src_cell.model, "task": src_cell.task, "cell": str(src_cell.relpath()),
        "seconds": rec.get("seconds"), "finished": rec.get("finished")}}
    job._place(cell, partial, None, None, reused_from=source)


# -- --regrade ----------------------------------------------------------------------------------------------------
def grading_settings(grading: str, judge: bool | None = None, grading_mode: str | None = None) -> tuple[str, bool]:
    """``(grading, judge)`` of ``--regrade GRADING``: ``rules`` = judge off (``--grading`` paper, or seed for the
    reference's rules); ``judge`` = ``--grading paper --judge``; ``seed`` = ``--grading seed --judge``. ``judge`` /
    ``grading_mode`` (``--judge``/``--no-judge``, ``--grading``) override when given."""
    key = str(grading).strip().lower()
    if key not in GRADINGS:
        raise FrankenevalError(f"--regrade {grading!r}: choose {', '.join(GRADINGS)}")
    mode, on = {"rules": ("paper", False), "judge": ("paper", True), "seed": ("seed", True)}[key]
    if grading_mode is not None:
        if grading_mode not in ("paper", "seed"):
            raise FrankenevalError(f"grading must be paper or seed, not {grading_mode!r}")
        mode = grading_mode
    if judge is not None:
        on = bool(judge)
    if key == "rules" and on:
        raise FrankenevalError("--regrade rules turns the judge off; use --regrade judge (or seed) for the judge")
    return mode, on


def _response_text(resps: Any) -> str | None:
    """The model's raw text of a samples line's ``resps`` (``[text]`` or ``[[text]]``: one request per item)."""
    value = resps
    while isinstance(value, list):
        if not value:
            return None
        value = value[0]
    return value if isinstance(value, str) else None


def _finish_reason(row: Mapping[str, Any]) -> str | None:
    """The stored finish reason of a samples line: ``timeout`` / ``length`` / ``stop`` from its ``timed_out`` and
    ``hit_limit`` counts (``franken_qwen``'s answers carry them); None when the line says nothing."""
    if row.get("timed_out") in (1, True):
        return "timeout"
    if row.get("hit_limit") in (1, True):
        return "length"
    if row.get("hit_limit") in (0, False):
        return "stop"
    return None


def _doc_id(row: Mapping[str, Any]) -> str | None:
    """The item's own ``id`` in a samples line: a metric's ``id`` (``rule_acc``'s first), else the doc's."""
    for value in [row.get("rule_acc"), *row.values()]:
        if isinstance(value, Mapping) and value.get("id") is not None and value is not row.get("doc"):
            return str(value["id"])
    doc = row.get("doc")
    return str(doc["id"]) if isinstance(doc, Mapping) and doc.get("id") is not None else None


def _context(row: Mapping[str, Any]) -> str | None:
    """The prompt text a samples line was asked with: lmms-eval's ``input`` (its ``arguments[0]``)."""
    if isinstance(row.get("input"), str):
        return row["input"]
    args = row.get("arguments")
    return args[0] if isinstance(args, list) and args and isinstance(args[0], str) else None


def write_replay(samples: Mapping[str, Path], dest: Path) -> int:
    """Write the stored-responses file of ``franken_qwen``'s ``replay=`` (:class:`~frankeneval.model_wrappers.
    franken_qwen.ReplayResponses`) from samples files (``{task: path}``); returns the number of responses."""
    from frankeneval.core.results import write_json_atomic

    tasks: dict[str, dict[str, dict[str, Any]]] = {}
    n = 0
    for task, path in samples.items():
        docs = tasks.setdefault(str(task), {})
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    doc_id = row["doc_id"]
                except (ValueError, KeyError, TypeError):
                    raise FrankenevalError(f"{path}:{i}: not a samples line; cannot regrade this cell") from None
                # lmms-eval writes the raw response as "resps" only where it differs from "filtered_resps"
                text = _response_text(row["resps"] if "resps" in row else row.get("filtered_resps"))
                if text is None:
                    raise FrankenevalError(f"{path}:{i}: no stored response; cannot regrade this cell")
                docs[str(doc_id)] = {"id": _doc_id(row), "context": _context(row), "responses": [text],
                                     "finish_reason": _finish_reason(row)}
                n += 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(dest, {"note": "stored responses for franken_qwen replay= (frankeneval transfer --regrade)",
                             "tasks": tasks}, ensure_ascii=False)
    return n


def regrade_run(
    source: str | os.PathLike,
    out: str | os.PathLike,
    grading: str,
    *,
    judge: bool | None = None,
    grading_mode: str | None = None,
    data_dir: str | os.PathLike | None = None,
    runner: cells.CellRunner | None = None,
    gpus: int = 0,
    joint: bool | None = None,
    env: Mapping[str, str] | None = None,
    progress: Callable[[str], None] = print,
) -> Any:
    """Score every finished cell of the transfer run ``source`` again under ``grading`` (see the module docstring)
    into the run folder ``out`` (resumable as any transfer run; never ``source``). Returns a
    :class:`.transfer.TransferResult`; a failed cell is listed in it (and raised as one line after the others)."""
    from frankeneval.evaluation.prompts import SystemPrompt
    from frankeneval.transferability.transfer import TransferResult, _data_inputs, _run_cells

    source = Path(source).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    if out == source or source in out.parents or out in source.parents:
        raise FrankenevalError(f"--regrade writes a new run folder: --out {out} must lie outside {source} (and "
                               "hold it not), so its cells are never overwritten")
    mode, on = grading_settings(grading, judge, grading_mode)
    header, records = _read_store(source)
    manifest = read_manifest(source)
    if not isinstance(header, dict) or not manifest:
        raise FrankenevalError(f"{source} is not a finished transfer run (no run-store header or manifest)")
    data_dir = data_dir if data_dir is not None else header.get("data_dir")
    if data_dir is None and header.get("inputs"):
        raise FrankenevalError(f"{source} read local data; give --data (its folder)")
    from frankeneval.core.runstore import INPUTS, input_change

    change = input_change(header.get(INPUTS), _data_inputs(data_dir) or {}) if header.get(INPUTS) else None
    if change:
        raise FrankenevalError(f"the data under {data_dir} is not what {source} was run on: {change}")
    finished: dict[str, list[dict]] = {}  # label -> its finished cells' records, in the store's order
    for rec in records.values():
        cell = Cell(str(rec["model"]), str(rec["task"]))
        res, samples, why = cells.finished_cell(source / cell.relpath(), rec.get("model_fingerprint"),
                                                label=f"{cell.model} model")
        if res is None:
            progress(f"[regrade] {cell.model} x {cell.task}: left out ({why})")
            continue
        finished.setdefault(cell.model, []).append({**rec, "_samples": samples})
    if not finished:
        raise FrankenevalError(f"{source} has no finished cell to regrade")
    infos = manifest.get("models") or {}
    description = header.get("description_source") or _description_source(header, env)
    settings = dict(sample_size=header.get("sample_size"), sample_seed=header.get("sample_seed"),
                    max_new_tokens=header.get("max_new_tokens"), model_args=header.get("model_args") or None,
                    system_prompt=header.get("system_prompt"), seed_compatible=bool(header.get("seed_compatible")),
                    item_time_limit=header.get("item_time_limit"), description_source=description,
                    grading=mode, judge=on, data_dir=data_dir)
    origin = {"run": str(source), "grading": str(grading), "settings": {"grading": mode, "judge": on}}
    result = TransferResult(run_dir=out, cells=[])
    groups: dict[tuple[str, ...], list[str]] = {}  # the models' task lists (a model's cells run together)
    for label, recs in finished.items():
        groups.setdefault(tuple(r["task"] for r in recs), []).append(label)
    labels = list(finished)
    tasks_all = list(dict.fromkeys(t for recs in finished.values() for t in (r["task"] for r in recs)))
    with run_folder(out, labels, tasks_all) as (folder, fd):
        if (folder / STORE).is_file():  # before any replay file is written: only a regrade of this same run resumes
            old = _read_store(folder)[0] or {}
            if old.get("regraded_from") != str(source):
                raise FrankenevalError(f"{folder} holds another run than a regrade of {source}; use another --out")
        replay, prompts, extra = {}, {}, {}
        for label, recs in finished.items():
            samples = {t: p for r in recs for t, p in r["_samples"].items()}
            replay[label] = str(folder / REPLAY_DIR / f"{label}.json")
            n = write_replay(samples, Path(replay[label]))
            progress(f"[regrade] {label}: {n} stored responses of {len(recs)} cells")
            recorded = recs[0].get("system_prompt")
            prompts[label] = (SystemPrompt(**recorded) if isinstance(recorded, dict)
                              else SystemPrompt("unknown", None, "not recorded by the regraded run"), "none")
            for r in recs:
                extra[f"{label}::{r['task']}"] = {"regraded_from": {
                    "run": str(source), "cell": str(Cell(label, str(r["task"])).relpath()),
                    "results": r.get("results"), "grading": str(grading)}}
        for tasks, group in groups.items():
            models = {}
            for label in group:
                info = dict(infos.get(label) or {})
                info.update(fingerprint=finished[label][0].get("model_fingerprint"),
                            path=str(info.get("path") or finished[label][0].get("pretrained")))
                info.setdefault("kind", "variant")
                models[label] = {k: v for k, v in info.items()
                                 if k not in ("system_prompt", "system_prompt_reason", "splice_owner", "kept")}
            part = _run_cells(folder, models, list(tasks), recipe=manifest.get("recipe"), runner=runner, gpus=gpus,
                              joint=joint, env=env, progress=progress, _keep_fds=(fd,),
                              _manifest_extra={"regraded_from": origin}, _replay=replay, _prompts=prompts,
                              _record_extra=extra, _header_extra={"regraded_from": str(source)}, **settings)
            result.cells += part.cells
            result.ran += part.ran
            result.skipped += part.skipped
            result.failed.update(part.failed)
        skipped = [s for s in manifest.get("skipped_inputs") or [] if isinstance(s, dict)]
        record_skipped_inputs(folder, skipped)  # the stored cells ran without them, so do their regrades
    result.run_dir = folder
    if result.failed:
        first = next(iter(result.failed.items()))
        raise FrankenevalError(f"{len(result.failed)} of {len(result.cells)} regraded cells failed (rerun to retry "
                               f"them). First: {first[0]}: {first[1]}")
    return result


def _description_source(header: Mapping[str, Any], env: Mapping[str, str] | None) -> str:
    """Who wrote the stored run's black + description texts, when it did not record it: ``auto`` resolved as then
    (the judge when it was on, else the Bard captions), so the regrade's prompts are the stored ones (the replay
    checks them)."""
    judge = header.get("judge")
    if judge is None:
        environ = {**os.environ, **dict(env or {})}
        judge = str(environ.get("FRANKENEVAL_JUDGE", "")).strip().lower() in ("1", "true", "yes", "on")
        source = str(environ.get("FRANKENEVAL_DESCRIPTION_SOURCE", "auto")).strip().lower() or "auto"
        if source != "auto":
            return source
    return "judge" if judge else "caption_bard"
