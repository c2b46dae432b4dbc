"""Draw the figures of a frankeneval run directory. Detects which outputs exist and plots them:

* characterize (summary.json, matrices.jsonl): update energy per unified layer (ΔIN vs ΔRL, vision /
  projector / LLM shaded), stable and effective rank per layer, singular value spectra of chosen layers, the
  reference's diversity plots (spectral norm and log spectral volume per layer; the representative spectra of the
  early / middle / late LLM thirds);
* characterize --compare (compare_summary.json): cross-lineage ΔRL similarity heatmaps.

    frankeneval plot runs/char                 # PNGs into runs/char/plots
    frankeneval plot runs/char --out figs --layers -32 0 1 14 28      # the layer grammar, whole unified axis
"""

from __future__ import annotations

import argparse

from frankeneval.commands._shared import add_allow_foreign_argument, output_request
from frankeneval.errors import FrankenevalError

COMMAND = "plot"
HELP = "draw the figures of a run directory (characterize, compare, ...)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a frankeneval output directory")
    parser.add_argument("--out", help="where to write PNGs (default RUN_DIR/plots)")
    parser.add_argument("--layers", nargs="+",
                        help="unified layers for the spectra figure, e.g. -32 0 1 14 28 or vision,late (README "
                             "'Layer grammar'; a spec starting with a minus range: --layers=-32..-1)")
    add_allow_foreign_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from frankeneval.reports.characterization_plots import plot_run

    if not Path(args.run_dir).is_dir():
        raise FrankenevalError(f"{args.run_dir} is not a directory")
    out = output_request(args, args.out or Path(args.run_dir) / "plots")
    written = plot_run(args.run_dir, out, spectrum_layers=args.layers)
    if not written:
        raise FrankenevalError(f"{args.run_dir} holds no outputs frankeneval knows how to plot")
    for p in written:
        print(p)
    return 0
