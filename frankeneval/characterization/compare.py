"""Cross-lineage comparison: cosine similarity and top-r singular-subspace overlap between the ΔRL = RL - IN
of two or more lineages, per matrix and every pair (``compare.jsonl``), aggregated per unified layer, section,
component and region (``compare_summary.json``)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from frankeneval import __version__
from frankeneval.characterization.aggregate import GROUPINGS, group_by, mean_sum
from frankeneval.characterization.plan import plan_matrices, role_fields
from frankeneval.characterization.rundir import device_info, open_checkpoint, prepare_run_dir, resolve_device, utc_now
from frankeneval.characterization.schema import (
    COMPARE_FILE,
    COMPARE_RUN_FILE,
    COMPARE_SCHEMA,
    COMPARE_SUMMARY_FILE,
    RUN_FILE,
    compare_record_problem,
)
from frankeneval.characterization.spectra import (
    EPS,
    SVD_METHODS,
    as_matrix,
    choose_method,
    delta,
    dot64,
    frobenius_norm,
    gram,
    non_finite_report,
    overlap_report,
    subspaces_from_gram,
    top_singular_subspaces,
)
from frankeneval.core.outdir import claim_for
from frankeneval.core.results import JsonlLog, write_json_atomic
from frankeneval.errors import FrankenevalError, NonFiniteWeights, SpecError
from frankeneval.weights.checkpoint import Checkpoint, check_compatible
from frankeneval.weights.tensor_stream import stream_tensors


@dataclass
class LineageRef:
    """The IN and RL members of one lineage (Base is not needed for ΔRL), with a label."""

    label: str
    in_: str
    rl: str
    base: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def lineage_ref(item: str) -> LineageRef:
    """Parse a ``--compare`` item.

    * a characterize output directory (its run.json names the checkpoints; label = its label or dir name);
    * ``recipe:NAME`` (a built-in recipe);
    * ``[LABEL=]BASE,IN,RL`` or ``[LABEL=]IN,RL`` (paths or hub ids).
    """
    label = None
    if "=" in item and not Path(item).exists():
        label, item = item.split("=", 1)
    if item.startswith("recipe:"):
        from frankeneval.transferability.recipes import get_recipe  # lazy

        name = item[len("recipe:") :]
        m = get_recipe(name).models
        return LineageRef(label or name, str(m["in"]), str(m["rl"]), str(m["base"]))
    p = Path(item)
    if p.is_dir() and (p / RUN_FILE).is_file():
        run = json.loads((p / RUN_FILE).read_text())
        models = run["models"]
        src = lambda k: models[k].get("path") or models[k]["source"]  # noqa: E731
        return LineageRef(label or run.get("label") or p.name, src("in"), src("rl"), src("base"), {"run_dir": str(p)})
    parts = [x for x in item.split(",") if x]
    if len(parts) in (2, 3):
        base = parts[0] if len(parts) == 3 else None
        return LineageRef(label or f"lineage{abs(hash(item)) % 10000}", parts[-2], parts[-1], base)
    raise SpecError(
        f"cannot read --compare item {item!r}: give a characterize output directory, recipe:NAME, or [LABEL=]BASE,IN,RL"
    )


def compare(
    lineages: Sequence[LineageRef | str],
    out_dir: str | os.PathLike,
    *,
    rank_r: int = 8,
    sections: Sequence[str] | None = None,
    svd_method: str = "auto",
    device: str | torch.device = "auto",
    overwrite: bool = False,
    progress: bool = True,
    queue_depth: int = 2,
    chunk_bytes: int = 64 << 20,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Cosine similarity and top-r subspace overlap between the ΔRL of two or more lineages.

    Writes compare.jsonl (per matrix, every pair) and compare_summary.json (per unified layer, section,
    region and overall, every pair). The ΔRL of all lineages must have the same matrices and shapes.
    """
    refs = [x if isinstance(x, LineageRef) else lineage_ref(x) for x in lineages]
    if len(refs) < 2:
        raise SpecError("--compare needs at least two lineages")
    labels = [r.label for r in refs]
    if len(set(labels)) != len(labels):
        raise SpecError(f"--compare labels must be distinct, got {labels} (use LABEL=... to name them)")
    if svd_method not in SVD_METHODS:
        raise SpecError(f"svd_method must be one of {SVD_METHODS}")
    dev = resolve_device(device)
    ckpts: list[Checkpoint] = []
    for r in refs:
        ckpts += [open_checkpoint(r.in_, allow_pickle=allow_pickle), open_checkpoint(r.rl, allow_pickle=allow_pickle)]
    check_compatible(ckpts, [f"{lab}/{m}" for lab in labels for m in ("in", "rl")])
    lmap = ckpts[0].layer_map
    plan = plan_matrices(ckpts[0], sections)
    if not plan:
        raise FrankenevalError("no analysed weight matrices found (check --sections)")
    inputs = [(f"{labels[i // 2]} {('in', 'rl')[i % 2]}", c.path) for i, c in enumerate(ckpts)]
    inputs += [(f"{r.label} run", r.extra["run_dir"]) for r in refs if r.extra.get("run_dir")]
    out = Path(claim_for("characterize --compare", out_dir, inputs=inputs))
    fps = [c.fingerprint() for c in ckpts]
    settings = {"rank_r": rank_r, "sections": list(sections) if sections else None, "svd_method": svd_method}
    meta = {
        "schema": COMPARE_SCHEMA,
        "frankeneval": __version__,
        "created": utc_now(),
        "labels": labels,
        "lineages": [{"label": r.label, "in": fps[2 * i], "rl": fps[2 * i + 1], **r.extra} for i, r in enumerate(refs)],
        "settings": settings,
        "inputs": {f"{lab} {m} model": {"weights": fps[2 * i + j]["weights_sha256"]}
                   for i, lab in enumerate(labels) for j, m in enumerate(("in", "rl"))},
        "n_planned": len(plan),
        "resume_key": {"settings": settings, "labels": labels, "weights": [f["weights_sha256"] for f in fps]},
        **device_info(dev),
    }
    prepare_run_dir(out, COMPARE_RUN_FILE, meta, overwrite=overwrite, files=(COMPARE_FILE, COMPARE_SUMMARY_FILE))
    log = JsonlLog(out / COMPARE_FILE, allow_nan=False, check=compare_record_problem)
    done = {r["name"] for r in log.records}
    todo = [p for p in plan if p.name not in done]
    pairs = [(i, j) for i in range(len(refs)) for j in range(i + 1, len(refs))]
    non_finite: list[str] = []
    try:
        bar = tqdm(
            total=len(plan), initial=len(plan) - len(todo), desc="compare", unit="matrix", disable=not progress,
            dynamic_ncols=True,
        )
        with stream_tensors(
            ckpts, [p.name for p in todo], dev, queue_depth=queue_depth, chunk_bytes=chunk_bytes
        ) as (items, _):
            by_name = {p.name: p for p in todo}
            for name, tensors in items:
                rec = role_fields(by_name[name], lmap)
                try:
                    rec.update(measure_rl_agreement(tensors, labels, pairs, rank_r=rank_r, svd_method=svd_method))
                except NonFiniteWeights as exc:  # named at the end; every finite matrix is still compared
                    non_finite.append(f"{name} ({exc})")
                    bar.update()
                    continue
                del tensors
                log.append(rec)
                bar.update()
        bar.close()
    finally:
        log.close()
    if non_finite:
        from frankeneval.characterization.characterize import non_finite_error

        raise non_finite_error(non_finite, len(plan), out / COMPARE_FILE, COMPARE_SUMMARY_FILE)
    planned = {p.name for p in plan}
    records = [r for r in log.records if r["name"] in planned]
    summary = summarize_compare(records, meta, n_planned=len(plan))
    write_json_atomic(out / COMPARE_SUMMARY_FILE, summary, indent=2, allow_nan=False)
    return summary


def measure_rl_agreement(
    tensors: Sequence[torch.Tensor],
    labels: Sequence[str],
    pairs: Sequence[tuple[int, int]],
    *,
    rank_r: int,
    svd_method: str = "auto",
) -> dict[str, Any]:
    """Per-matrix ΔRL agreement: ``tensors`` = [IN₀, RL₀, IN₁, RL₁, ...]."""
    deltas = [as_matrix(delta(tensors[2 * k], tensors[2 * k + 1])) for k in range(len(labels))]
    norms = torch.stack([frobenius_norm(d) for d in deltas]).tolist()
    if not all(math.isfinite(n) for n in norms):  # a NaN / Inf weight: no spectrum, no JSON
        raise NonFiniteWeights(non_finite_report({f"{lab} {m}": tensors[2 * k + j] for k, lab in enumerate(labels)
                                                  for j, m in enumerate(("in", "rl"))}) or "a ΔRL norm is not finite")
    dots = torch.stack([dot64(deltas[i], deltas[j]) for i, j in pairs]).tolist() if pairs else []
    subspaces = None
    if rank_r > 0:
        method = choose_method(deltas[0].shape, deltas[0].device) if svd_method == "auto" else svd_method

        def bases(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if method == "gram":
                return subspaces_from_gram(d, gram(d), rank_r)
            return top_singular_subspaces(d, rank_r, method=method)[1:]

        subspaces = [bases(d) if n > EPS else None for d, n in zip(deltas, norms)]
    out_pairs = []
    for (i, j), dot in zip(pairs, dots):
        entry: dict[str, Any] = {
            "a": labels[i],
            "b": labels[j],
            "dot": dot,
            "cosine": dot / (norms[i] * norms[j]) if norms[i] > 0 and norms[j] > 0 else None,
        }
        if subspaces is not None:
            if subspaces[i] is not None and subspaces[j] is not None:
                rep = overlap_report(subspaces[i][0], subspaces[i][1], subspaces[j][0], subspaces[j][1])
                entry.update(
                    overlap_left=rep["left"], overlap_right=rep["right"],
                    chance_left=rep["chance_left"], chance_right=rep["chance_right"],
                )
            else:
                entry.update(overlap_left=None, overlap_right=None)
        out_pairs.append(entry)
    return {"delta_rl_fro": dict(zip(labels, norms)), "pairs": out_pairs}


def _compare_group(records: list[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(records), "pairs": {}}
    sq = {lab: sum(r["delta_rl_fro"][lab] ** 2 for r in records) for lab in labels}
    out["delta_rl_fro"] = {lab: math.sqrt(v) for lab, v in sq.items()}
    keys = {(p["a"], p["b"]) for r in records for p in r["pairs"]}
    for a, b in sorted(keys):
        ps = [p for r in records for p in r["pairs"] if (p["a"], p["b"]) == (a, b)]
        dot = sum(p["dot"] for p in ps)
        out["pairs"][f"{a}|{b}"] = {
            "a": a,
            "b": b,
            "cosine": dot / math.sqrt(sq[a] * sq[b]) if sq[a] > 0 and sq[b] > 0 else None,  # of the concatenated ΔRL
            "matrix_cosine": mean_sum(p.get("cosine") for p in ps),
            "overlap_left": mean_sum(p.get("overlap_left") for p in ps),
            "overlap_right": mean_sum(p.get("overlap_right") for p in ps),
        }
    return out


def summarize_compare(records: list[dict[str, Any]], run: dict[str, Any], *, n_planned: int) -> dict[str, Any]:
    """compare_summary.json: per group and pair, the cosine of the group's concatenated ΔRL, the mean
    per-matrix cosine and the mean left / right top-r subspace overlap."""
    labels = run["labels"]
    run = {k: v for k, v in run.items() if k != "resume_key"}
    groups = {
        name: {k: _compare_group(v, labels) for k, v in group_by(records, GROUPINGS[name]).items()}
        for name in ("by_layer", "by_section", "by_component", "by_region")
    }
    return {
        "schema": COMPARE_SCHEMA,
        "run": run,
        "labels": labels,
        "complete": len(records) == n_planned,
        "n_matrices": len(records),
        "n_planned": n_planned,
        "aggregates": {**groups, "all": _compare_group(records, labels) if records else None},
    }
