"""The report's front door: render a board in one format, or write every format of a run."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from frankeneval.core.outdir import LAYOUTS, claim_output_dir
from frankeneval.core.results import atomic_write_text
from frankeneval.errors import FrankenevalError
from frankeneval.reports.leaderboard.build import build_leaderboard
from frankeneval.reports.leaderboard.model import Leaderboard
from frankeneval.reports.leaderboard.render_csv import to_csv
from frankeneval.reports.leaderboard.render_html import to_html
from frankeneval.reports.leaderboard.render_md import to_markdown
from frankeneval.reports.leaderboard.render_tex import to_latex

FORMATS: tuple[str, ...] = ("md", "csv", "html", "latex")


def render(board: Leaderboard, fmt: str, *, plots: Sequence[Path] = (), chart: bool = True) -> str:
    """The leaderboard as ``md``, ``csv``, ``html`` or ``latex`` text."""
    if fmt == "md":
        return to_markdown(board)
    if fmt == "csv":
        return to_csv(board)
    if fmt == "latex":
        return to_latex(board)
    if fmt == "html":
        png = None
        if chart:
            from frankeneval.reports.leaderboard_plots import leaderboard_chart_png

            png = leaderboard_chart_png(board)
        return to_html(board, plots, png)
    raise FrankenevalError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")


def find_plots(dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """PNG files under ``dirs`` (recursively; sorted, each once)."""
    seen: dict[Path, None] = {}
    for d in dirs:
        p = Path(d).expanduser()
        files = [p] if p.is_file() and p.suffix.lower() == ".png" else sorted(p.rglob("*.png")) if p.is_dir() else []
        for f in files:
            seen.setdefault(f.resolve(), None)
    return list(seen)


def default_plot_dirs(run_dir: Path) -> list[Path]:
    """Plot folders looked at by default: ``<run>/plots`` and sibling characterization / localization runs."""
    cands = [run_dir / "plots"]
    parent = run_dir.parent
    for name in ("characterize", "characterization", "localize", "localization", "localize_reasoning",
                 "localize_vision"):
        cands.append(parent / name)
    return [c for c in cands if c.exists()]


def write_report(
    run_dir: str | os.PathLike,
    formats: Sequence[str] = FORMATS,
    *,
    out_dir: str | os.PathLike | None = None,
    plot_dirs: Sequence[str | os.PathLike] | None = None,
    seed: int = 0,
    sections: Sequence[tuple[str, str]] = (),
) -> dict[str, Path]:
    """Write ``report.<ext>`` for each format into ``out_dir`` (default: the run dir); returns the paths.

    ``sections``: more results (``(markdown, html)`` pairs, e.g. the necessity table of ``demo --necessity``),
    appended to the markdown and HTML reports after the leaderboard."""
    board = build_leaderboard(run_dir, seed=seed)
    ext = {"md": "md", "csv": "csv", "html": "html", "latex": "tex"}
    # an output folder frankeneval owns (the transfer run folder by default); a report.* it did not write is refused
    out = Path(claim_output_dir(out_dir or board.run_dir, command="report", adopt=LAYOUTS["report"].adopt,
                                files=[f"report.{ext[fmt]}" for fmt in formats]))
    plots = find_plots(default_plot_dirs(board.run_dir) if plot_dirs is None else plot_dirs)
    written = {}
    for fmt in formats:
        text = render(board, fmt, plots=plots)
        if fmt == "md" and sections:
            text = text.rstrip("\n") + "\n\n" + "\n\n".join(md.strip("\n") for md, _ in sections) + "\n"
        elif fmt == "html" and sections:
            head, sep, tail = text.rpartition("</body>")
            text = head + "\n".join(h for _, h in sections) + "\n" + sep + tail if sep else text
        path = out / f"report.{ext[fmt]}"
        atomic_write_text(path, text)
        written[fmt] = path
    return written
