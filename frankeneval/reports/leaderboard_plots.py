"""Plots of the transferability report (matplotlib, Agg): a grouped bar chart of the leaderboard."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from frankeneval.core.results import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from frankeneval.reports.leaderboard.model import Leaderboard


def leaderboard_chart(board: Leaderboard, metric: str | None = None):
    """A figure: one group of bars per column, one bar per model, 95 % bootstrap intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric = metric or (board.metrics[0] if board.metrics else "rule_acc")
    cols, rows = board.columns, board.rows
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 1.6 * len(cols)), 4.2))
    cmap = plt.get_cmap("tab10")
    x = np.arange(len(cols))
    for i, row in enumerate(rows):
        vals, lo, hi = [], [], []
        for c in cols:
            e = board.get(row, c.key, metric)
            v = e.value if e is not None and e.value is not None else np.nan
            vals.append(100 * v)
            if e is not None and e.ci and e.value is not None:
                lo.append(100 * max(e.value - e.ci[0], 0.0))
                hi.append(100 * max(e.ci[1] - e.value, 0.0))
            else:
                lo.append(0.0)
                hi.append(0.0)
        color = "#333333" if row == "in" else "#888888" if row == "rl" else cmap(i % 10)
        ax.bar(x - 0.4 + width * (i + 0.5), vals, width, yerr=[lo, hi], capsize=2, label=board.row_label(row),
               color=color, edgecolor="white", linewidth=0.5)
    ax.set_xticks(x, [c.label for c in cols], rotation=15, ha="right")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Transferability ({metric}); bars: 95% bootstrap intervals")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def leaderboard_chart_png(board: Leaderboard, metric: str | None = None, dpi: int = 110) -> bytes:
    """The chart as PNG bytes (for embedding in the HTML report)."""
    import matplotlib.pyplot as plt

    fig = leaderboard_chart(board, metric)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def save_leaderboard_chart(board: Leaderboard, out: str | os.PathLike, metric: str | None = None) -> Path:
    """Write the chart to ``out`` (PNG, atomic)."""
    return atomic_write_bytes(out, leaderboard_chart_png(board, metric))
