"""Update characterization: energy and spectra of ΔIN = IN - Base and ΔRL = RL - IN, streamed.

:func:`characterize` reads every analysed weight matrix (:mod:`~frankeneval.characterization.plan`: ≥ 2-D weights
that are not norms; embeddings and lm_head included, off the unified axis) of Base, IN and RL exactly once
(:func:`frankeneval.weights.tensor_stream.stream_tensors`), measures it (:mod:`~frankeneval.characterization.measure`,
on the GPU when there is one, CPU otherwise) and appends one JSON line per matrix to ``matrices.jsonl``; at the
end ``summary.json`` aggregates them (:mod:`~frankeneval.characterization.aggregate`). A rerun skips the matrices
already in ``matrices.jsonl`` (resumable); ``run.json`` holds the run's metadata and settings, and a rerun with
different settings or different weights refuses to mix results (:mod:`~frankeneval.characterization.rundir`).
``settings.seed_compatible`` (``--seed-compatible``) reproduces the paper's reference scripts instead of
docs/method.md's definitions (:mod:`~frankeneval.characterization.reference`); every output records which, and the
resume check keys on it. ``settings.weight_filter`` (``--weight-filter``) and ``settings.llm_only`` (``--llm-only``)
narrow the matrices measured (:func:`~frankeneval.characterization.plan.plan_matrices`); they are settings too, so
they are recorded in ``run.json`` / ``summary.json`` (``settings``) and a rerun with another filter is refused.
``summary.json`` also holds the reference's diversity view (:func:`~frankeneval.characterization.aggregate.diversity`).
The cross-lineage ΔRL comparison is :mod:`frankeneval.characterization.compare`.

Output schema: see :mod:`frankeneval.characterization.schema`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from frankeneval import __version__
from frankeneval.characterization import reference
from frankeneval.characterization.aggregate import summarize
from frankeneval.characterization.measure import CharacterizeSettings, measure_update
from frankeneval.characterization.plan import plan_matrices, role_fields
from frankeneval.characterization.rundir import device_info, open_checkpoint, prepare_run_dir, resolve_device, utc_now
from frankeneval.characterization.schema import MATRICES_FILE, RUN_FILE, SCHEMA, SUMMARY_FILE, matrix_record_problem
from frankeneval.core.outdir import claim_for
from frankeneval.core.results import JsonlLog, write_json_atomic
from frankeneval.errors import FrankenevalError, NonFiniteWeights, SpecError
from frankeneval.weights.checkpoint import Checkpoint, check_compatible
from frankeneval.weights.tensor_stream import stream_tensors

# the values of settings added after the first runs, as those runs were measured (filled into an older run.json's
# resume key, so such a run still resumes with the same settings and is refused with any other)
LEGACY_SETTINGS = {"seed_compatible": False, "weight_filter": None, "llm_only": False}


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
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Measure ΔIN and ΔRL of every analysed matrix; write matrices.jsonl, summary.json, run.json.

    Returns the summary. Raises :class:`ArchitectureMismatch` when the three checkpoints do not share
    every tensor name and shape.
    """
    settings = settings or CharacterizeSettings()
    dev = resolve_device(device)
    ckpts = [open_checkpoint(x, allow_pickle=allow_pickle) for x in (base, in_, rl)]
    check_compatible(ckpts, ["base", "in", "rl"])
    lmap = ckpts[0].layer_map
    seed = settings.seed_compatible
    plan = plan_matrices(ckpts[0], settings.sections, seed_compatible=seed, weight_filter=settings.weight_filter,
                         llm_only=settings.llm_only)
    if not plan:
        raise FrankenevalError("no analysed weight matrices found (check --sections"
                               + (f", --weight-filter {settings.weight_filter!r}" if settings.weight_filter else "")
                               + (", --llm-only" if settings.llm_only else "") + ")")
    out = Path(claim_for("characterize", out_dir, inputs=[(k, c.path) for k, c in zip(("base", "in", "rl"), ckpts)]))
    models = {k: c.fingerprint() for k, c in zip(("base", "in", "rl"), ckpts)}
    settings_d = asdict(settings)
    meta = {
        "schema": SCHEMA,
        "frankeneval": __version__,
        "created": utc_now(),
        "label": label,
        "seed_compatible": seed,
        "models": models,
        "inputs": {f"{k} model": {"weights": m["weights_sha256"]} for k, m in models.items()},
        "settings": settings_d,
        "n_vision_blocks": lmap.n_vision_blocks,
        "n_llm_layers": lmap.n_llm_layers,
        "n_planned": len(plan),
        "reference_deviation": reference.DEVIATIONS if seed else reference.DEFAULT_DEVIATIONS,
        "resume_key": {"settings": settings_d, "weights": [m["weights_sha256"] for m in models.values()]},
        **device_info(dev),
    }
    prepare_run_dir(out, RUN_FILE, meta, overwrite=overwrite, files=(MATRICES_FILE, SUMMARY_FILE),
                    legacy_settings=LEGACY_SETTINGS)
    log = JsonlLog(out / MATRICES_FILE, allow_nan=False, check=matrix_record_problem)
    foreign = [r["name"] for r in log.records if bool(r.get("seed_compatible", False)) != seed]
    if foreign:
        log.close()
        raise SpecError(f"{out}/{MATRICES_FILE} holds records measured with seed_compatible={not seed} "
                        f"(e.g. {foreign[0]}); use another --out directory or --overwrite")
    done = {r["name"] for r in log.records}
    todo = [p for p in plan if p.name not in done]
    t0 = time.perf_counter()
    non_finite: list[str] = []
    try:
        bar = tqdm(
            total=len(plan), initial=len(plan) - len(todo), desc="characterize", unit="matrix", disable=not progress,
            dynamic_ncols=True,
        )
        with stream_tensors(
            ckpts, [p.name for p in todo], dev, queue_depth=queue_depth, chunk_bytes=chunk_bytes
        ) as (items, bytes_read):
            by_name = {p.name: p for p in todo}
            for name, (w_base, w_in, w_rl) in items:
                t1 = time.perf_counter()
                rec = role_fields(by_name[name], lmap)
                try:
                    rec.update(measure_update(w_base, w_in, w_rl, settings))
                except NonFiniteWeights as exc:  # named at the end; every finite matrix is still measured
                    non_finite.append(f"{name} ({exc})")
                    bar.update()
                    continue
                rec["seconds"] = round(time.perf_counter() - t1, 6)
                del w_base, w_in, w_rl
                log.append(rec)
                bar.update()
                bar.set_postfix(read=f"{bytes_read() / 1e9:.1f}GB", refresh=False)
        bar.close()
    finally:
        log.close()
    if non_finite:
        raise non_finite_error(non_finite, len(plan), out / MATRICES_FILE, SUMMARY_FILE)
    planned = {p.name for p in plan}
    records = [r for r in log.records if r["name"] in planned]
    order = ckpts[0].architecture.tensor_names(lmap.n_vision_blocks, lmap.n_llm_layers)
    summary = summarize(records, meta, n_planned=len(plan), seconds=time.perf_counter() - t0, module_order=order)
    write_json_atomic(out / SUMMARY_FILE, summary, indent=2, allow_nan=False)
    return summary


def non_finite_error(bad: list[str], n_planned: int, records: Path, summary: str) -> NonFiniteWeights:
    """The one line that ends a run with matrices holding NaN / Inf: how many, the first few by name and what they
    hold, where the finite ones were written, and that no summary was."""
    shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
    return NonFiniteWeights(
        f"{len(bad)} of {n_planned} weight matrices hold NaN or Inf values, so their updates cannot be measured: "
        f"{shown}; the {n_planned - len(bad)} finite ones are in {records} ({summary} not written): repair or "
        "replace those checkpoints")


def characterize_recipe(name: str, out_dir: str | os.PathLike, **kwargs) -> dict[str, Any]:
    """:func:`characterize` for a built-in recipe (``frankeneval.transferability.recipes.get_recipe(name).models``)."""
    from frankeneval.transferability.recipes import get_recipe  # lazy: recipes is an optional sibling module

    models = get_recipe(name).models
    return characterize(models["base"], models["in"], models["rl"], out_dir, label=name, **kwargs)

