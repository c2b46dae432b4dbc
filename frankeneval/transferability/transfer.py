"""Transferability: evaluate Base, IN, RL and every Frankenstein variant on the task groups, cell by cell.

A *cell* is one (model, task) pair; the model is ``base`` (when the recipe names one), ``in``, ``rl`` or a variant
of the recipe, the task an lmms-eval task or group. The splits (docs/method.md §6) are task groups
(:data:`SPLITS`): ``v1`` = ``franken_perception``, ``franken_alignment``, ``franken_reasoning`` (the default);
``v2`` = ``franken_v2_perception``, ``franken_v2_vision_reasoning``, ``franken_v2_reasoning``; each MathVista group
holds the image setting and its controls (black, black + description), from which the report pairs per item
(:mod:`frankeneval.transferability.metrics`). Each
variant is materialized once through :func:`frankeneval.transferability.splice.materialize_cached`. Each cell runs
lmms-eval in a subprocess::

    python -m lmms_eval --model franken_qwen --model_args pretrained=<dir>,batch_size=...
        --tasks <task> --include_path <frankeneval tasks> --output_path <run>/cells/<model>/<task> --log_samples

with the run directory as working directory (so a source checkout never shadows the installed package).

Run layout (``run_dir``)::

    transfer.json                  manifest: recipe, models (label -> checkpoint, kind, phrase), tasks, settings
    cells.jsonl                    run store: one line per finished cell (frankeneval.core.runstore.RunStore)
    cells/<model>/<task>/          lmms-eval output (<model name>/<date>_results.json, _samples_<task>.jsonl)
    logs/<model>__<task>.log       the cell's lmms-eval output

**Resumable**: a cell writes into ``<task>.partial`` first and is renamed into place only after lmms-eval
finished and wrote its results file; then the cell is appended to the run store. A rerun after a crash or
Ctrl-C skips recorded cells, adopts a renamed-but-unrecorded cell, and restarts unfinished ones from
scratch. ``gpus=N`` runs N cells at a time, one lmms-eval process per GPU (``CUDA_VISIBLE_DEVICES``).

**Disk** (``evict_variants``, ``--evict-variants``): the variants are materialized ``max(1, gpus)`` at a time and
each one this run materialized is deleted once its cells ran, so the disk holds Base / IN / RL plus that many
variants (a 7B variant is 16.6 GB); a splice that was in the cache before is never deleted (:func:`_run_evicting`).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frankeneval.errors import FrankenevalError
from frankeneval.core.grading import JudgeNotAnswering
from frankeneval.core.inputs_check import BrokenInput
from frankeneval.core.locks import file_lock, run_child, start_child, stop_child
from frankeneval.core.paths import harness_tasks_dir
from frankeneval.core.results import safe_name, write_json_atomic
from frankeneval.core.runstore import RunStore

__all__ = [
    "DEFAULT_TASKS",
    "SPLITS",
    "Cell",
    "CellFailed",
    "CellJob",
    "TransferResult",
    "find_results",
    "lmms_eval_runner",
    "plan_cells",
    "prepare_models",
    "read_manifest",
    "run_cells",
    "run_transfer",
    "split_tasks",
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
CELL_FIELDS = ("model", "task", "results")  # a cells.jsonl record without one of them is not a finished cell
REFERENCE_LABELS = {"base": "Base", "in": "IN", "rl": "RL"}
REFERENCE_ORDER: tuple[str, ...] = ("base", "in", "rl")  # rows before the variants


def split_tasks(splits: str) -> list[str]:
    """The task groups of ``--splits``: ``v1``, ``v2`` or ``both`` (v1's groups, then v2's)."""
    key = str(splits).strip().lower()
    if key == "both":
        return [*SPLITS["v1"], *SPLITS["v2"]]
    if key not in SPLITS:
        raise FrankenevalError(f"--splits {splits!r}: choose v1, v2 or both")
    return list(SPLITS[key])


class CellFailed(FrankenevalError):
    """One (model, task) cell's lmms-eval run failed."""


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


@dataclass
class CellJob:
    """Everything a cell runner needs: write lmms-eval output for ``cell`` under ``output_dir``."""

    cell: Cell
    pretrained: str
    output_dir: Path
    run_dir: Path
    log_path: Path
    model_args: str
    include_path: str
    gen_kwargs: str | None
    env: dict[str, str]
    keep_fds: tuple[int, ...] = ()  # the run folder's lock: the child holds it while it lives


CellRunner = Callable[[CellJob], None]


@dataclass
class TransferResult:
    run_dir: Path
    cells: list[Cell]
    ran: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cell key -> error


# -- lmms-eval output -----------------------------------------------------------------------------
def find_results(cell_dir: Path) -> tuple[Path | None, dict[str, Path]]:
    """The newest ``*_results.json`` under ``cell_dir`` and its ``*_samples_<task>.jsonl`` files.

    lmms-eval 0.7.3 writes ``<output_path>/<sanitized model name>/<date_id>_results.json`` and
    ``<date_id>_samples_<task>.jsonl`` (one per evaluated task, the date id shared).
    """
    if not cell_dir.is_dir():
        return None, {}
    results = sorted(cell_dir.rglob("*_results.json"), key=lambda p: p.name)
    if not results:
        return None, {}
    res = results[-1]
    date_id = res.name[: -len("_results.json")]
    prefix = f"{date_id}_samples_"
    samples = {p.name[len(prefix) : -len(".jsonl")]: p for p in res.parent.glob(f"{prefix}*.jsonl")}
    return res, samples


# -- the default runner: lmms-eval in a subprocess -----------------------------------------------
def lmms_eval_command(job: CellJob) -> list[str]:
    cmd = [
        sys.executable, "-m", "lmms_eval",
        "--model", "franken_qwen",
        "--model_args", job.model_args,
        "--tasks", job.cell.task,
        "--include_path", job.include_path,
        "--output_path", str(job.output_dir),
        "--log_samples",
    ]  # fmt: skip
    if job.gen_kwargs:
        cmd += ["--gen_kwargs", job.gen_kwargs]
    return cmd


def lmms_eval_runner(job: CellJob) -> None:
    """Run one cell as ``python -m lmms_eval`` (cwd = run dir); output to ``job.log_path``."""
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = lmms_eval_command(job)
    with open(job.log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        # own process group, SIGKILL when we die (Linux), whole group killed on Ctrl-C; it inherits the run
        # folder's lock, so a rerun cannot start while a child of a killed run still writes into its cell
        rc = run_child(cmd, cwd=job.run_dir, env=job.env, stdout=log, stderr=subprocess.STDOUT, pass_fds=job.keep_fds)
    if rc != 0:
        raise CellFailed(f"lmms-eval exited with {rc}; {_log_tail(job.log_path)}")
    # lmms-eval logs evaluation errors and still exits 0: the results file is the proof of success
    if find_results(job.output_dir)[0] is None:
        raise CellFailed(f"lmms-eval wrote no results file; {_log_tail(job.log_path)}")


# -- the harness tasks' check of their inputs, before the first cell --------------------------------
PREFLIGHT_MODULE = "frankeneval.tasks.preflight"
_PREFLIGHT_ERRORS: dict[str, type[FrankenevalError]] = {"BrokenInput": BrokenInput, "JudgeNotAnswering": JudgeNotAnswering}


def harness_preflight(tasks: Sequence[str], env: Mapping[str, str]) -> tuple[list[dict] | None, FrankenevalError | None]:
    """``(skipped items, error)`` of the tasks' own check before a run (:mod:`frankeneval.tasks.preflight`): every
    row and image the cells of ``tasks`` will select, read in the cells' environment ``env``, then the judge asked
    once when ``env`` turns it on. Like the cells, it runs as a child process (``python -m``): transfer never imports
    the tasks' code. ``skipped``: the items ``skip_broken`` leaves out (None when the check itself stopped);
    ``error``: :class:`BrokenInput`, :class:`JudgeNotAnswering` or another one-line :class:`FrankenevalError`."""
    proc = start_child([sys.executable, "-m", PREFLIGHT_MODULE, *tasks], env=dict(env), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
    try:
        out, err = proc.communicate()
    except BaseException:
        stop_child(proc)
        raise
    answer = None
    for line in reversed(out.splitlines()):
        try:
            answer = json.loads(line)
            break
        except ValueError:
            continue
    if proc.returncode != 0 or not isinstance(answer, dict):
        tail = " | ".join(ln.strip()[:300] for ln in err.strip().splitlines()[-3:])
        raise FrankenevalError(f"checking the tasks' inputs failed ({PREFLIGHT_MODULE} exited with {proc.returncode}): "
                               f"{tail or 'no output'}")
    error = answer.get("error")
    if error:
        error = _PREFLIGHT_ERRORS.get(str(error.get("type")), FrankenevalError)(str(error.get("message")))
    return answer.get("skipped"), error or None


def _log_tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").split("\n") if ln.strip()]
    except OSError:
        return f"see {path}"
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    tail = (errors or lines)[-n:]
    return f"see {path}: " + " | ".join(t.strip()[:300] for t in tail)


# -- models ---------------------------------------------------------------------------------------
def _resolve_local(ref: str) -> str:
    from frankeneval.weights.checkpoint import resolve
    from frankeneval.transferability.mergespec import resolve_ref

    return str(resolve(resolve_ref(ref))[0])


def _load_recipe(recipe: Any, models: Mapping[str, str] | None):
    """A :class:`frankeneval.transferability.recipes.Recipe` from a Recipe, a built-in name, a recipe YAML or a spec YAML."""
    from frankeneval.transferability.recipes import Recipe, get_recipe

    if isinstance(recipe, Recipe):
        return recipe.with_models(dict(models)) if models else recipe
    text = str(recipe)
    try:
        return get_recipe(text, models=models)
    except FrankenevalError:
        path = Path(text).expanduser()
        if not path.is_file():
            raise
    # a single merge-spec file: one variant, its sources are IN and RL
    from frankeneval.transferability.mergespec import MergeSpec

    spec = MergeSpec.from_yaml(path, sources=dict(models) if models else None)
    name = spec.name or path.stem
    if not {"in", "rl"} <= set(spec.sources):
        raise FrankenevalError(f"{path}: the spec names no 'in' and 'rl' sources to compare against")
    return Recipe(name=name, models=dict(spec.sources), variants={name: spec}, n_layers=spec.n_layers,
                  definitions={name: spec.phrase or spec.describe()})


def prepare_models(
    recipe: Any,
    *,
    variants: Sequence[str] | None = None,
    models: Mapping[str, str] | None = None,
    splice_cache: str | os.PathLike | None = None,
    progress: Callable[[str], None] = print,
    allow_pickle: bool = False,
) -> tuple[str, dict[str, dict[str, str]]]:
    """(recipe name, {label: {"path", "kind", "description"}}) for Base (when the recipe names a ``base``), IN,
    RL and the chosen variants.

    Variants are materialized (cached by spec and source contents) one after the other.
    """
    from frankeneval.transferability.splice import materialize_cached

    rec, chosen = _recipe_variants(recipe, variants, models)
    out = _reference_models(rec)
    for i, v in enumerate(chosen, 1):
        spec = rec.variant(v)
        progress(f"[splice {i}/{len(chosen)}] {v}: {rec.definitions.get(v, spec.describe())}")
        path = materialize_cached(spec, splice_cache, progress=False, allow_pickle=allow_pickle)
        out[v] = _variant_info(rec, v, path)
    return rec.name, out


def _recipe_variants(recipe: Any, variants: Sequence[str] | None, models: Mapping[str, str] | None):
    """(the recipe, the chosen variant names), each name checked (a clear error naming the choices)."""
    rec = _load_recipe(recipe, models)
    chosen = list(rec.variants) if variants is None else list(variants)
    for v in chosen:
        rec.variant(v)  # clear error naming the choices
    return rec, chosen


def _reference_models(rec: Any) -> dict[str, dict[str, str]]:
    """{label: {"path", "kind", "description"}} of Base (when the recipe names one), IN and RL."""
    out: dict[str, dict[str, str]] = {}
    if rec.models.get("base"):  # the paper's tables have a Base row
        out["base"] = {"path": _resolve_local(rec.models["base"]), "kind": "base",
                       "description": f"Base ({rec.models['base']})"}
    for kind in ("in", "rl"):
        if kind not in rec.models:
            raise FrankenevalError(f"recipe {rec.name!r} names no {kind!r} model")
        out[kind] = {"path": _resolve_local(rec.models[kind]), "kind": kind, "description": f"{REFERENCE_LABELS[kind]} ({rec.models[kind]})"}
    return out


def _variant_info(rec: Any, v: str, path: str | os.PathLike) -> dict[str, str]:
    return {"path": str(path), "kind": "variant", "description": str(rec.definitions.get(v) or rec.variant(v).describe())}


# -- cells ----------------------------------------------------------------------------------------
def plan_cells(models: Iterable[str], tasks: Iterable[str]) -> list[Cell]:
    """Every (model, task) pair, model-major (so a model's cells run next to each other)."""
    tasks = list(tasks)
    return [Cell(m, t) for m in models for t in tasks]


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FrankenevalError(f"{path}: unreadable run manifest ({type(exc).__name__}); delete it and rerun "
                               "`frankeneval transfer` to rewrite it") from None
    if not isinstance(data, dict):
        raise FrankenevalError(f"{path}: the run manifest is not a JSON object; delete it and rerun `frankeneval transfer`")
    return data


def _update_manifest(run_dir: Path, recipe: str | None, models: Mapping[str, Mapping[str, str]], tasks: Sequence[str], settings: Mapping[str, Any],
                     extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    old = read_manifest(run_dir)
    merged_models = dict(old.get("models") or {})
    merged_models.update({k: dict(v) for k, v in models.items()})
    order = list(old.get("order") or [])
    order += [m for m in models if m not in order]
    # Base, IN and RL first, then the variants in the order they were first run
    order = [m for m in REFERENCE_ORDER if m in order] + [m for m in order if m not in REFERENCE_ORDER]
    all_tasks = list(old.get("tasks") or [])
    all_tasks += [t for t in tasks if t not in all_tasks]
    data = {"recipe": recipe or old.get("recipe"), "models": merged_models, "order": order, "tasks": all_tasks, "settings": dict(settings)}
    if old.get("skipped_inputs"):  # items earlier cells left out as broken (kept: those cells ran without them)
        data["skipped_inputs"] = old["skipped_inputs"]
    if extra:  # top-level keys of this run (``evict_variants``); absent otherwise, as before
        data.update(extra)
    write_json_atomic(run_dir / MANIFEST, data, indent=2, ensure_ascii=False)
    return data


def _base_env(data_dir: str | None, sample_size: int | None, sample_seed: int | None, offline: bool, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # never let a source folder shadow the installed package
    if offline:
        env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if data_dir:
        env["FRANKENEVAL_DATA"] = str(Path(data_dir).expanduser().resolve())
    if sample_size is not None:
        env["FRANKENEVAL_SAMPLE_SIZE"] = str(sample_size)
    if sample_seed is not None:
        env["FRANKENEVAL_SAMPLE_SEED"] = str(sample_seed)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


def _clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


RUN_LOCK = ".frankeneval.lock"


def _check_run_folder(run_dir: Path) -> None:
    """A run folder is new, empty, or one frankeneval transfer wrote (its manifest or run store is there)."""
    if not os.path.lexists(run_dir):
        return
    if not run_dir.is_dir() or run_dir.is_symlink() and not run_dir.resolve().is_dir():
        raise FrankenevalError(f"{run_dir} is not a folder; choose another run folder")
    if (run_dir / MANIFEST).is_file() or (run_dir / STORE).is_file():
        return
    if any(e.name != RUN_LOCK for e in os.scandir(run_dir)):
        raise FrankenevalError(f"{run_dir} is not a frankeneval transfer run folder (no {MANIFEST} or {STORE}) and is "
                               "not empty; choose a new or empty run folder")


def run_cells(run_dir: str | os.PathLike, models: Mapping[str, Mapping[str, str]], tasks: Sequence[str],
              **kwargs: Any) -> TransferResult:
    """Run every missing (model, task) cell; finished cells are skipped (see the module docstring).

    Keyword arguments as :func:`_run_cells` (``recipe``, ``sample_size``, ``runner``, ``gpus``, ...).
    Model labels and task names must be single path components (they name the cell folders). The run folder
    must be new, empty or a transfer run; one ``transfer`` at a time per run folder (a second fails at once
    naming the first's pid); the lock is inherited by the lmms-eval children.
    """
    with _run_folder(run_dir, models, tasks) as (folder, fd):
        return _run_cells(folder, models, tasks, _keep_fds=(fd,), **kwargs)


@contextmanager
def _run_folder(run_dir: str | os.PathLike, labels: Iterable[str], tasks: Iterable[str]) -> Iterator[tuple[Path, int]]:
    """(the absolute run folder, its lock's descriptor) for the block: names checked, the folder checked
    (:func:`_check_run_folder`) and made, its lock held (a second run fails at once naming the first's pid)."""
    for label in labels:
        safe_name(label, "model / variant name")
    for task in tasks:
        safe_name(Cell("m", str(task)).slug, "task name")
    run_dir = Path(run_dir).expanduser().absolute()
    _check_run_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(run_dir / RUN_LOCK, wait=False, what=f"run folder {run_dir}") as fd:
        yield run_dir, fd


def _run_cells(
    run_dir: str | os.PathLike,
    models: Mapping[str, Mapping[str, str]],
    tasks: Sequence[str],
    *,
    recipe: str | None = None,
    sample_size: int | None = None,
    sample_seed: int | None = None,
    data_dir: str | os.PathLike | None = None,
    batch_size: int | str = 1,
    max_new_tokens: int | None = None,
    model_args: str | None = None,
    system_prompt: str | None = "auto",
    gpus: int = 0,
    offline: bool | None = None,
    env: Mapping[str, str] | None = None,
    grading: str | None = None,
    seed_compatible: bool = False,
    skip_broken: bool = False,
    runner: CellRunner | None = None,
    progress: Callable[[str], None] = print,
    _keep_fds: tuple[int, ...] = (),
    _manifest_extra: Mapping[str, Any] | None = None,
) -> TransferResult:
    """Run every missing (model, task) cell; finished cells are skipped (see the module docstring).

    ``models``: label -> {"path": checkpoint dir, "kind": in|rl|variant, "description": ...}.
    ``system_prompt``: the setting each model's system prompt is resolved with
    (:func:`frankeneval.core.prompts.resolve_system_prompt`; ``auto``: docs/method.md's rule per model, a variant its
    sources'); passed to every cell as ``system_prompt=`` and recorded in the manifest and in every cell record.
    ``grading``: ``paper`` (rules first, the judge for the rest) or ``seed`` (the reference: the judge decides every
    item); passed to every cell as ``FRANKENEVAL_GRADING`` and recorded in the manifest (it matters with the judge on).
    ``seed_compatible``: the reference's behaviour wherever it deviates (grading ``seed`` unless ``grading`` is
    given, the tasks' ``seed_compatible`` rules: ``FRANKENEVAL_SEED_COMPATIBLE=1``); recorded in the manifest, and
    in the run store's header when on (a run never mixes cells of the two).
    Before the first lmms-eval cell starts, the rows and images the tasks select are read as the cells will
    (:func:`harness_preflight`): a broken one stops the run in one line; ``skip_broken``
    (``FRANKENEVAL_SKIP_BROKEN=1`` in every cell) leaves such items out of the cells and records them in the
    manifest's ``skipped_inputs``, which the report shows.
    ``runner`` (default :func:`lmms_eval_runner`) is called once per cell that has to run.
    Failed cells are reported in the result (and retried by the next run); they never stop the others.
    """
    run_dir = Path(run_dir).expanduser().absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    runner = runner or lmms_eval_runner
    offline = bool(data_dir) if offline is None else offline
    if any(a.split("=", 1)[0].strip() == "system_prompt" for a in (model_args or "").split(",")):
        raise FrankenevalError("give the system prompt as --system-prompt (system_prompt=), not in --model-args")
    grading = grading or ("seed" if seed_compatible else "paper")
    if grading not in ("paper", "seed"):
        raise FrankenevalError(f"grading must be paper or seed, not {grading!r}")
    settings = {"sample_size": sample_size, "sample_seed": sample_seed, "max_new_tokens": max_new_tokens,
                "model_args": model_args or "", "data_dir": str(data_dir) if data_dir else None,
                "system_prompt": "auto" if system_prompt is None else str(system_prompt), "grading": grading,
                # only when on: run folders made before the switch existed (off) keep resuming
                **({"seed_compatible": True} if seed_compatible else {})}
    env = {**dict(env or {}), "FRANKENEVAL_GRADING": grading,
           "FRANKENEVAL_SEED_COMPATIBLE": "1" if seed_compatible else "0",
           "FRANKENEVAL_SKIP_BROKEN": "1" if skip_broken else "0"}
    prompts = _system_prompts(run_dir, models, system_prompt)
    models = {label: {**dict(info), "system_prompt": prompts[label][0].name, "system_prompt_reason": prompts[label][0].reason}
              for label, info in models.items()}
    store = RunStore(run_dir / STORE, header=settings, required=CELL_FIELDS)
    _update_manifest(run_dir, recipe, models, tasks, {**settings, "seed_compatible": bool(seed_compatible)},
                     _manifest_extra)
    cells = plan_cells(models, tasks)
    result = TransferResult(run_dir=run_dir, cells=cells)
    base_env = _base_env(str(data_dir) if data_dir else None, sample_size, sample_seed, offline, env)
    include_path = str(harness_tasks_dir())
    gen_kwargs = f"max_new_tokens={max_new_tokens}" if max_new_tokens else None

    pending: list[Cell] = []
    for cell in cells:
        final = run_dir / cell.relpath()
        if store.done(cell.key) and find_results(final)[0] is not None:
            result.skipped.append(cell)
            continue
        res, samples = find_results(final)
        if res is not None:  # renamed into place but not recorded (crash between the two): adopt it
            store.append(cell.key, _record(run_dir, cell, models, res, samples, None, prompts[cell.model][0]))
            result.skipped.append(cell)
            continue
        pending.append(cell)
    if result.skipped:
        progress(f"[transfer] {len(result.skipped)}/{len(cells)} cells already finished; {len(pending)} to run")
    else:
        progress(f"[transfer] {len(cells)} cells ({len(models)} models x {len(tasks)} tasks)")
    if pending and runner is lmms_eval_runner:
        # every selected row and image read before any cell starts: one line now, or recorded as skipped; then the
        # judge asked once (on but not answering: one line now, not a failure in every cell)
        skipped, error = harness_preflight(sorted({c.task for c in pending}), base_env)
        _record_skipped_inputs(run_dir, skipped or [])
        if error is not None:
            raise error

    counter = {"done": 0}
    lock = threading.Lock()

    def run_one(cell: Cell, gpu: int | None) -> None:
        final = run_dir / cell.relpath()
        partial = final.with_name(final.name + ".partial")
        _clear(partial)
        partial.mkdir(parents=True)
        path = str(models[cell.model]["path"])
        if "," in path or "," in str(run_dir):
            raise CellFailed(f"{path!r} or {str(run_dir)!r} contains a comma, which lmms-eval's --model_args cannot carry")
        margs = f"pretrained={path},batch_size={batch_size},system_prompt={prompts[cell.model][1]}"
        if max_new_tokens:
            margs += f",max_new_tokens={max_new_tokens}"
        if model_args:
            margs += "," + model_args
        cell_env = dict(base_env)
        if gpu is not None:
            cell_env["CUDA_VISIBLE_DEVICES"] = device_ids[gpu]
        job = CellJob(cell=cell, pretrained=path, output_dir=partial, run_dir=run_dir,
                      log_path=run_dir / "logs" / f"{cell.model}__{cell.slug}.log", model_args=margs,
                      include_path=include_path, gen_kwargs=gen_kwargs, env=cell_env, keep_fds=_keep_fds)
        t0 = time.perf_counter()
        runner(job)
        seconds = time.perf_counter() - t0
        if find_results(partial)[0] is None:
            raise CellFailed(f"{cell.key}: the runner wrote no *_results.json under {partial}")
        _clear(final)
        os.replace(partial, final)  # atomic: the cell dir only ever holds a finished lmms-eval output
        res, samples = find_results(final)
        store.append(cell.key, _record(run_dir, cell, models, res, samples, seconds, prompts[cell.model][0]))
        with lock:
            counter["done"] += 1
            progress(f"[transfer {counter['done']}/{len(pending)}] {cell.model} x {cell.task}: "
                     f"{_headline(res)} ({seconds:.1f}s{'' if gpu is None else f', GPU {gpu}'})")

    def attempt(cell: Cell, gpu: int | None, *, last: bool = True) -> bool:
        """Run one cell; a failure is recorded when ``last``, else said and left for a retry elsewhere."""
        try:
            run_one(cell, gpu)
            result.ran.append(cell)
            return True
        except (FrankenevalError, OSError, subprocess.SubprocessError) as exc:
            if not last:
                progress(f"[transfer] {cell.model} x {cell.task} failed on GPU {gpu} ({exc}); retrying on another GPU")
                return False
            result.failed[cell.key] = str(exc)
            progress(f"[transfer] FAILED {cell.model} x {cell.task}: {exc}")
            return False

    device_ids = _device_ids(gpus)
    if gpus and gpus > 1:
        free: queue.Queue[int] = queue.Queue()
        for g in range(gpus):
            free.put(g)

        def take(avoid: set[int]) -> int:
            while True:  # a free GPU the cell has not failed on
                gpu = free.get()
                if gpu not in avoid:
                    return gpu
                free.put(gpu)
                time.sleep(0.05)

        def worker(cell: Cell) -> None:
            failed_on: set[int] = set()
            for retry in range(2):  # a failed cell is tried once more on another GPU, then recorded as failed
                gpu = take(failed_on)
                try:
                    if attempt(cell, gpu, last=retry == 1):
                        return
                finally:
                    free.put(gpu)
                failed_on.add(gpu)

        with ThreadPoolExecutor(max_workers=gpus) as pool:
            futures = [pool.submit(worker, c) for c in pending]
            try:
                for f in as_completed(futures):
                    f.result()
            except KeyboardInterrupt:
                for f in futures:
                    f.cancel()
                raise
    else:
        for cell in pending:
            attempt(cell, 0 if gpus == 1 else None)
    return result


def _device_ids(gpus: int) -> list[str]:
    """The CUDA device ids the GPU pool hands out: the first ``gpus`` of this process's CUDA_VISIBLE_DEVICES
    (so ``CUDA_VISIBLE_DEVICES=2,3 ... --gpus 2`` runs cells on GPUs 2 and 3), else 0 ... gpus-1."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        return [str(g) for g in range(max(gpus, 1))]
    if gpus > len(visible):
        raise FrankenevalError(f"--gpus {gpus} but CUDA_VISIBLE_DEVICES={','.join(visible)} names {len(visible)}")
    return visible[:max(gpus, 1)]


def _system_prompts(run_dir: Path, models: Mapping[str, Mapping[str, str]], setting: str | None) -> dict[str, tuple[Any, str]]:
    """{label: (SystemPrompt, its ``system_prompt=`` model arg)}; a free text goes to ``run_dir/system_prompt.txt``
    (lmms-eval's ``--model_args`` cannot carry its commas) and is passed as ``@FILE``."""
    from frankeneval.core.prompts import resolve_system_prompt

    out: dict[str, tuple[Any, str]] = {}
    for label, info in models.items():
        prompt = resolve_system_prompt(str(info["path"]), setting)
        arg = prompt.model_arg
        if arg is None:
            file = run_dir / "system_prompt.txt"
            file.write_text(prompt.text or "", encoding="utf-8")
            arg = f"@{file}"
        out[label] = (prompt, arg)
    return out


def _record(run_dir: Path, cell: Cell, models: Mapping[str, Mapping[str, str]], res: Path, samples: Mapping[str, Path],
            seconds: float | None, prompt: Any = None) -> dict[str, Any]:
    return {
        "model": cell.model,
        "task": cell.task,
        "pretrained": str(models[cell.model]["path"]),
        "system_prompt": prompt.record() if prompt is not None else None,
        "results": str(res.relative_to(run_dir)),
        "samples": {t: str(p.relative_to(run_dir)) for t, p in sorted(samples.items())},
        "seconds": None if seconds is None else round(seconds, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _headline(res: Path | None) -> str:
    """``task rule_acc=0.42`` for the leaf tasks of a results file (for progress lines)."""
    if res is None:
        return "no results"
    try:
        data = json.loads(res.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "unreadable results"
    parts = []
    for task, metrics in (data.get("results") or {}).items():
        for key, value in metrics.items():
            if key.startswith("rule_acc,") and isinstance(value, (int, float)):
                parts.append(f"{task}={value:.3f}")
    return "rule_acc " + ", ".join(parts) if parts else "done"


def run_transfer(
    run_dir: str | os.PathLike,
    recipe: Any,
    *,
    variants: Sequence[str] | None = None,
    tasks: Sequence[str] = DEFAULT_TASKS,
    models: Mapping[str, str] | None = None,
    splice_cache: str | os.PathLike | None = None,
    include_reference: bool = True,
    progress: Callable[[str], None] = print,
    allow_pickle: bool = False,
    evict_variants: bool = False,
    **kwargs: Any,
) -> TransferResult:
    """Materialize the variants of ``recipe`` and run every (model, task) cell (see :func:`run_cells`).

    ``recipe``: a built-in name (``openmmreasoner``, ``revisual_r1``, ``mmr1``, ``tiny``), a recipe YAML, a
    merge-spec YAML, or a :class:`frankeneval.transferability.recipes.Recipe`. ``models`` re-points ``in`` / ``rl`` /
    ``base`` at local copies; Base (when the recipe names it), IN and RL are run unless ``include_reference`` is
    false. ``allow_pickle``: read pickle (``.bin``) sources when splicing and let every cell's
    ``franken_qwen`` load them (model arg ``allow_pickle=true``). Raises :class:`FrankenevalError` naming the failed cells, if any, after
    running all the others.

    ``evict_variants``: materialize the variants lazily, ``max(1, gpus)`` at a time, and delete each one this
    run materialized once its cells ran (peak disk: Base / IN / RL plus ``max(1, gpus)`` variants); see
    :func:`_run_evicting`. Off (the default): every variant is materialized up front and nothing is deleted.
    """
    if evict_variants:
        result = _run_evicting(run_dir, recipe, variants=variants, tasks=tasks, models=models, splice_cache=splice_cache,
                               include_reference=include_reference, progress=progress, allow_pickle=allow_pickle,
                               **kwargs)
    else:
        name, prepared = prepare_models(recipe, variants=variants, models=models, splice_cache=splice_cache,
                                        progress=progress, allow_pickle=allow_pickle)
        if allow_pickle:
            kwargs["model_args"] = ",".join(x for x in (kwargs.get("model_args"), "allow_pickle=true") if x)
        if not include_reference:
            prepared = {k: v for k, v in prepared.items() if v["kind"] == "variant"}
        result = run_cells(run_dir, prepared, list(tasks), recipe=name, progress=progress, **kwargs)
    if result.failed:
        first = next(iter(result.failed.items()))
        raise FrankenevalError(
            f"{len(result.failed)} of {len(result.cells)} cells failed (rerun to retry them; finished cells are kept). "
            f"First: {first[0]}: {first[1]}"
        )
    return result


# -- --evict-variants: variants materialized chunk by chunk, deleted once their cells ran ------------------------
KEPT_BEFORE = "it was in the splice cache before this run (frankeneval transfer did not write it here)"
KEPT_UNOWNED = "not materialized by an --evict-variants run of this folder"


def _run_evicting(
    run_dir: str | os.PathLike,
    recipe: Any,
    *,
    variants: Sequence[str] | None,
    tasks: Sequence[str],
    models: Mapping[str, str] | None,
    splice_cache: str | os.PathLike | None,
    include_reference: bool,
    progress: Callable[[str], None],
    allow_pickle: bool,
    **kwargs: Any,
) -> TransferResult:
    """:func:`run_transfer` with ``evict_variants``: the same cells, run store and manifest, with the variants
    materialized lazily.

    Under the run folder's lock for the whole run: Base / IN / RL cells first (never deleted: frankeneval did
    not write them); then the variants with an unfinished cell, model-major, in chunks of ``max(1, gpus)``:
    materialize the chunk (:func:`frankeneval.transferability.splice.materialize_cached`), run its pending cells
    (the GPU pool as always), delete every folder of the chunk this run materialized (also when one of its cells
    failed: the next run splices it again, so the disk bound holds), then the next chunk. A variant whose cells are
    all finished is not materialized.

    Deleted is only a folder that (a) did not exist when this run, holding the folder's output lock, called
    ``materialize_cached`` for it (so a splice in the cache before, e.g. one served with vLLM, is kept), recorded in
    the manifest as ``splice_owner`` (build hash, provenance SHA-256, inode) right after; (b) still is that folder
    (the stamp matches); (c) still holds exactly a complete frankeneval splice of that build (splice.py's own
    checks, ``_holds`` and ``_owned_splice``) and is no input of the run. A run killed before it deleted a folder
    leaves the stamp behind, so the rerun reuses that splice (no re-splice) and deletes it afterwards.

    The manifest gets ``evict_variants: true`` and, per variant, ``evicted`` (and ``kept``: why not, when not).
    """
    from frankeneval.transferability import splice

    rec, chosen = _recipe_variants(recipe, variants, models)
    refs = _reference_models(rec)  # resolved even with include_reference off, as prepare_models does
    if allow_pickle:
        kwargs["model_args"] = ",".join(x for x in (kwargs.get("model_args"), "allow_pickle=true") if x)
    tasks = list(tasks)
    ref_models = refs if include_reference else {}
    chunk = max(1, int(kwargs.get("gpus") or 0))
    inputs = [(label, info["path"]) for label, info in refs.items()]

    with _run_folder(run_dir, [*ref_models, *chosen], tasks) as (folder, fd):

        def run(group: Mapping[str, Mapping[str, Any]], quiet: bool = False) -> None:
            part = _run_cells(folder, group, tasks, recipe=rec.name, progress=(lambda s: None) if quiet else progress,
                              _keep_fds=(fd,), _manifest_extra={"evict_variants": True}, **kwargs)
            result.ran += part.ran
            result.skipped += part.skipped
            result.failed.update(part.failed)

        result = TransferResult(run_dir=folder, cells=plan_cells([*ref_models, *chosen], tasks))
        # first: Base / IN / RL; with none, the call still checks the run store's settings and writes the manifest
        run(ref_models, quiet=not ref_models)
        recorded = read_manifest(folder).get("models") or {}
        pending = []
        for v in chosen:
            if all(find_results(folder / Cell(v, t).relpath())[0] is not None for t in tasks):
                result.skipped += [Cell(v, t) for t in tasks]  # finished (recorded, or adopted by the next plain run)
                _settle_finished(folder, v, recorded.get(v), inputs, progress)
            else:
                pending.append(v)
        if len(pending) < len(chosen):
            progress(f"[evict] {len(chosen) - len(pending)} of {len(chosen)} variants already finished: not materialized")

        mine: dict[str, dict[str, Any]] = {}  # splice folder -> stamp, materialized by this run and not deleted yet
        for start in range(0, len(pending), chunk):
            group: dict[str, dict[str, Any]] = {}
            for i, v in enumerate(pending[start : start + chunk], start + 1):
                spec = rec.variant(v)
                progress(f"[splice {i}/{len(pending)}] {v}: {rec.definitions.get(v, spec.describe())}")
                old = recorded.get(v) or {}
                path, stamp = _materialize_owned(splice, spec, splice_cache, allow_pickle,
                                                 [old.get("splice_owner"), *mine.values()])
                info: dict[str, Any] = {**_variant_info(rec, v, path), "evicted": False}
                if stamp is not None:
                    mine[str(path)] = stamp
                    info.update(splice_owner=stamp, kept=None)
                else:
                    info.update(splice_owner=None, kept=KEPT_BEFORE)
                group[v] = {k: val for k, val in info.items() if val is not None}
                _patch_manifest(folder, {v: info})  # the ownership stamp is on disk before any of its cells runs
            run(group)
            for path in dict.fromkeys(str(info["path"]) for info in group.values()):
                if path not in mine:
                    continue
                labels = [v for v, info in group.items() if str(info["path"]) == path]
                failed = any(k.split("::", 1)[0] in labels for k in result.failed)
                _evict_and_record(folder, labels, Path(path), mine.pop(path), inputs, progress,
                                  note=" (a cell failed: the next run splices it again)" if failed else "")
    return result


def _splice_stamp(path: str | os.PathLike) -> dict[str, Any] | None:
    """What identifies one materialized splice folder: its build hash, its provenance file's SHA-256 (it holds the
    creation time) and the folder's inode; None when there is no readable provenance."""
    from frankeneval.transferability.splice import PROVENANCE

    try:
        raw = (Path(path) / PROVENANCE).read_bytes()
        inode = os.lstat(path).st_ino
        build = json.loads(raw).get("build_hash")
    except (OSError, ValueError, AttributeError):
        return None
    return {"build_hash": build, "provenance_sha256": hashlib.sha256(raw).hexdigest(), "inode": inode}


def _materialize_owned(splice: Any, spec: Any, cache: str | os.PathLike | None, allow_pickle: bool,
                       known: Sequence[dict[str, Any] | None]) -> tuple[Path, dict[str, Any] | None]:
    """(the variant's folder, its stamp when this run owns it, else None).

    Owned: nothing was there when ``materialize_cached`` was called (under the folder's output lock, which
    ``materialize`` re-enters: no other writer in between), or what was there is a splice this run folder wrote
    (its stamp is one of ``known``: recorded by an earlier, interrupted run of this folder)."""
    from frankeneval.core.locks import output_lock

    out = Path(splice.cache_path(spec, cache, allow_pickle=allow_pickle)).expanduser().absolute()
    with output_lock(out):
        existed = os.path.lexists(out)
        before = _splice_stamp(out) if existed else None
        path = Path(splice.materialize_cached(spec, cache, progress=False, allow_pickle=allow_pickle)).absolute()
        if path != out or (existed and (before is None or before not in [k for k in known if k])):
            return path, None
        return path, _splice_stamp(path)


def _evict_splice(out: Path, stamp: Mapping[str, Any], inputs: Sequence[tuple[str, str]]) -> str | None:
    """Delete the splice folder ``out`` this run materialized; None when it is gone, else why it was kept.

    Kept unless it is still the folder this run wrote (``stamp``), holds exactly a complete frankeneval splice
    (splice.py's checks) and is, holds and lies inside no input. Under the folder's output lock; renamed aside first
    (a name :func:`frankeneval.core.results.staged_directory` sweeps), so a half-deleted splice is never seen."""
    from frankeneval.core.locks import output_lock
    from frankeneval.core.results import _staged_name, refuse_inputs
    from frankeneval.transferability.splice import _holds, _owned_splice, _read_provenance

    out = Path(out).expanduser().absolute()
    with output_lock(out):
        if not os.path.lexists(out):
            return None
        if out.is_symlink() or not out.is_dir():
            return "it is not a folder"
        if _splice_stamp(out) != dict(stamp):
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
        trash = _staged_name(out, "old")
        os.replace(out, trash)
        shutil.rmtree(trash)
    return None


def _evict_and_record(run_dir: Path, labels: Sequence[str], path: Path, stamp: Mapping[str, Any],
                      inputs: Sequence[tuple[str, str]], progress: Callable[[str], None], note: str = "") -> None:
    """Delete ``path`` (:func:`_evict_splice`) and record it in the manifest for every variant of ``labels``."""
    names = ", ".join(labels)
    try:
        why = _evict_splice(path, stamp, inputs)
    except OSError as exc:  # stamp kept: the next run tries again
        progress(f"[evict] {names}: could not delete {path}: {exc}")
        return
    if why is None:
        _patch_manifest(run_dir, {v: {"evicted": True, "splice_owner": None, "kept": None} for v in labels})
        progress(f"[evict] {names}: deleted {path}{note}")
    else:
        _patch_manifest(run_dir, {v: {"evicted": False, "splice_owner": None, "kept": why} for v in labels})
        progress(f"[evict] {names}: kept {path}: {why}")


def _settle_finished(run_dir: Path, label: str, entry: Mapping[str, Any] | None, inputs: Sequence[tuple[str, str]],
                     progress: Callable[[str], None]) -> None:
    """A variant whose cells are all finished: delete the folder an interrupted run of this folder materialized
    and did not delete yet (its stamp is recorded); record ``evicted`` where the manifest says nothing yet."""
    if not entry:
        return
    stamp = entry.get("splice_owner")
    if isinstance(stamp, dict) and entry.get("path"):
        _evict_and_record(run_dir, [label], Path(str(entry["path"])), stamp, inputs, progress)
    elif "evicted" not in entry:
        _patch_manifest(run_dir, {label: {"evicted": False, "kept": KEPT_UNOWNED}})


def _record_skipped_inputs(run_dir: Path, skipped: Sequence[Mapping[str, Any]]) -> None:
    """Add the items left out as broken (``{"task", "id", "path", "reason"}``) to the manifest's ``skipped_inputs``."""
    if not skipped:
        return
    data = read_manifest(run_dir)
    known = {(s.get("task"), s.get("id")): dict(s) for s in data.get("skipped_inputs") or [] if isinstance(s, dict)}
    known.update({(s["task"], s["id"]): dict(s) for s in skipped})
    data["skipped_inputs"] = list(known.values())
    write_json_atomic(run_dir / MANIFEST, data, indent=2, ensure_ascii=False)


def _patch_manifest(run_dir: Path, updates: Mapping[str, Mapping[str, Any]]) -> None:
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
    write_json_atomic(run_dir / MANIFEST, data, indent=2, ensure_ascii=False)
