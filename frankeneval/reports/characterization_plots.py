"""Figures from frankeneval's JSON outputs (matplotlib, Agg backend: no display needed).

One function per figure; each takes the loaded JSON (or a run directory's records) and an output path,
writes one PNG and returns its path. :func:`plot_run` looks at a run directory, detects which outputs
exist and draws every figure it can.

Characterization (``summary.json`` / ``matrices.jsonl`` / ``compare_summary.json``):

* :func:`plot_energy_per_layer` -- relative update energy ‖Δ‖_F/‖W_IN‖_F of ΔIN and ΔRL across the unified
  layer axis, vision / projector / LLM shaded (per layer: the ratio of the layer's root-sum-squares; for a
  seed-compatible run the reference's mean over the layer's matrices of the per-matrix ratio,
  :func:`energy_per_layer_values`);
* :func:`plot_ranks_per_layer` -- mean stable and effective rank of ΔIN and ΔRL per layer;
* :func:`plot_spectra` -- normalized top-k singular values of ΔIN and ΔRL for chosen layers;
* :func:`plot_diversity_per_layer` -- the reference's diversity plots (``characterisation_diversity.py``,
  ``plot_spectral_norm_comparison`` / ``plot_log_volume_comparison``): mean spectral norm σ₁ and mean log spectral
  volume Σ_{i≤50} log(σᵢ + 1e-12) of ΔIN and ΔRL per unified layer (``summary.json: diversity.by_layer``);
* :func:`plot_region_spectra` -- the reference's ``plot_svd_spectrum_comparison``: σᵢ/σ₁ of the representative
  matrix of the early / middle / late LLM thirds, ΔIN solid and ΔRL dashed (``diversity.region_spectra``);
* :func:`plot_compare_heatmap` -- cross-lineage ΔRL similarity (cosine or subspace overlap) per layer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from frankeneval.characterization.schema import MATRICES_FILE, matrix_record_problem
from frankeneval.core.outdir import claim_for
from frankeneval.core.results import atomic_output, read_jsonl
from frankeneval.errors import FrankenevalError

SECTION_COLOURS = {"vision": "#dbe9f6", "projector": "#fde3c8", "llm": "#e2f0d9"}
DELTA_STYLE = {"delta_in": ("ΔIN", "#1f77b4"), "delta_rl": ("ΔRL", "#d62728")}


# -- helpers -------------------------------------------------------------------------------------------
def load_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def load_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    return read_jsonl(path)


def save_figure(fig, out: str | os.PathLike) -> Path:
    """Write ``fig`` to ``out`` atomically (temp file, then rename) and close it."""
    out = Path(out)
    try:
        with atomic_output(out) as tmp:
            fig.savefig(tmp, dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


def shade_sections(ax, layers: Sequence[int]) -> None:
    """Shade the vision (< 0), projector (0) and LLM (> 0) spans of a unified-layer x axis."""
    if not layers:
        return
    lo, hi = min(layers), max(layers)
    spans = {"vision": (lo - 0.5, -0.5), "projector": (-0.5, 0.5), "llm": (0.5, hi + 0.5)}
    for name, (a, b) in spans.items():
        if b <= a or a > hi + 0.5 or b < lo - 0.5:
            continue
        ax.axvspan(max(a, lo - 0.5), min(b, hi + 0.5), color=SECTION_COLOURS[name], zorder=0, lw=0)
        mid = (max(a, lo - 0.5) + min(b, hi + 0.5)) / 2
        ax.text(mid, 1.01, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8, color="0.3")
    ax.set_xlim(lo - 0.5, hi + 0.5)


def _layers(summary: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    return sorted(((int(k), v) for k, v in summary["aggregates"]["by_layer"].items()), key=lambda kv: kv[0])


def _title(summary: dict[str, Any], what: str) -> str:
    label = (summary.get("run") or {}).get("label")
    return f"{what}" + (f" — {label}" if label else "")


# -- characterization figures --------------------------------------------------------------------------
def is_seed_compatible(summary: dict[str, Any]) -> bool:
    """Whether a summary.json was measured with ``seed_compatible`` (older summaries: no)."""
    return bool(summary.get("seed_compatible", (summary.get("run") or {}).get("seed_compatible", False)))


def energy_per_layer_values(
    summary: dict[str, Any], *, relative: bool = True, seed_compatible: bool | None = None
) -> tuple[list[int], dict[str, list[float | None]]]:
    """The energy plot's points: unified layers and, per delta, one value per layer.

    Default (the paper's definition): ``sqrt(Σ‖Δ‖_F²) / sqrt(Σ‖W_IN‖_F²)`` over the layer's matrices (a ratio of
    aggregates; without ``relative`` the numerator alone). Seed-compatible (the reference's plot): the mean over the
    layer's matrices of the per-matrix ratio ``‖Δ‖_F / (‖W_IN‖_F + 1e-8)`` (without ``relative``: mean ‖Δ‖_F).
    ``seed_compatible=None``: as the run was measured.
    """
    seed = is_seed_compatible(summary) if seed_compatible is None else seed_compatible
    rows = _layers(summary)
    ys: dict[str, list[float | None]] = {}
    for d in DELTA_STYLE:
        if seed:
            metric = "rel_fro" if relative else "fro"
            ys[d] = [((g.get(d) or {}).get(metric) or {}).get("mean") for _, g in rows]
        else:
            ys[d] = [g["energy"][f"{d}_rel_fro" if relative else f"{d}_fro"] for _, g in rows]
    return [k for k, _ in rows], ys


def plot_energy_per_layer(summary: dict[str, Any], out: str | os.PathLike, *, relative: bool = True, log: bool = True,
                          seed_compatible: bool | None = None) -> Path:
    """ΔIN vs ΔRL energy per unified layer (:func:`energy_per_layer_values`: relative to ‖W_IN‖_F by default;
    the reference's mean of per-matrix ratios for a seed-compatible run)."""
    seed = is_seed_compatible(summary) if seed_compatible is None else seed_compatible
    xs, values = energy_per_layer_values(summary, relative=relative, seed_compatible=seed)
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(xs) + 3), 3.6))
    shade_sections(ax, xs)
    for d, (lab, col) in DELTA_STYLE.items():
        ax.plot(xs, [float("nan") if y is None else y for y in values[d]], marker="o", ms=3, color=col, label=lab)
    if log and any((y or 0) > 0 for ys in values.values() for y in ys):
        ax.set_yscale("symlog", linthresh=1e-6)
    ax.set_xlabel("unified layer (vision < 0, projector 0, LLM > 0)")
    label = "‖Δ‖_F / ‖W_IN‖_F" if relative else "‖Δ‖_F"
    ax.set_ylabel(f"mean per matrix of {label}" if seed else label)
    ax.set_title(_title(summary, "Update energy per layer" + (" (seed-compatible)" if seed else "")), pad=14)
    ax.legend(frameon=False)
    return save_figure(fig, out)


def plot_ranks_per_layer(summary: dict[str, Any], out: str | os.PathLike) -> Path:
    """Mean stable rank and mean effective rank of ΔIN and ΔRL per unified layer (two panels)."""
    rows = _layers(summary)
    xs = [k for k, _ in rows]
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.22 * len(xs) + 3), 5.6), sharex=True)
    for ax, metric, name in zip(axes, ("stable_rank", "effective_rank"), ("stable rank ‖Δ‖²_F/σ₁²", "effective rank")):
        shade_sections(ax, xs)
        for d, (lab, col) in DELTA_STYLE.items():
            ys = [((g.get(d) or {}).get(metric) or {}).get("mean") for _, g in rows]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", ms=3, color=col, label=lab)
        ax.set_yscale("log")
        ax.set_ylabel(f"mean {name}")
    axes[0].set_title(_title(summary, "Update rank per layer"
                             + (" (seed-compatible)" if is_seed_compatible(summary) else "")), pad=14)
    axes[0].legend(frameon=False)
    axes[-1].set_xlabel("unified layer (vision < 0, projector 0, LLM > 0)")
    return save_figure(fig, out)


def default_spectrum_layers(records: list[dict[str, Any]]) -> list[int]:
    """A handful of layers worth looking at: first vision block, projector, first / middle / last LLM layer."""
    layers = sorted({r["layer"] for r in records if r["layer"] is not None})
    vision = [x for x in layers if x < 0]
    llm = [x for x in layers if x > 0]
    chosen = ([vision[0]] if vision else []) + ([0] if 0 in layers else [])
    if llm:
        chosen += [llm[0], llm[len(llm) // 2], llm[-1]]
    return list(dict.fromkeys(chosen))


def resolve_spectrum_layers(records: list[dict[str, Any]], spec: str | Sequence[int | str] | None) -> list[int]:
    """Unified layers of a layer spec (the layer grammar, whole axis) on the records' axis; None = defaults."""
    if spec is None:
        return default_spectrum_layers(records)
    from frankeneval.weights.layermap import parse_layers

    axis = [r["layer"] for r in records if r["layer"] is not None]
    n_llm, n_vis = max([0, *axis]), -min([0, *axis])
    return parse_layers(spec, max(n_llm, 1), n_vision_blocks=n_vis, sections=("llm", "vision", "projector"))


def plot_spectra(
    records: list[dict[str, Any]],
    out: str | os.PathLike,
    *,
    layers: str | Sequence[int | str] | None = None,
    submodule: str | None = None,
    normalize: bool = True,
) -> Path:
    """Top-k singular values of ΔIN and ΔRL (σᵢ/σ₁ by default) for the chosen layers, one panel per layer;
    every analysed matrix of the layer (or only ``submodule``) is one line."""
    layers = resolve_spectrum_layers(records, layers)
    if not any("sigma_top" in r["delta_in"] for r in records):
        raise ValueError("these records hold no spectra (run characterize without --energy-only)")
    n = max(1, len(layers))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False, sharey=True)
    for ax, layer in zip(axes[0], layers):
        sel = [r for r in records if r["layer"] == layer and (submodule is None or r["submodule"] == submodule)]
        for r in sel:
            for d, (lab, col) in DELTA_STYLE.items():
                s = r[d].get("sigma_top") or []
                if not s or s[0] <= 0:
                    continue
                ys = [x / s[0] for x in s] if normalize else s
                ax.plot(range(1, len(ys) + 1), ys, color=col, alpha=0.5, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("index i")
        ax.set_title(f"unified layer {layer}" + (f" · {submodule}" if submodule else ""), fontsize=9)
    axes[0][0].set_ylabel("σᵢ / σ₁" if normalize else "σᵢ")
    handles = [plt.Line2D([], [], color=c, label=lab) for lab, c in DELTA_STYLE.values()]
    axes[0][-1].legend(handles=handles, frameon=False, fontsize=8)
    fig.suptitle("Singular value spectra", y=1.02)
    return save_figure(fig, out)


REGION_COLOURS = {"early": "#2ca02c", "middle": "#ff7f0e", "late": "#1f77b4"}  # the reference's colours
DIVERSITY_PLOTS = ("diversity_per_layer.png", "region_spectra.png")


def selection_note(summary: dict[str, Any]) -> str:
    """The run's matrix selection for a figure title (``--weight-filter``, ``--llm-only``, ``--sections``); empty for
    every matrix."""
    st = (summary.get("run") or {}).get("settings") or {}
    parts = ([f"names containing '{st['weight_filter']}'"] if st.get("weight_filter") else []) + (
        ["LLM only"] if st.get("llm_only") else []) + ([f"sections {', '.join(st['sections'])}"]
                                                       if st.get("sections") else [])
    return f" [{'; '.join(parts)}]" if parts else ""


def diversity_of(summary: dict[str, Any], records: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The summary's ``diversity`` block; for a summary.json written before it existed, computed from the records
    (:func:`frankeneval.characterization.aggregate.diversity`, ties within a layer in record order)."""
    if "diversity" in summary:
        return summary["diversity"]
    if records is None:
        return None
    from frankeneval.characterization.aggregate import diversity

    return diversity(records, volume_k=((summary.get("run") or {}).get("settings") or {}).get("volume_k"))


def diversity_per_layer_values(diversity: dict[str, Any]) -> tuple[list[int], dict[str, dict[str, list[float | None]]]]:
    """The diversity plot's points: unified layers and ``{metric: {delta: one mean per layer}}``."""
    from frankeneval.characterization.aggregate import DIVERSITY_METRICS

    rows = sorted(((int(k), v) for k, v in diversity["by_layer"].items()), key=lambda kv: kv[0])
    values = {m: {d: [(g.get(d) or {}).get(m) for _, g in rows] for d in DELTA_STYLE} for m in DIVERSITY_METRICS}
    return [k for k, _ in rows], values


def plot_diversity_per_layer(summary: dict[str, Any], out: str | os.PathLike, *,
                             diversity: dict[str, Any] | None = None) -> Path:
    """Mean spectral norm σ₁ (top) and mean log spectral volume Σ_{i≤k} log(σᵢ + 1e-12) (bottom) of ΔIN and ΔRL per
    unified layer, vision / projector / LLM shaded: the reference's spectral-norm and log-volume comparisons
    (``characterisation_diversity.py``; linear axes, as there). ``diversity``: default the summary's."""
    div = diversity if diversity is not None else summary.get("diversity")
    if not div:
        raise ValueError("this summary holds no diversity view (run characterize without --energy-only)")
    xs, values = diversity_per_layer_values(div)
    k = div.get("volume_k") or 50
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.22 * len(xs) + 3), 5.6), sharex=True)
    labels = {"spectral_norm": "mean spectral norm σ₁",
              "log_spectral_volume": f"mean log volume Σ_{{i≤{k}}} log(σᵢ+1e-12)"}
    for ax, (metric, name) in zip(axes, labels.items()):
        shade_sections(ax, xs)
        for d, (lab, col) in DELTA_STYLE.items():
            ys = values[metric][d]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", ms=3, color=col, label=lab)
        ax.set_ylabel(name, fontsize=8)
    axes[0].set_title(_title(summary, "Update diversity per layer" + selection_note(summary)
                             + (" (seed-compatible)" if is_seed_compatible(summary) else "")), pad=14)
    axes[0].legend(frameon=False)
    axes[-1].set_xlabel("unified layer (vision < 0, projector 0, LLM > 0)")
    return save_figure(fig, out)


def plot_region_spectra(summary: dict[str, Any], out: str | os.PathLike, *,
                        diversity: dict[str, Any] | None = None) -> Path:
    """σᵢ/σ₁ (log scale) of ΔIN (solid) and ΔRL (dashed) of the representative matrix of each LLM third
    (``diversity.region_spectra``: the reference's ``plot_svd_spectrum_comparison``; a spectrum whose σ₁ is 0 is
    not drawn, as there). ``diversity``: default the summary's."""
    div = diversity if diversity is not None else summary.get("diversity")
    spectra = (div or {}).get("region_spectra") or {}
    if not any(spectra.values()):
        raise ValueError("no representative spectra (no LLM matrices with spectra in this run)")
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    drawn = 0
    for region, rep in spectra.items():
        if not rep:
            continue
        for d, style, alpha in (("delta_in", "-", 0.5), ("delta_rl", "--", 1.0)):
            s = rep[d]
            if not s or s[0] <= 0:
                continue
            ax.plot(range(1, len(s) + 1), [x / s[0] for x in s], color=REGION_COLOURS.get(region, "0.4"), ls=style,
                    alpha=alpha, lw=2, label=f"{region} {DELTA_STYLE[d][0]} (layer {rep['layer']}: {rep['name']})")
            drawn += 1
    if drawn:
        ax.set_yscale("log")
        ax.legend(frameon=False, fontsize=7)
    else:
        ax.text(0.5, 0.5, "every representative update is zero", transform=ax.transAxes, ha="center")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("singular value index i")
    ax.set_ylabel("σᵢ / σ₁")
    ax.set_title(_title(summary, "Spectra of the LLM thirds: ΔIN (solid) vs ΔRL (dashed)" + selection_note(summary)),
                 fontsize=10)
    return save_figure(fig, out)


def plot_compare_heatmap(compare_summary: dict[str, Any], out: str | os.PathLike, *, metric: str = "cosine") -> Path:
    """Cross-lineage ΔRL similarity per unified layer: rows = lineage pairs, columns = layers.

    ``metric``: ``cosine`` (of each layer's concatenated ΔRL), ``matrix_cosine``, ``overlap_left`` or
    ``overlap_right`` (means over the layer's matrices)."""
    rows = sorted(((int(k), v) for k, v in compare_summary["aggregates"]["by_layer"].items()), key=lambda kv: kv[0])
    xs = [k for k, _ in rows]
    pairs = sorted({p for _, g in rows for p in g["pairs"]})

    def value(g: dict[str, Any], pair: str) -> float:
        p = g["pairs"].get(pair)
        if p is None:
            return float("nan")
        v = p[metric] if metric == "cosine" else p[metric]["mean"]
        return float("nan") if v is None else v

    data = [[value(g, pair) for _, g in rows] for pair in pairs]
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(xs) + 3), 0.5 * len(pairs) + 2))
    vmin = -1.0 if metric.endswith("cosine") else 0.0
    im = ax.imshow(data, aspect="auto", cmap="RdBu_r" if vmin < 0 else "viridis", vmin=vmin, vmax=1.0,
                   interpolation="nearest")
    ax.set_yticks(range(len(pairs)), [p.replace("|", " vs ") for p in pairs])
    step = max(1, len(xs) // 20)
    ax.set_xticks(range(0, len(xs), step), [str(x) for x in xs[::step]])
    ax.set_xlabel("unified layer")
    fig.colorbar(im, ax=ax, label=metric.replace("_", " "))
    ax.set_title(f"ΔRL similarity across lineages ({metric.replace('_', ' ')})")
    return save_figure(fig, out)


# -- a run directory -----------------------------------------------------------------------------------
def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
             spectrum_layers: str | Sequence[int | str] | None = None) -> list[Path]:
    """Draw every figure the outputs in ``run_dir`` allow; returns the written PNGs (into ``out_dir``,
    default ``run_dir/plots``)."""
    run_dir = Path(run_dir)
    read = [(name, run_dir / name) for name in ("summary.json", MATRICES_FILE, "compare_summary.json")
            if (run_dir / name).is_file()]  # the plots' inputs: the output folder must not be, hold or lie in one
    out = Path(claim_for("plot", out_dir if out_dir is not None else run_dir / "plots", inputs=read,
                         extra=DIVERSITY_PLOTS))
    written: list[Path] = []
    if (run_dir / "summary.json").is_file():
        with _malformed(run_dir / "summary.json", "characterize"):
            summary = load_json(run_dir / "summary.json")
            written.append(plot_energy_per_layer(summary, out / "energy_per_layer.png"))
            has_spectra = any("stable_rank" in (g.get("delta_rl") or {})
                              for g in summary["aggregates"]["by_layer"].values())
            if has_spectra:
                written.append(plot_ranks_per_layer(summary, out / "rank_per_layer.png"))
        if has_spectra:
            records = read_jsonl(run_dir / MATRICES_FILE, check=matrix_record_problem)
            if records:
                written.append(plot_spectra(records, out / "spectra.png", layers=spectrum_layers))
            with _malformed(run_dir / "summary.json", "characterize"):
                div = diversity_of(summary, records)
                if div:
                    written.append(plot_diversity_per_layer(summary, out / DIVERSITY_PLOTS[0], diversity=div))
                    if any((div.get("region_spectra") or {}).values()):
                        written.append(plot_region_spectra(summary, out / DIVERSITY_PLOTS[1], diversity=div))
    if (run_dir / "compare_summary.json").is_file():
        with _malformed(run_dir / "compare_summary.json", "characterize --compare"):
            cmp = load_json(run_dir / "compare_summary.json")
            written.append(plot_compare_heatmap(cmp, out / "compare_cosine.png", metric="cosine"))
            if any(p["overlap_left"]["n"] for g in cmp["aggregates"]["by_layer"].values() for p in g["pairs"].values()):
                written.append(plot_compare_heatmap(cmp, out / "compare_overlap_left.png", metric="overlap_left"))
                written.append(plot_compare_heatmap(cmp, out / "compare_overlap_right.png", metric="overlap_right"))
    return written


@contextmanager
def _malformed(path: Path, command: str):
    """A summary file that is not JSON, or whose fields are missing or of another type than frankeneval writes,
    stops the plot in one line naming the file (a :class:`FrankenevalError`), not with a traceback."""
    try:
        yield
    except FrankenevalError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        what = "is not valid JSON" if isinstance(exc, json.JSONDecodeError) else "is malformed"
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise FrankenevalError(f"{path} {what} ({detail}); rerun `frankeneval {command}` with the same --out "
                               "to rewrite it") from None
