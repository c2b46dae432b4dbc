"""Transferability: evaluate Base, IN, RL and every Frankenstein variant on the task groups, cell by cell.

A *cell* is one (model, task) pair; the model is ``base`` (when the recipe names one), ``in``, ``rl`` or a variant
of the recipe, the task an lmms-eval task or group. The splits (docs/method.md §6) are task groups
(:data:`SPLITS`): ``v1`` = ``franken_perception``, ``franken_alignment``, ``franken_reasoning`` (the default);
``v2`` = ``franken_v2_perception``, ``franken_v2_vision_reasoning``, ``franken_v2_reasoning``; each MathVista group
holds the image setting and its controls (black, black + description), from which the report pairs per item
(:mod:`frankeneval.transferability.metrics`). Each
variant is materialized once through :func:`frankeneval.transferability.splice.materialize_cached`. A model's pending
cells run in one lmms-eval subprocess (the model loaded once; ``--process-per-cell``: one per cell)::

    python -m lmms_eval --model franken_qwen --model_args pretrained=<dir>,batch_size=...
        --tasks <task>[,<task>...] --include_path <frankeneval tasks> --output_path <scratch> --log_samples

and its output is cut into the cells' folders (:func:`.cells.cut_joint_output`), with the run directory as working
directory (:mod:`frankeneval.transferability.cells`). ``--process-per-gpu`` (``joint="gpu"``): one process per GPU
runs its models one after another, as the entries of lmms-eval's own ``--config`` list
(:func:`.cells.lmms_eval_config_runner`), so the process start and the import are paid once per GPU.

Run layout (``run_dir``)::

    transfer.json                  manifest: recipe, models (label -> checkpoint, kind, phrase), tasks, settings
    cells.jsonl                    run store: one line per finished cell (frankeneval.core.runstore.RunStore)
    cells/<model>/<task>/          lmms-eval output (<model name>/<date>_results.json, _samples_<task>.jsonl)
    logs/<model>__joint.log        the model's lmms-eval output (<model>__<task>.log: a cell run on its own)
    logs/process_gpu<N>.log        --process-per-gpu: the process's output (its --config list beside it)

**Resumable**: a cell writes into ``<task>.partial`` first and is renamed into place only after lmms-eval
finished and wrote its results file; then the cell is appended to the run store. A rerun after a crash or
Ctrl-C skips recorded cells, adopts a renamed-but-unrecorded cell, and restarts unfinished ones from
scratch. A cell is finished only when its results file parses and its ``frankeneval_cell.json`` names the model
content this run uses (a checkpoint's weights fingerprint, a variant's splice build hash:
:func:`.cells.finished_cell`), so a rerun with another ``--in`` runs IN's and the variants' cells again.
``gpus=N`` runs N cells at a time, one lmms-eval process per GPU (``CUDA_VISIBLE_DEVICES``;
:mod:`frankeneval.transferability.scheduler`). The manifest and the run folder: :mod:`.manifest`.

**Disk** (``evict_variants``, ``--evict-variants``): the variants are materialized ``max(1, gpus)`` at a time and
each one this run materialized is deleted once its cells ran, so the disk holds Base / IN / RL plus that many
variants (a 7B variant is 16.6 GB); a splice that was in the cache before is never deleted (:func:`_run_evicting`;
the cache's lifecycle: :func:`.splice.materialize_owned` and :func:`.splice.evict_splice`), nor one another live
run holds a lease on (every run leases the splices it uses until its cells ran: :func:`.splice.lease_splice`).

**Other runs' cells** (:mod:`.reuse`): ``reuse_from`` takes another run's finished cells of the same model content,
task and settings instead of running them; ``--regrade`` (:func:`.reuse.regrade_run`) scores a run's stored
responses again under another grading into a new folder (API rows included: their stored responses, no key and no
API call). Both record each cell's origin (its record and its stamp), which the report marks. ``cuts`` (``--cuts``)
re-cuts the recipe's variants
(:func:`_with_cuts`); ``item_time_limit`` cuts off an item still generating after that many seconds.

**API rows** (``api_models``, ``--api-model LABEL=openai:model_version=gpt-4o``): a GPT or Claude model run through
lmms-eval's own API class on the same cells (kind ``api``, no checkpoint; fingerprint: class, model version and
server host, :func:`.cells.api_fingerprint`); refused in one line before any cell where its key or server is missing
(:func:`.cells.check_api_access`).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frankeneval.core.paths import harness_tasks_dir
from frankeneval.core.runstore import RunStore
from frankeneval.errors import FrankenevalError, disk_error
from frankeneval.transferability import cells, scheduler
from frankeneval.transferability.cells import CellFailed, CellJob, CellRunner, cell_record, find_results
from frankeneval.transferability.manifest import (
    CELL_FIELDS,
    DEFAULT_TASKS,
    REFERENCE_LABELS,
    STORE,
    Cell,
    patch_manifest,
    plan_cells,
    read_manifest,
    record_skipped_inputs,
    run_folder,
    update_manifest,
)

__all__ = ["TransferResult", "prepare_models", "run_cells", "run_transfer"]


@dataclass
class TransferResult:
    run_dir: Path
    cells: list[Cell]
    ran: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cell key -> error
    reused: list[Cell] = field(default_factory=list)  # taken from another run (--reuse-from), not run here


# -- models ---------------------------------------------------------------------------------------
def _resolve_local(ref: str) -> str:
    from frankeneval.transferability.mergespec import resolve_ref
    from frankeneval.weights.checkpoint import resolve

    return str(resolve(resolve_ref(ref))[0])


def _load_recipe(recipe: Any, models: Mapping[str, str] | None, cuts: Sequence[int] | None = None):
    """A :class:`~frankeneval.transferability.recipes.Recipe` from a Recipe, a built-in name, a recipe or spec YAML;
    ``cuts`` (``--cuts``): the block cuts of every variant (:func:`_with_cuts`)."""
    from frankeneval.transferability.recipes import Recipe, get_recipe

    if isinstance(recipe, Recipe):
        return _with_cuts(recipe.with_models(dict(models)) if models else recipe, cuts)
    text = str(recipe)
    try:
        rec = get_recipe(text, models=models)
    except FrankenevalError:
        path = Path(text).expanduser()
        if not path.is_file():
            raise
    else:
        return _with_cuts(rec, cuts)
    # a single merge-spec file: one variant, its sources are IN and RL
    from frankeneval.transferability.mergespec import MergeSpec
    from frankeneval.transferability.recipes import load_spec

    if cuts is not None:  # as `frankeneval splice --cuts`: phrases only (a block spec names its layers itself)
        spec = load_spec(str(path), models=dict(models) if models else None, cuts=list(cuts))
    else:
        spec = MergeSpec.from_yaml(path, sources=dict(models) if models else None)
    name = spec.name or path.stem
    if not {"in", "rl"} <= set(spec.sources):
        raise FrankenevalError(f"{path}: the spec names no 'in' and 'rl' sources to compare against")
    return Recipe(name=name, models=dict(spec.sources), variants={name: spec}, n_layers=spec.n_layers,
                  definitions={name: spec.phrase or spec.describe()})


def _with_cuts(rec: Any, cuts: Sequence[int] | None) -> Any:
    """``rec`` with the block cuts ``cuts`` (``--cuts C1 C2``: early 1-C1, middle C1+1-C2, late C2+1-n) for every
    variant, a variant's own ``cuts`` included; unchanged when ``cuts`` is None. The variants' splices (and so their
    build hashes, the fingerprints their cells are stamped with) follow: a rerun of a run folder with other cuts runs
    again exactly the variants whose layers changed."""
    if cuts is None:
        return rec
    from frankeneval.transferability.recipes import Recipe
    from frankeneval.weights.layermap import check_cuts

    c1, c2 = check_cuts(cuts, rec.n_layers)
    data = rec._data()  # the recipe's mapping form (Recipe.from_dict reads it back)
    data["cuts"] = [c1, c2]
    data["variants"] = {v: ({**d, "cuts": [c1, c2]} if isinstance(d, Mapping) and "cuts" in d else d)
                        for v, d in dict(data.get("variants") or {}).items()}
    return Recipe.from_dict(data, n_layers=rec.n_layers)


def effective_cuts(rec: Any) -> list[int]:
    """The block cuts a recipe's variants use unless they name their own: its ``cuts``, else ``n // 3, 2n // 3``."""
    from frankeneval.weights.layermap import check_cuts

    cuts = getattr(rec, "cuts", None)
    if cuts is None and len(rec.variants) == 1:  # a single merge spec: its own
        cuts = next(iter(rec.variants.values())).cuts
    return list(check_cuts(cuts, rec.n_layers))


def prepare_models(
    recipe: Any,
    *,
    variants: Sequence[str] | None = None,
    models: Mapping[str, str] | None = None,
    splice_cache: str | os.PathLike | None = None,
    progress: Callable[[str], None] = print,
    allow_pickle: bool = False,
    leases: list | None = None,
    cuts: Sequence[int] | None = None,
) -> tuple[str, dict[str, dict[str, Any]]]:
    """(recipe name, {label: {"path", "kind", "description", "fingerprint"}}) for Base (when the recipe names a
    ``base``), IN, RL and the chosen variants.

    Variants are materialized (cached by spec and source contents) one after the other. ``leases``: a lease on
    each variant's folder is appended (:func:`.splice.lease_splice`; the caller releases them), so an
    ``--evict-variants`` run on the same cache keeps them while this run uses them.
    """
    from frankeneval.transferability.splice import materialize_cached

    rec, chosen = _recipe_variants(recipe, variants, models, cuts)
    out = _reference_models(rec)
    kw = {} if leases is None else {"leases": leases}
    for i, v in enumerate(chosen, 1):
        spec = rec.variant(v)
        progress(f"[splice {i}/{len(chosen)}] {v}: {rec.definitions.get(v, spec.describe())}")
        path = materialize_cached(spec, splice_cache, progress=False, allow_pickle=allow_pickle, **kw)
        out[v] = _variant_info(rec, v, path)
    return rec.name, out


def _recipe_variants(recipe: Any, variants: Sequence[str] | None, models: Mapping[str, str] | None,
                     cuts: Sequence[int] | None = None):
    """(the recipe, the chosen variant names), each name checked (a clear error naming the choices)."""
    rec = _load_recipe(recipe, models, cuts)
    chosen = list(rec.variants) if variants is None else list(variants)
    for v in chosen:
        rec.variant(v)  # clear error naming the choices
    return rec, chosen


def _reference_models(rec: Any) -> dict[str, dict[str, Any]]:
    """{label: {"path", "kind", "description", "fingerprint"}} of Base (when the recipe names one), IN and RL."""
    out: dict[str, dict[str, Any]] = {}
    if rec.models.get("base"):  # the paper's tables have a Base row
        out["base"] = {"path": _resolve_local(rec.models["base"]), "kind": "base",
                       "description": f"Base ({rec.models['base']})"}
    for kind in ("in", "rl"):
        if kind not in rec.models:
            raise FrankenevalError(f"recipe {rec.name!r} names no {kind!r} model")
        out[kind] = {"path": _resolve_local(rec.models[kind]), "kind": kind,
                     "description": f"{REFERENCE_LABELS[kind]} ({rec.models[kind]})"}
    for info in out.values():
        info["fingerprint"] = _weights_fingerprint(info["path"])
    return out


def _data_inputs(data_dir: str | os.PathLike | None) -> dict[str, dict[str, str | None]] | None:
    """The run store's record of the benchmark data's content under ``--data-dir``: every file of each benchmark's
    folder the tasks read (``gsm8k/``, ``math500/``, ``mathvista/`` with its images, ``vision_probes/``); None for
    hub data (lmms-eval's dataset cache pins it)."""
    if not data_dir:
        return None
    from frankeneval.evaluation.data import BENCHMARKS
    from frankeneval.weights.fingerprint import folder_fingerprint

    root = Path(data_dir)
    folders = sorted({Path(b.local_file).parts[0] for b in BENCHMARKS.values()} | {"vision_probes"})
    found = {f"{name} data": {"content": folder_fingerprint(root / name)} for name in folders if (root / name).is_dir()}
    return found or None


def _weights_fingerprint(path: str | os.PathLike) -> dict[str, str | None]:
    """A checkpoint's content identity for its cells: ``{"weights": <weights_sha256>}`` (None: not readable)."""
    from frankeneval.weights.fingerprint import model_fingerprint

    return {"weights": model_fingerprint(path)}


def _splice_fingerprint(build_hash: Any) -> dict[str, str]:
    """A variant's content identity for its cells: ``{"splice": <build hash>}`` (its spec and its sources' contents,
    :func:`.splice.plan_splice`), known before it is materialized."""
    return {"splice": str(build_hash)}


def _variant_info(rec: Any, v: str, path: str | os.PathLike) -> dict[str, Any]:
    from frankeneval.transferability.splice import read_provenance

    description = str(rec.definitions.get(v) or rec.variant(v).describe())
    return {"path": str(path), "kind": "variant", "description": description,
            "fingerprint": _splice_fingerprint(read_provenance(path).get("build_hash"))}


# -- cells ----------------------------------------------------------------------------------------
def run_cells(run_dir: str | os.PathLike, models: Mapping[str, Mapping[str, str]], tasks: Sequence[str],
              **kwargs: Any) -> TransferResult:
    """Run every missing (model, task) cell; finished cells are skipped (see the module docstring).

    Keyword arguments as :func:`_run_cells` (``recipe``, ``sample_size``, ``runner``, ``gpus``, ...).
    Model labels and task names must be single path components (they name the cell folders). The run folder
    must be new, empty or a transfer run; one ``transfer`` at a time per run folder (a second fails at once
    naming the first's pid); the lock is inherited by the lmms-eval children.
    """
    with run_folder(run_dir, models, tasks) as (folder, fd):
        return _run_cells(folder, models, tasks, _keep_fds=(fd,), **kwargs)


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
    judge: bool | None = None,
    description_source: str | None = None,
    runner: CellRunner | None = None,
    joint: bool | str | None = None,
    chunk_runner: cells.ChunkRunner | None = None,
    item_time_limit: float | None = None,
    reuse_from: str | os.PathLike | None = None,
    cuts: Sequence[int] | None = None,
    progress: Callable[[str], None] = print,
    _keep_fds: tuple[int, ...] = (),
    _manifest_extra: Mapping[str, Any] | None = None,
    _plan: Sequence[str] = (),
    _replay: Mapping[str, str] | None = None,
    _prompts: Mapping[str, tuple[Any, str]] | None = None,
    _record_extra: Mapping[str, Mapping[str, Any]] | None = None,
    _header_extra: Mapping[str, Any] | None = None,
    _check_api: bool = False,
) -> TransferResult:
    """Run every missing (model, task) cell; finished cells are skipped (see the module docstring).

    ``models``: label -> {"path": checkpoint dir, "kind": in|rl|variant, "description": ...}.
    ``system_prompt``: resolved per model (:func:`frankeneval.evaluation.prompts.resolve_system_prompt`; ``auto``:
    docs/method.md's rule, a variant its sources'); recorded in the manifest and in every cell record.
    ``grading``: ``paper`` (rules first, the judge for the rest) or ``seed`` (the judge decides every item);
    ``FRANKENEVAL_GRADING`` in every cell, recorded in the manifest.
    ``seed_compatible``: the reference's behaviour wherever it deviates (grading ``seed`` unless ``grading`` is
    given; ``FRANKENEVAL_SEED_COMPATIBLE=1``); in the manifest, and in the run store's header when on.
    ``judge``: the LLM judge on (True) or off (False) in every cell (``FRANKENEVAL_JUDGE``; None: the environment's).
    ``description_source``: who writes the black + description texts, ``judge`` or ``caption_bard`` (the released
    Bard captions, a named alternative) or ``auto`` (``FRANKENEVAL_DESCRIPTION_SOURCE``; None: the environment's).
    Both are recorded in the manifest and the run store's header when given.
    Before the first lmms-eval cell the tasks' inputs are checked (:func:`.cells.harness_preflight`): a broken
    one stops the run; ``skip_broken`` leaves such items out and records them in the manifest's ``skipped_inputs``.
    ``runner`` (default :func:`.cells.lmms_eval_runner`) is called once per cell that has to run; with the default
    runner (or ``joint=True``), one lmms-eval process runs all of a model's pending cells (the model is
    loaded once) and its output is cut into the cells' folders (:func:`.cells.cut_joint_output`); when that
    process fails, its cells are run one by one, so one broken task costs only its own cells.
    ``joint="gpu"``: one lmms-eval process per GPU runs its share of the models one after another (lmms-eval's own
    ``--config`` list, :func:`.cells.lmms_eval_config_runner`; ``chunk_runner`` replaces it), so the process
    start and the lmms-eval import are paid once per GPU instead of once per model; a model whose output is
    missing then runs in its own process as above.
    Failed cells are reported in the result (and retried by the next run); they never stop the others.
    ``item_time_limit``: seconds an item may generate (``franken_qwen``'s ``item_time_limit``): one still generating
    then is cut off and counted as ``timed_out``, apart from wrong; in the run store's header when given.
    ``reuse_from``: another transfer run whose finished cells of the same model content, task and settings are
    hard-linked in instead of run (:mod:`.reuse`); any other cell runs here, and a refused one says why.
    ``cuts``: the variants' block cuts, recorded in the manifest's settings only (a rerun with other cuts is
    allowed: the variants whose splice changed run again, :func:`.cells.finished_cell`).
    The private ``_replay`` / ``_prompts`` / ``_record_extra`` / ``_header_extra`` are ``--regrade``'s
    (:func:`.reuse.regrade_run`): each model's stored-responses file, the prompts its cells recorded, what each
    cell's record adds, and what the run store's header adds.
    """
    if joint not in (None, True, False, "gpu"):
        raise FrankenevalError(f"joint must be None, True, False or 'gpu', not {joint!r}")
    run_dir = Path(run_dir).expanduser().absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    default_runner = runner is None or runner is cells.lmms_eval_runner
    grading = _check_settings(model_args, grading, seed_compatible)
    if description_source is not None and description_source not in ("auto", "judge", "caption_bard"):
        raise FrankenevalError(f"description_source must be auto, judge or caption_bard, not {description_source!r}")
    settings = {"sample_size": sample_size, "sample_seed": sample_seed, "max_new_tokens": max_new_tokens,
                "model_args": model_args or "", "data_dir": str(data_dir) if data_dir else None,
                "system_prompt": "auto" if system_prompt is None else str(system_prompt), "grading": grading,
                # only when on: run folders made before the switch existed (off) keep resuming
                **({"seed_compatible": True} if seed_compatible else {}),
                **({"judge": bool(judge)} if judge is not None else {}),
                **({"description_source": description_source} if description_source is not None else {}),
                **({"item_time_limit": float(item_time_limit)} if item_time_limit else {}),
                **dict(_header_extra or {})}
    env = {**dict(env or {}), **_grading_env(grading, seed_compatible, skip_broken)}
    if judge is not None:
        env["FRANKENEVAL_JUDGE"] = "1" if judge else "0"
    if description_source is not None:
        env["FRANKENEVAL_DESCRIPTION_SOURCE"] = description_source
    prompts = (dict(_prompts) if _prompts is not None
               else cells.system_prompts(run_dir, models, system_prompt, seed_compatible=seed_compatible))
    models = {label: {**dict(info), "system_prompt": prompts[label][0].name,
                      "system_prompt_reason": prompts[label][0].reason} for label, info in models.items()}
    cell_env = cells.base_env(str(data_dir) if data_dir else None, sample_size, sample_seed,
                              bool(data_dir) if offline is None else offline, env)
    replayed = set(_replay or ())  # --regrade: stored responses, no generation (an API row: no key, no server)
    for label, info in models.items():  # what a cell records and a finished cell must match (cells.finished_cell)
        if info.get("kind") == "api" and label in replayed and isinstance(info.get("fingerprint"), dict):
            pass  # the stored row's identity (its server host as it was then), not one read from this environment
        elif info.get("kind") == "api":  # its identity: class, model version, server host (never the key)
            info["fingerprint"] = cells.api_fingerprint(info, cell_env)
        elif not isinstance(info.get("fingerprint"), dict):
            info["fingerprint"] = _weights_fingerprint(str(info["path"]))
    store = RunStore(run_dir / STORE, header=settings, required=CELL_FIELDS, inputs=_data_inputs(data_dir))
    manifest_settings = {**settings, "seed_compatible": bool(seed_compatible),
                         **({"cuts": [int(c) for c in cuts]} if cuts is not None else {})}
    extra = {**dict(_manifest_extra or {}), **({"reuse_from": str(reuse_from)} if reuse_from else {})}
    update_manifest(run_dir, recipe, models, tasks, manifest_settings, extra or None, plan=_plan)
    result = TransferResult(run_dir=run_dir, cells=plan_cells(models, tasks))
    job = _CellRun(run_dir=run_dir, models=models, prompts=prompts, store=store, result=result, progress=progress,
                   runner=runner or cells.lmms_eval_runner, keep_fds=_keep_fds, batch_size=batch_size,
                   chunk_runner=chunk_runner or cells.lmms_eval_config_runner,
                   max_new_tokens=max_new_tokens, model_args=model_args, devices=[],
                   env=cell_env,
                   include_path=str(harness_tasks_dir()), item_time_limit=item_time_limit,
                   replay=dict(_replay or {}), record_extra=dict(_record_extra or {}))
    job.pending = _pending(job, len(tasks))
    if job.pending and reuse_from:
        from frankeneval.transferability.reuse import reuse_cells

        job.pending = reuse_cells(job, Path(reuse_from))
    api_pending = {c.model: models[c.model] for c in job.pending
                   if models[c.model].get("kind") == "api" and c.model not in replayed}
    if api_pending and (default_runner or _check_api):  # one line, before any cell starts
        cells.check_api_access(api_pending, job.env)
    if job.pending and default_runner:
        _preflight(run_dir, job.pending, job.env)
    job.devices = scheduler.device_ids(gpus)
    if joint == "gpu":  # one lmms-eval process per GPU: its models one after another
        scheduler.schedule(gpu_shares(model_groups(job.pending), gpus), job.attempt_share, gpus)
    elif joint or (joint is None and default_runner):  # one lmms-eval process per model: its pending cells together
        scheduler.schedule(model_groups(job.pending), job.attempt_joint, gpus)
    else:
        scheduler.schedule(job.pending, job.attempt, gpus)
    return result


def model_groups(pending: Sequence[Cell]) -> list[tuple[Cell, ...]]:
    """The pending cells grouped by model, in the order of each model's first cell; a group's cells run in one
    lmms-eval process (:meth:`_CellRun.attempt_joint`)."""
    groups: dict[str, list[Cell]] = {}
    for cell in pending:
        groups.setdefault(cell.model, []).append(cell)
    return [tuple(g) for g in groups.values()]


def gpu_shares(groups: Sequence[tuple[Cell, ...]], gpus: int) -> list[list[tuple[Cell, ...]]]:
    """The model groups dealt round-robin into one share per GPU (one share when ``gpus`` <= 1); a share's models
    run in one lmms-eval process (:meth:`_CellRun.attempt_share`)."""
    n = max(int(gpus or 0), 1)
    return [list(groups[i::n]) for i in range(n) if groups[i::n]]


def _check_settings(model_args: str | None, grading: str | None, seed_compatible: bool) -> str:
    """The grading setting, after checking the arguments (one-line errors)."""
    keys = {a.split("=", 1)[0].strip() for a in (model_args or "").split(",")}
    if "system_prompt" in keys:
        raise FrankenevalError("give the system prompt as --system-prompt (system_prompt=), not in --model-args")
    if "item_time_limit" in keys:
        raise FrankenevalError("give the time limit as --item-time-limit (item_time_limit=), not in --model-args")
    if "replay" in keys:
        raise FrankenevalError("replay= is --regrade's own model arg, not one for --model-args")
    grading = grading or ("seed" if seed_compatible else "paper")
    if grading not in ("paper", "seed"):
        raise FrankenevalError(f"grading must be paper or seed, not {grading!r}")
    return grading


def _grading_env(grading: str, seed_compatible: bool, skip_broken: bool) -> dict[str, str]:
    """The variables every cell gets for the grading settings."""
    return {"FRANKENEVAL_GRADING": grading, "FRANKENEVAL_SEED_COMPATIBLE": "1" if seed_compatible else "0",
            "FRANKENEVAL_SKIP_BROKEN": "1" if skip_broken else "0"}


def _preflight(run_dir: Path, pending: Sequence[Cell], env: Mapping[str, str]) -> None:
    """Every selected row and image read before any cell starts: one line now, or recorded as skipped; then the
    judge asked once (on but not answering: one line now, not a failure in every cell)."""
    skipped, error = cells.harness_preflight(sorted({c.task for c in pending}), env)
    record_skipped_inputs(run_dir, skipped or [])
    if error is not None:
        raise error


def _pending(job: _CellRun, n_tasks: int) -> list[Cell]:
    """The cells still to run; a finished one is skipped, a renamed-but-unrecorded one adopted. Finished means
    :func:`.cells.finished_cell`: a readable results file, made from the model content this run names; any other
    cell (one of another splice or checkpoint, or with a corrupt results file) is run again."""
    result, pending = job.result, []
    for cell in result.cells:
        final = job.run_dir / cell.relpath()
        res, samples, why = cells.finished_cell(final, job.models[cell.model].get("fingerprint"),
                                                label=f"{cell.model} model")
        if res is not None and not job.store.done(cell.key):  # renamed into place, not recorded: adopt it
            record = cell_record(job.run_dir, cell, job.models, res, samples, None, job.prompts[cell.model][0])
            record.update(cells.cell_origin(final))  # reused / regraded: as its stamp says
            job.store.append(cell.key, record)
        if res is not None:
            result.skipped.append(cell)
        else:
            pending.append(cell)
            if why != "not finished":
                job.progress(f"[transfer] {cell.model} x {cell.task} is not finished: {why}; running it again")
    if result.skipped:
        job.progress(f"[transfer] {len(result.skipped)}/{len(result.cells)} cells already finished; "
                     f"{len(pending)} to run")
    else:
        job.progress(f"[transfer] {len(result.cells)} cells ({len(job.models)} models x {n_tasks} tasks)")
    return pending


@dataclass
class _CellRun:
    """What every cell of one :func:`_run_cells` call shares; :meth:`attempt` runs one cell."""

    run_dir: Path
    models: Mapping[str, Mapping[str, Any]]
    prompts: Mapping[str, tuple[Any, str]]
    store: RunStore
    result: TransferResult
    progress: Callable[[str], None]
    runner: CellRunner
    chunk_runner: cells.ChunkRunner
    keep_fds: tuple[int, ...]
    batch_size: int | str
    max_new_tokens: int | None
    model_args: str | None
    devices: list[str]
    env: dict[str, str]
    include_path: str
    item_time_limit: float | None = None
    replay: dict[str, str] = field(default_factory=dict)  # label -> stored-responses file (--regrade)
    record_extra: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # cell key -> what its record adds
    pending: list[Cell] = field(default_factory=list)
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, cell: Cell, gpu: int | None, last: bool = True) -> bool:
        """Run one cell; a failure is recorded when ``last``, else said and left for a retry elsewhere."""
        try:
            self.run_one(cell, gpu)
            self.result.ran.append(cell)
            return True
        except (FrankenevalError, OSError, subprocess.SubprocessError) as exc:
            if disk_error(exc) is not None:  # the run folder's disk, not the cell: every cell would fail alike
                raise
            if not last:
                self.progress(f"[transfer] {cell.model} x {cell.task} failed on GPU {gpu} ({exc}); "
                              "retrying on another GPU")
                return False
            self.result.failed[cell.key] = str(exc)
            self.progress(f"[transfer] FAILED {cell.model} x {cell.task}: {exc}")
            return False

    def attempt_joint(self, group: Sequence[Cell], gpu: int | None, last: bool = True) -> bool:
        """Run a model's cells in one lmms-eval process; when it fails, each cell on its own (:meth:`attempt`)."""
        group = [c for c in group if c not in self.result.ran]  # a retry on another GPU: only what is left
        if len(group) <= 1:
            return not group or self.attempt(group[0], gpu, last)
        try:
            self.run_joint(group, gpu)
            self.result.ran.extend(group)
            return True
        except (FrankenevalError, OSError, subprocess.SubprocessError) as exc:
            if disk_error(exc) is not None:
                raise
            self.progress(f"[transfer] {group[0].model}: the joint run of {len(group)} cells failed ({exc}); "
                          "running them one by one")
        return all([self.attempt(cell, gpu, last) for cell in group])

    def attempt_share(self, share: Sequence[Sequence[Cell]], gpu: int | None, last: bool = True) -> bool:
        """Run several models' cells in one lmms-eval process (:meth:`run_share`); a model whose output is missing
        (or every model, when the process failed) runs again on its own (:meth:`attempt_joint`)."""
        groups = [g for g in ([c for c in group if c not in self.result.ran] for group in share) if g]
        api = [g for g in groups if self.models[g[0].model].get("kind") == "api"]
        together = [g for g in groups if g not in api]
        left = list(api)  # an API row keeps its own process (its class, or a replay's --system_instruction)
        if len(together) > 1:
            try:
                self.run_share(together, gpu)
            except (FrankenevalError, OSError, subprocess.SubprocessError) as exc:
                if disk_error(exc) is not None:
                    raise
                self.progress(f"[transfer] the lmms-eval process of {len(together)} models failed ({exc}); "
                              "running each model on its own")
            left += [g for g in together if any(c not in self.result.ran for c in g)]
        else:
            left += together
        return all([self.attempt_joint(g, gpu, last) for g in left])

    def run_share(self, groups: Sequence[Sequence[Cell]], gpu: int | None) -> None:
        """Run ``groups`` (each one model's cells) as one lmms-eval process, one model after another, each into its
        own scratch folder; then place every cell whose output is there, as :meth:`run_joint` does. A model without
        output is said and left unplaced (the caller runs it again)."""
        jobs = []
        for group in groups:
            scratch = self.run_dir / "cells" / group[0].model / ".joint.partial"
            cells.clear(scratch)
            scratch.mkdir(parents=True)
            job = self.job(group[0], gpu, scratch)
            job.tasks = ",".join(c.task for c in group)
            jobs.append(job)
        name = "process" if gpu is None else f"process_gpu{gpu}"
        t0 = time.perf_counter()
        self.chunk_runner(jobs, self.run_dir / "logs" / f"{name}.log")
        seconds = time.perf_counter() - t0
        n = sum(len(g) for g in groups)
        for group, job in zip(groups, jobs):
            tasks = [c.task for c in group]
            try:
                for cell in group:
                    self._place_cut(job.output_dir, cell, tasks, seconds / n, gpu, joint=n)
                    self.result.ran.append(cell)
            except CellFailed as exc:
                self.progress(f"[transfer] {group[0].model}: no output from the shared lmms-eval process ({exc}); "
                              "running its cells on their own")
            finally:
                cells.clear(job.output_dir)

    def run_joint(self, group: Sequence[Cell], gpu: int | None) -> None:
        """Run ``group`` (cells of one model) as one lmms-eval process into a scratch folder, then move each cell's
        share into place exactly as :meth:`run_one` does (partial folder, stamp, rename, run store)."""
        model = group[0].model
        scratch = self.run_dir / "cells" / model / ".joint.partial"
        cells.clear(scratch)
        scratch.mkdir(parents=True)
        tasks = [c.task for c in group]
        job = self.job(group[0], gpu, scratch)
        job.tasks = ",".join(tasks)
        job.log_path = self.run_dir / "logs" / f"{model}__joint.log"
        t0 = time.perf_counter()
        self.runner(job)
        seconds = time.perf_counter() - t0
        for cell in group:
            self._place_cut(scratch, cell, tasks, seconds / len(group), gpu, joint=len(group))
        cells.clear(scratch)

    def _place_cut(self, scratch: Path, cell: Cell, tasks: Sequence[str], seconds: float, gpu: int | None,
                   joint: int) -> None:
        """Cut ``cell``'s share out of a joint lmms-eval output in ``scratch`` (``tasks``: what that run ran) into
        the cell's partial folder and place it (:meth:`_place`)."""
        final = self.run_dir / cell.relpath()
        partial = final.with_name(final.name + ".partial")
        cells.clear(partial)
        partial.mkdir(parents=True)
        cells.cut_joint_output(scratch, cell, partial, tasks)
        self._place(cell, partial, seconds, gpu, joint=joint)

    def job(self, cell: Cell, gpu: int | None, output_dir: Path) -> CellJob:
        """The :class:`CellJob` of ``cell`` on ``gpu``, writing into ``output_dir``."""
        info = self.models[cell.model]
        if info.get("kind") == "api" and cell.model not in self.replay:
            return self._api_job(cell, info, gpu, output_dir)
        path = str(info["path"])
        if "," in path or "," in str(self.run_dir):
            raise CellFailed(f"{path!r} or {str(self.run_dir)!r} contains a comma, which lmms-eval's --model_args "
                             "cannot carry")
        margs = f"pretrained={path},batch_size={self.batch_size},system_prompt={self.prompts[cell.model][1]}"
        if self.max_new_tokens:
            margs += f",max_new_tokens={self.max_new_tokens}"
        if self.item_time_limit:
            margs += f",item_time_limit={float(self.item_time_limit)!r}"
        if self.model_args:
            margs += "," + self.model_args
        if cell.model in self.replay:  # --regrade: the stored responses, no model loaded
            if "," in self.replay[cell.model]:
                raise CellFailed(f"{self.replay[cell.model]!r} contains a comma, which --model_args cannot carry")
            margs += f",replay={self.replay[cell.model]}"
        job = self.job_base(cell, gpu, output_dir, margs, path)
        if info.get("kind") == "api":  # a regraded API row: its contexts were asked with the prompt as instruction
            job.system_instruction = self.prompts[cell.model][0].text or None
        return job

    def _api_job(self, cell: Cell, info: Mapping[str, Any], gpu: int | None, output_dir: Path) -> CellJob:
        """An API row's job: lmms-eval's API class with the row's own model args (no --model-args, no batch size,
        no item time limit: those are franken_qwen's), the system prompt as ``--system_instruction``."""
        prompt = self.prompts[cell.model][0]
        job = self.job_base(cell, gpu, output_dir, str(info["model_args"]), str(info["path"]))
        job.lmms_model = str(info["lmms_model"])
        job.system_instruction = prompt.text or None
        return job

    def job_base(self, cell: Cell, gpu: int | None, output_dir: Path, margs: str, path: str) -> CellJob:
        env = dict(self.env)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.devices[gpu]
        return CellJob(cell=cell, pretrained=path, output_dir=output_dir, run_dir=self.run_dir,
                       log_path=self.run_dir / "logs" / f"{cell.model}__{cell.slug}.log", model_args=margs,
                       include_path=self.include_path, env=env, keep_fds=self.keep_fds,
                       gen_kwargs=f"max_new_tokens={self.max_new_tokens}" if self.max_new_tokens else None)

    def run_one(self, cell: Cell, gpu: int | None) -> None:
        """Run ``cell`` into ``<cell>.partial``, rename it into place, record it in the run store."""
        final = self.run_dir / cell.relpath()
        partial = final.with_name(final.name + ".partial")
        cells.clear(partial)
        partial.mkdir(parents=True)
        job = self.job(cell, gpu, partial)
        t0 = time.perf_counter()
        self.runner(job)
        seconds = time.perf_counter() - t0
        if find_results(partial)[0] is None:
            raise CellFailed(f"{cell.key}: the runner wrote no *_results.json under {partial}")
        self._place(cell, partial, seconds, gpu)

    def _place(self, cell: Cell, partial: Path, seconds: float | None, gpu: int | None, joint: int = 1,
               reused_from: Path | None = None) -> None:
        """Stamp a cell's finished ``partial`` folder, rename it into place and record it in the run store
        (``reused_from``: the run it was taken from, :func:`.reuse.reuse_cells`)."""
        final = self.run_dir / cell.relpath()
        # the model content it ran (and where it came from: --reuse-from, --regrade), renamed in with it
        cells.write_cell_stamp(partial, cell, self.models, self.record_extra.get(cell.key))
        cells.clear(final)
        os.replace(partial, final)  # atomic: the cell dir only ever holds a finished lmms-eval output
        res, samples = find_results(final)
        record = cell_record(self.run_dir, cell, self.models, res, samples, seconds, self.prompts[cell.model][0])
        if joint > 1:
            record["joint_run_cells"] = joint  # seconds: the joint process's time shared out evenly
        record.update(self.record_extra.get(cell.key) or {})
        self.store.append(cell.key, record)
        if reused_from is not None:
            self.progress(f"[reuse] {cell.model} x {cell.task}: {cells.headline(res)} (taken from {reused_from})")
            return
        where = ("" if gpu is None else f", GPU {gpu}") + (f", 1/{joint} of a joint run" if joint > 1 else "")
        with self.lock:
            self.done += 1
            self.progress(f"[transfer {self.done}/{len(self.pending)}] {cell.model} x {cell.task}: "
                          f"{cells.headline(res)} ({seconds:.1f}s{where})")


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
    cuts: Sequence[int] | None = None,
    api_models: Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> TransferResult:
    """Materialize the variants of ``recipe`` and run every (model, task) cell (see :func:`run_cells`).

    ``recipe``: a built-in name (``openmmreasoner``, ``revisual_r1``, ``mmr1``, ``tiny``), a recipe YAML, a
    merge-spec YAML, or a :class:`frankeneval.transferability.recipes.Recipe`. ``models`` re-points ``in`` / ``rl`` /
    ``base`` at local copies; Base (when the recipe names it), IN and RL are run unless ``include_reference`` is
    false. ``allow_pickle``: read pickle (``.bin``) sources when splicing and let every cell's
    ``franken_qwen`` load them (model arg ``allow_pickle=true``). Raises :class:`FrankenevalError` naming the
    failed cells, if any, after running all the others.

    ``evict_variants``: materialize the variants lazily, ``max(1, gpus)`` at a time, and delete each one this
    run materialized once its cells ran (peak disk: Base / IN / RL plus ``max(1, gpus)`` variants); see
    :func:`_run_evicting`. Off (the default): every variant is materialized up front and nothing is deleted.

    ``cuts`` (``--cuts C1 C2``): the block cuts of every variant (:func:`_with_cuts`), instead of the recipe's (or
    ``n // 3, 2n // 3``); the cuts in use are recorded in the manifest's settings.

    ``api_models``: API rows, ``LABEL=LMMS_MODEL:MODEL_ARGS`` texts (:func:`.cells.parse_api_model`) or parsed
    entries; run after the other rows on the same tasks, checked (key, package, server) before anything is spliced.
    """
    api = _api_rows(api_models)
    if api:
        cells.check_api_access(api, {**os.environ, **dict(kwargs.get("env") or {})})
        kwargs["_check_api"] = True
    recipe = _load_recipe(recipe, models, cuts)
    models = None  # applied
    kwargs["cuts"] = effective_cuts(recipe)
    leases: list = []  # this run's leases on the splices it uses (held until its cells ran)
    try:
        if evict_variants:
            result = _run_evicting(run_dir, recipe, variants=variants, tasks=tasks, models=models, _api=api,
                                   splice_cache=splice_cache, include_reference=include_reference, progress=progress,
                                   allow_pickle=allow_pickle, _leases=leases, **kwargs)
        else:
            name, prepared = prepare_models(recipe, variants=variants, models=models, splice_cache=splice_cache,
                                            progress=progress, allow_pickle=allow_pickle, leases=leases)
            _allow_pickle_arg(kwargs, allow_pickle)
            if not include_reference:
                prepared = {k: v for k, v in prepared.items() if v["kind"] == "variant"}
            prepared.update(_api_rows(api, taken=prepared))
            result = run_cells(run_dir, prepared, list(tasks), recipe=name, progress=progress, **kwargs)
    finally:
        for lease in leases:
            lease.release()
    if result.failed:
        first = next(iter(result.failed.items()))
        raise FrankenevalError(
            f"{len(result.failed)} of {len(result.cells)} cells failed (rerun to retry them; finished cells are kept). "
            f"First: {first[0]}: {first[1]}"
        )
    return result


def _api_rows(rows: Sequence[str] | Mapping[str, Mapping[str, Any]] | None,
              taken: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{label: API row entry} of ``--api-model`` texts (or entries); a label clashing with a row of the recipe or
    another API row is refused."""
    if isinstance(rows, Mapping):
        out = {str(k): dict(v) for k, v in rows.items()}
    else:
        out = {}
        for text in rows or ():
            label, info = cells.parse_api_model(text)
            if label in out:
                raise FrankenevalError(f"--api-model {label}: given twice")
            out[label] = info
    clash = [k for k in out if k in (taken or {}) or k in REFERENCE_LABELS]
    if clash:
        raise FrankenevalError(f"--api-model {clash[0]}: the label names a row of the recipe; choose another")
    return out


def _allow_pickle_arg(kwargs: dict[str, Any], allow_pickle: bool) -> None:
    """Add ``allow_pickle=true`` to the cells' ``model_args`` when ``allow_pickle``."""
    if allow_pickle:
        kwargs["model_args"] = ",".join(x for x in (kwargs.get("model_args"), "allow_pickle=true") if x)


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
    _leases: list | None = None,
    _api: Mapping[str, Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> TransferResult:
    """:func:`run_transfer` with ``evict_variants``: the same cells, run store and manifest, the variants
    materialized lazily.

    Under the run folder's lock: Base / IN / RL cells first; then the variants with an unfinished cell, in chunks
    of ``max(1, gpus)``: materialize the chunk, run its cells, delete every folder of it this run owns (also when
    a cell failed, so the disk bound holds). Ownership and the checks before deleting:
    :func:`frankeneval.transferability.splice.materialize_owned` and
    :func:`~frankeneval.transferability.splice.evict_splice`; the stamp goes to the manifest (``splice_owner``)
    before any cell runs, so a killed run's rerun reuses that splice and deletes it afterwards. The manifest gets
    ``evict_variants: true`` and, per variant, ``evicted`` (and ``kept``: why not, when not).

    Every splice this run uses is leased (:func:`.splice.lease_splice`, into ``_leases``) from its
    materialization until its cells ran; a splice another live run holds a lease on is kept (its stamp stays in
    the manifest, so a later run of this folder deletes it once it is free). A variant is finished when each
    of its cells was made from the splice its spec and its sources' contents give now (:func:`_unfinished`).
    """
    leases = _leases if _leases is not None else []
    rec, chosen = _recipe_variants(recipe, variants, models)
    refs = _reference_models(rec)  # resolved even with include_reference off, as prepare_models does
    _allow_pickle_arg(kwargs, allow_pickle)
    tasks = list(tasks)
    ref_models = {**(refs if include_reference else {}), **_api_rows(_api, taken={v: 1 for v in chosen})}
    chunk = max(1, int(kwargs.get("gpus") or 0))
    inputs = [(label, info["path"]) for label, info in refs.items()]

    with run_folder(run_dir, [*ref_models, *chosen], tasks) as (folder, fd):

        def run(group: Mapping[str, Mapping[str, Any]], quiet: bool = False) -> None:
            part = _run_cells(folder, group, tasks, recipe=rec.name, progress=(lambda s: None) if quiet else progress,
                              _keep_fds=(fd,), _manifest_extra={"evict_variants": True},
                              _plan=[*ref_models, *chosen], **kwargs)
            result.ran += part.ran
            result.skipped += part.skipped
            result.failed.update(part.failed)

        result = TransferResult(run_dir=folder, cells=plan_cells([*ref_models, *chosen], tasks))
        # first: Base / IN / RL; with none, the call still checks the run store's settings and writes the manifest
        run(ref_models, quiet=not ref_models)
        recorded = read_manifest(folder).get("models") or {}
        pending = _unfinished(folder, rec, chosen, tasks, recorded, inputs, result, progress, allow_pickle)
        mine: dict[str, dict[str, Any]] = {}  # splice folder -> stamp, materialized by this run and not deleted yet
        for start in range(0, len(pending), chunk):
            group = {v: _materialize_variant(folder, rec, v, f"{i}/{len(pending)}", recorded.get(v) or {}, mine,
                                             splice_cache, allow_pickle, progress, leases)
                     for i, v in enumerate(pending[start : start + chunk], start + 1)}
            run(group)
            _evict_chunk(folder, group, mine, result.failed, inputs, progress, leases)
    return result


def _unfinished(folder: Path, rec: Any, chosen: Sequence[str], tasks: Sequence[str], recorded: Mapping[str, Any],
                inputs: Sequence[tuple[str, str]], result: TransferResult,
                progress: Callable[[str], None], allow_pickle: bool = False) -> list[str]:
    """The variants with an unfinished cell (:func:`.cells.finished_cell` against the build hash of the splice
    its spec and its sources give now, computed without materializing it); a finished one is skipped and settled
    (:func:`_settle_finished`)."""
    from frankeneval.transferability.splice import plan_splice

    pending = []
    for v in chosen:
        expected = _splice_fingerprint(plan_splice(rec.variant(v), allow_pickle=allow_pickle).build_hash)
        if all(cells.finished_cell(folder / Cell(v, t).relpath(), expected, label=f"{v} model")[0] is not None
               for t in tasks):
            result.skipped += [Cell(v, t) for t in tasks]  # finished (recorded, or adopted by the next plain run)
            _settle_finished(folder, v, recorded.get(v), inputs, progress)
        else:
            pending.append(v)
    if len(pending) < len(chosen):
        progress(f"[evict] {len(chosen) - len(pending)} of {len(chosen)} variants already finished: not materialized")
    return pending


def _materialize_variant(folder: Path, rec: Any, v: str, counter: str, old: Mapping[str, Any],
                         mine: dict[str, dict[str, Any]], splice_cache: str | os.PathLike | None, allow_pickle: bool,
                         progress: Callable[[str], None], leases: list) -> dict[str, Any]:
    """Materialize variant ``v`` (leased: into ``leases``) and record whether this run owns its folder (in
    ``mine`` and, before any of its cells runs, in the manifest); its model info."""
    from frankeneval.transferability import splice

    spec = rec.variant(v)
    progress(f"[splice {counter}] {v}: {rec.definitions.get(v, spec.describe())}")
    path, stamp = splice.materialize_owned(spec, splice_cache, allow_pickle=allow_pickle,
                                           known=[old.get("splice_owner"), *mine.values()], leases=leases)
    info: dict[str, Any] = {**_variant_info(rec, v, path), "evicted": False}
    if stamp is not None:
        mine[str(path)] = stamp
        info.update(splice_owner=stamp, kept=None)
    else:
        info.update(splice_owner=None, kept=KEPT_BEFORE)
    patch_manifest(folder, {v: info})
    return {k: val for k, val in info.items() if val is not None}


def _evict_chunk(folder: Path, group: Mapping[str, Mapping[str, Any]], mine: dict[str, dict[str, Any]],
                 failed: Mapping[str, str], inputs: Sequence[tuple[str, str]], progress: Callable[[str], None],
                 leases: list) -> None:
    """Release this run's leases on the folders of ``group`` (their cells ran), then delete every one of them
    this run materialized (also when one of its cells failed) that no other live run holds a lease on."""
    paths = {str(info["path"]) for info in group.values()}
    for lease in [x for x in leases if str(x.splice) in paths]:
        lease.release()
        leases.remove(lease)
    for path in dict.fromkeys(str(info["path"]) for info in group.values()):
        if path not in mine:
            continue
        labels = [v for v, info in group.items() if str(info["path"]) == path]
        failed_here = any(k.split("::", 1)[0] in labels for k in failed)
        note = " (a cell failed: the next run splices it again)" if failed_here else ""
        _evict_and_record(folder, labels, Path(path), mine.pop(path), inputs, progress, note=note)


def _evict_and_record(run_dir: Path, labels: Sequence[str], path: Path, stamp: Mapping[str, Any],
                      inputs: Sequence[tuple[str, str]], progress: Callable[[str], None], note: str = "") -> None:
    """Delete ``path`` (:func:`.splice.evict_splice`) and record it in the manifest for every variant of ``labels``."""
    from frankeneval.transferability import splice

    names = ", ".join(labels)
    try:
        why = splice.evict_splice(path, stamp, inputs)
    except OSError as exc:  # stamp kept: the next run tries again
        progress(f"[evict] {names}: could not delete {path}: {exc}")
        return
    if why is None:
        patch_manifest(run_dir, {v: {"evicted": True, "splice_owner": None, "kept": None} for v in labels})
        progress(f"[evict] {names}: deleted {path}{note}")
    else:  # in use by another run: the stamp stays, so a later run of this folder deletes it once it is free
        owner = dict(stamp) if why.startswith(splice.IN_USE) else None
        patch_manifest(run_dir, {v: {"evicted": False, "splice_owner": owner, "kept": why} for v in labels})
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
        patch_manifest(run_dir, {label: {"evicted": False, "kept": KEPT_UNOWNED}})


