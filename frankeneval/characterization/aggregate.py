"""Aggregation of ``matrices.jsonl`` records into ``summary.json``: mean and sum of every metric per unified
layer, section, component, section/component and LLM region."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from frankeneval.characterization import reference
from frankeneval.characterization.measure import DELTA_METRICS
from frankeneval.characterization.schema import RECORD_DOC, SCHEMA, SUMMARY_DOC


def mean_sum(values: Iterable[float | None]) -> dict[str, Any]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return {"mean": sum(vals) / len(vals) if vals else None, "sum": sum(vals) if vals else None, "n": len(vals)}


def _aggregate_group(records: list[dict[str, Any]]) -> dict[str, Any]:
    sq_in = sum(r["delta_in"]["fro"] ** 2 for r in records)
    sq_rl = sum(r["delta_rl"]["fro"] ** 2 for r in records)
    sq_w = sum(r["norm_in"] ** 2 for r in records)
    group: dict[str, Any] = {
        "n": len(records),
        "energy": {
            "delta_in_fro": math.sqrt(sq_in),
            "delta_rl_fro": math.sqrt(sq_rl),
            "delta_in_rel_fro": math.sqrt(sq_in / sq_w) if sq_w > 0 else None,
            "delta_rl_rel_fro": math.sqrt(sq_rl / sq_w) if sq_w > 0 else None,
        },
        "cos_in_rl": mean_sum(r.get("cos_in_rl") for r in records),
    }
    for d in ("delta_in", "delta_rl"):
        group[d] = {m: mean_sum(r[d].get(m) for r in records) for m in DELTA_METRICS if any(m in r[d] for r in records)}
    if any(r.get("overlap_in_rl") for r in records):
        group["overlap_left"] = mean_sum((r.get("overlap_in_rl") or {}).get("left") for r in records)
        group["overlap_right"] = mean_sum((r.get("overlap_in_rl") or {}).get("right") for r in records)
    return group


def group_by(records: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        k = key(r)
        if k is not None:
            groups.setdefault(k, []).append(r)
    keys = sorted(groups, key=lambda k: (isinstance(k, str), k))
    return {str(k): groups[k] for k in keys}


GROUPINGS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "by_layer": lambda r: r["layer"],
    "by_section": lambda r: r["section"],
    "by_component": lambda r: r["component"],
    "by_section_component": lambda r: f"{r['section']}/{r['component']}",
    "by_region": lambda r: r["region"],
    "by_layer_component": lambda r: None if r["layer"] is None else f"{r['layer']}/{r['component']}",
}


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sum of every metric per unified layer, section, component, section/component, region."""
    out = {name: {k: _aggregate_group(v) for k, v in group_by(records, key).items()} for name, key in GROUPINGS.items()}
    out["all"] = _aggregate_group(records) if records else None
    return out


def summarize(
    records: list[dict[str, Any]], run: dict[str, Any], *, n_planned: int, seconds: float | None = None
) -> dict[str, Any]:
    """The summary.json object for the records measured so far."""
    run = {k: v for k, v in run.items() if k != "resume_key"}
    skipped = {r["name"]: r["spectra_skipped"] for r in records if r.get("spectra_skipped")}
    return {
        "schema": SCHEMA,
        "seed_compatible": bool(run.get("seed_compatible", False)),
        "run": run,
        "complete": len(records) == n_planned,
        "n_matrices": len(records),
        "n_planned": n_planned,
        "seconds": seconds,
        "notes": [SUMMARY_DOC, RECORD_DOC],
        "off_axis": [r["name"] for r in records if r["layer"] is None],
        "over_reference_limit": [r["name"] for r in records if r.get("over_reference_limit")],
        "skipped_by_reference_rule": [n for n, why in skipped.items() if why == reference.SKIP_OVER_LIMIT],
        "spectra_skipped": skipped,
        "reference_axis": reference_axis(records),
        "aggregates": aggregate(records),
    }


def reference_axis(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where the reference code's vision labels (-32 + block) differ from the unified axis (a tower of other than
    32 blocks): unified layer -> the reference's label, so both can be reported; None where they agree."""
    from frankeneval.weights.layermap import reference_vision_label

    labels = {r["layer"]: reference_vision_label(r["block"]) for r in records
              if r["section"] == "vision" and r["layer"] is not None and r.get("block") is not None}
    differ = {str(k): v for k, v in sorted(labels.items()) if k != v}
    if not differ:
        return None
    return {"rule": "the reference labels vision block i as -32 + i whatever the depth", "labels": differ}

