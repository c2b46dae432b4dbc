"""Build the transferability leaderboard of a transfer run: rows IN, RL and each variant; columns perception /
alignment / reasoning (and the black-image controls when run); rule and judge scores with 95 % bootstrap
intervals, differences to IN and RL, the best per column marked.

    frankeneval report runs/omr                       # prints markdown, writes report.{md,csv,html,tex}
    frankeneval report runs/omr --format latex        # prints LaTeX
    frankeneval report runs/omr --plots runs/characterize runs/localize

The HTML page is self-contained (images embedded), including the layer plots found in --plots folders
(default: RUN_DIR/plots and sibling characterize/ and localize/ folders).
"""

from __future__ import annotations

import argparse
import sys

from frankeneval.commands._shared import add_allow_foreign_argument, output_request
from frankeneval.reports.leaderboard.build import build_leaderboard
from frankeneval.reports.leaderboard.report import FORMATS, find_plots, render, write_report
from frankeneval.reports.leaderboard.text import report_notes

COMMAND = "report"
HELP = "leaderboard of a transfer run as markdown, csv, html or latex"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a `frankeneval transfer` run directory")
    parser.add_argument("--format", choices=FORMATS, default="md", help="what to print (default md)")
    parser.add_argument("--out", default=None, help="where report.{md,csv,html,tex} are written (default RUN_DIR)")
    parser.add_argument("--plots", nargs="*", default=None,
                        help="folders (or PNG files) of layer plots to embed in the HTML")
    from frankeneval.commands._shared import MAX_SEED, seed_arg

    parser.add_argument("--seed", type=seed_arg, default=0, help=f"bootstrap seed, 0 to {MAX_SEED} (default 0)")
    parser.add_argument("--no-write", action="store_true", help="only print, write no files")
    add_allow_foreign_argument(parser)


def run(args: argparse.Namespace) -> int:
    if not args.no_write:
        out = output_request(args, args.out or args.run_dir)
        written = write_report(args.run_dir, out_dir=out, plot_dirs=args.plots, seed=args.seed)
    board = build_leaderboard(args.run_dir, seed=args.seed)
    plots = find_plots(args.plots) if args.plots is not None else ()
    if args.format == "html" and not args.no_write:
        print(written["html"].read_text(encoding="utf-8"))
    else:
        print(render(board, args.format, plots=plots))
    if not args.no_write:
        print(f"report written: {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    for note in report_notes(board):
        print(f"frankeneval report: {note}", file=sys.stderr)
    return 0
