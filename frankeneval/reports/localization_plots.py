"""Figures of the localization analyses (matplotlib, Agg), from their JSON results.

* :func:`plot_vision_localization` -- change rate (method's rule), task-aware change rate and source-follow rate
  per swapped-from layer, one panel per probe task; the peak layer (where the method's change rate rises most,
  dotted) and its bootstrap interval (shaded);
* :func:`plot_reasoning_localization` -- accuracy with each LLM layer ablated, against the unablated accuracy (one
  panel per dataset for ``--dataset all``);
* :func:`plot_attention_shift` -- visual attention share per layer for Base / IN / RL, and RL - IN, IN - Base.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from frankeneval.reports.characterization_plots import save_figure

__all__ = ["plot_attention_shift", "plot_reasoning_localization", "plot_vision_localization"]

MEMBER_COLOURS = {"base": "#7f7f7f", "in": "#1f77b4", "rl": "#d62728"}


def _nan(x):
    return float("nan") if x is None else x


def plot_vision_localization(results: dict, out: str | os.PathLike) -> Path:
    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        rows = results["tasks"][task]["layers"]
        xs = [r["layer"] for r in rows]
        for key, label, style in (("change_rate", "changed (method)", "-o"),
                                  ("task_change_rate", "changed (task-aware)", "--s"),
                                  ("source_follow_rate", "follows source", "-^")):
            ax.plot(xs, [_nan(r[key]) for r in rows], style, ms=3, label=label)
        peak = (results["tasks"][task].get("peak") or {}).get("change_rate") or {}
        if peak.get("layer") is not None:  # where the method's change rate rises most, and its bootstrap interval
            ax.axvline(peak["layer"], color="k", ls=":", lw=1, label=f"peak L{peak['layer']} ({peak['rise']:+.2f})")
            if peak.get("layer_ci"):
                lo, hi = peak["layer_ci"]
                ax.axvspan(lo - 0.4, hi + 0.4, color="k", alpha=0.08, lw=0,
                           label=f"peak {round(100 * peak['level'])}% CI")
        n_skipped = sum(str(x.get("id", "")).startswith(f"{task}/") for x in results.get("skipped") or [])
        ax.set_title(f"{task} (n={results['tasks'][task]['n_pairs']}"
                     + (f", {n_skipped} skipped)" if n_skipped else ")"))
        ax.set_xlabel("swap from LLM layer (unified)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("rate")
    for ax in axes[0]:
        ax.legend(fontsize=6, loc="best")
    mode = " (seed-compatible: reference decode-step re-append)" if results.get("seed_compatible") else ""
    fig.suptitle(f"Visual-token KV swap: {results.get('model', '')}{mode}", fontsize=9)
    return save_figure(fig, out)


def plot_reasoning_localization(results: dict, out: str | os.PathLike) -> Path:
    """One panel (one dataset), or one panel per dataset side by side (``--dataset all``: ``by_dataset``)."""
    blocks = results.get("by_dataset") or {results["dataset"]: results}
    width = max(5, 0.25 * max(len(b["layers"]) for b in blocks.values()) + 2)
    fig, axes = plt.subplots(1, len(blocks), figsize=(width * len(blocks), 3.2), squeeze=False, sharey=True)
    for ax, (dataset, block) in zip(axes[0], blocks.items()):
        rows = block["layers"]
        ax.bar([r["layer"] for r in rows], [_nan(r["accuracy"]) for r in rows], color="#1f77b4",
               label="layer ablated")
        if block.get("unablated_accuracy") is not None:
            ax.axhline(block["unablated_accuracy"], color="k", ls="--", lw=1, label="unablated")
        ax.set_xlabel("ablated LLM layer (unified)")
        ax.set_ylim(0, 1)
        ax.set_title(f"Layer ablation on {dataset} (n={block['n_questions']})"
                     + ("" if len(blocks) > 1 else f": {results.get('model', '')}"), fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("accuracy")
    if len(blocks) > 1:
        fig.suptitle(f"Layer ablation: {results.get('model', '')}", fontsize=9)
    return save_figure(fig, out)


def plot_attention_shift(results: dict, out: str | os.PathLike) -> Path:
    layers = results["layers"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.2))
    for m, vals in results["visual_share"].items():
        a1.plot(layers, vals, "-o", ms=3, color=MEMBER_COLOURS.get(m), label=m.upper() if m != "base" else "Base")
    a1.set_xlabel("LLM layer (unified)")
    a1.set_ylabel("attention share on visual tokens")
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    for key, label, colour in (("rl_minus_in", "RL - IN", "#d62728"), ("in_minus_base", "IN - Base", "#1f77b4")):
        if results.get(key):
            a2.plot(layers, results[key], "-o", ms=3, color=colour, label=label)
    a2.axhline(0, color="k", lw=0.8)
    n = len(layers)
    for cut in (n // 3, 2 * (n // 3)):
        a2.axvline(cut + 0.5, color="grey", ls=":", lw=0.8)
    a2.set_xlabel("LLM layer (unified); dotted: early | middle | late")
    a2.set_ylabel("difference in share")
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3)
    fig.suptitle(f"Attention to visual tokens ({results['n_prompts']} prompts)", fontsize=9)
    return save_figure(fig, out)
