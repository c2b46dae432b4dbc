"""Aggregation of ``matrices.jsonl`` records into ``summary.json``: mean and sum of every metric per unified
layer, section, component, section/component and LLM region, and the reference's diversity view (:func:`diversity`:
per-layer spectral norm and log spectral volume, representative spectra of the LLM thirds)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
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


DIVERSITY_SOURCE = "github.com/xirui-li/Frankenstein scripts/characterisation_diversity.py"
DIVERSITY_METRICS = ("spectral_norm", "log_spectral_volume")
REGIONS = ("early", "middle", "late")
PER_LAYER_RULE = (
    "per unified layer, the mean over the layer's matrices with spectra of spectral_norm (σ₁) and "
    "log_spectral_volume (Σ_{i≤volume_k} log(σᵢ + 1e-12)) of ΔIN and ΔRL (the reference's spectral_norm_mean / "
    "log_volume_mean, LayerwiseSVDAnalyzer.run)"
)
REPRESENTATIVE_RULE = (
    "per LLM third (early / middle / late: t = n // 3, 0-based decoder layer j < t, < 2t, else late), the matrices "
    "with spectra sorted by unified layer, ties in module order (the family description's order = the state_dict "
    "order the reference iterates), and the one at index len // 2 (the reference's get_representative, "
    "plot_svd_spectrum_comparison); its top-k σ of ΔIN and ΔRL, drawn as σᵢ/σ₁"
)


def diversity(
    records: list[dict[str, Any]], *, module_order: Sequence[str] | None = None, volume_k: int | None = None
) -> dict[str, Any] | None:
    """The reference's diversity view of the records (``characterisation_diversity.py``); None without spectra.

    * ``by_layer`` (key: unified layer as a string): ``{n, delta_in: {spectral_norm, log_spectral_volume},
      delta_rl: {...}}``, each the *mean* over the layer's matrices that have spectra (:data:`PER_LAYER_RULE`; the
      reference's ``summary[...]['spectral_norm_mean']`` / ``['log_volume_mean']``). Matrices without spectra
      (``spectra_skipped``) are left out, as the reference drops their whole entry.
    * ``region_spectra``: per LLM third, the representative matrix (:data:`REPRESENTATIVE_RULE`; the reference's
      ``get_representative``: ``sorted(layer_list, key=lambda x: x['layer_idx'])[len(...) // 2]``) with its top-k σ
      of ΔIN and ΔRL; None for a third without matrices. Python's sort is stable, so the reference breaks ties
      within a layer by its ``state_dict`` order; ``module_order`` (the checkpoint family's tensor names in
      description order, which follows the modules' registration order) reproduces it. Names not in
      ``module_order`` come after, in record order.
    """
    spectral = [r for r in records if all(m in r[d] for d in ("delta_in", "delta_rl") for m in DIVERSITY_METRICS)]
    if not spectral:
        return None
    by_layer = {
        key: {"n": len(group), **{d: {m: mean_sum(r[d][m] for r in group)["mean"] for m in DIVERSITY_METRICS}
                                  for d in ("delta_in", "delta_rl")}}
        for key, group in group_by(spectral, lambda r: r["layer"]).items()
    }
    rank = {name: i for i, name in enumerate(module_order or ())}
    position = {r["name"]: i for i, r in enumerate(records)}

    def order(r: dict[str, Any]) -> tuple[int, int, int]:
        name = r["name"]
        return (r["layer"], 0, rank[name]) if name in rank else (r["layer"], 1, position[name])

    spectra: dict[str, Any] = {}
    for region in REGIONS:
        cands = sorted((r for r in spectral if r.get("region") == region and r["layer"] is not None
                        and "sigma_top" in r["delta_in"] and "sigma_top" in r["delta_rl"]), key=order)
        if not cands:
            spectra[region] = None
            continue
        i = len(cands) // 2
        r = cands[i]
        spectra[region] = {"name": r["name"], "layer": r["layer"], "index": i, "n_candidates": len(cands),
                           "delta_in": list(r["delta_in"]["sigma_top"]), "delta_rl": list(r["delta_rl"]["sigma_top"])}
    return {"source": DIVERSITY_SOURCE, "volume_k": volume_k, "per_layer_rule": PER_LAYER_RULE,
            "representative_rule": REPRESENTATIVE_RULE, "by_layer": by_layer, "region_spectra": spectra}


def summarize(
    records: list[dict[str, Any]],
    run: dict[str, Any],
    *,
    n_planned: int,
    seconds: float | None = None,
    module_order: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The summary.json object for the records measured so far (``module_order``: see :func:`diversity`)."""
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
        "diversity": diversity(records, module_order=module_order,
                               volume_k=(run.get("settings") or {}).get("volume_k")),
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

