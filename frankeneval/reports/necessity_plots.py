"""The necessity experiment's figure (matplotlib, Agg), from ``necessity.json``.

Left: the RL gain over IN per axis for each freeze setting (bars) with its paired 95 % bootstrap interval; right: the
difference against unfrozen RL (setting − none) with its interval. The frozen layers are named in the legend.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from frankeneval.reports.characterization_plots import save_figure

__all__ = ["plot_necessity"]


def _label(row: dict) -> str:
    layers = row["mask"]["layers"]
    if not layers:
        return row["name"]
    span = f"L{layers[0]}" if len(layers) == 1 else f"L{min(layers)}-{max(layers)}"
    return f"{row['name']} ({span})"


def _colours(rows: list[dict]) -> dict[str, object]:
    """One colour per setting (grey for unfrozen RL), the same in both panels."""
    cmap = plt.get_cmap("viridis")
    frozen = [r["name"] for r in rows if r["name"] != "none"]
    out: dict[str, object] = {"none": "#7f7f7f"}
    for i, name in enumerate(frozen):
        out[name] = cmap(0.1 + 0.75 * i / max(1, len(frozen) - 1))
    return out


def _bars(ax, data: dict, key: str, rows: list[dict], colours: dict, title: str) -> None:
    axes = data["axes"]
    labels = data.get("axis_labels", {})
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        vals = [row[key][a]["diff"] for a in axes]
        err = [[v - row[key][a]["lo"] for a, v in zip(axes, vals)], [row[key][a]["hi"] - v for a, v in zip(axes, vals)]]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(axes))]
        ax.bar(xs, vals, width * 0.95, yerr=err, capsize=2, color=colours[row["name"]], label=_label(row),
               error_kw={"lw": 0.8})
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(axes)), [labels.get(a, a) for a in axes], fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")


def plot_necessity(data: dict, out: str | os.PathLike) -> Path:
    rows = data["settings"]
    against = [r for r in rows if "vs_unfrozen" in r]
    colours = _colours(rows)
    n_panels = 2 if against else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(6.5 * n_panels, 3.6), squeeze=False)
    _bars(axes[0][0], data, "gain_over_in", rows, colours, "RL gain over IN (setting − IN, 95% paired CI)")
    if against:
        _bars(axes[0][1], data, "vs_unfrozen", against, colours, "frozen RL − unfrozen RL (95% paired CI)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(rows), fontsize=7, title="frozen LLM layers (unified)",
               title_fontsize=7, bbox_to_anchor=(0.5, -0.08))
    rl = data["recipe"]["rl"]
    fig.suptitle(f"Necessity on the miniature world: GRPO from IN with LLM blocks frozen ({rl['steps']} steps, "
                 f"seed {data['seed']}, {data['n_layers']} LLM layers)", fontsize=9)
    return save_figure(fig, out)
