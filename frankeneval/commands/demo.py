"""Run the whole analysis on the built-in tiny lineage, with no downloads, in a few minutes on a CPU:
characterize -> splice the six Frankenstein variants -> evaluate IN, RL and the variants through lmms-eval on
local tasks -> localization sweeps -> leaderboard (markdown printed, HTML / CSV / LaTeX written).

    frankeneval demo                       # the trained miniature lineage (trained once, about 11-14 min on 2 cores;
                                             cached), into ./frankeneval-demo
    frankeneval demo --out runs/demo --fast
    frankeneval demo --lineage random      # the random tiny lineage with planted updates (seconds; speed tests)
    frankeneval demo --necessity           # plus the necessity experiment (RL re-run from IN with LLM blocks
                                             frozen: five cached GRPO runs, about 20 min on 2 cores)

Every stage is resumable: rerun the same command after an interruption.
"""

from __future__ import annotations

import argparse

from frankeneval.commands._demo import run_demo

COMMAND = "demo"
HELP = "the whole analysis on the built-in tiny lineage (no downloads, minutes on a CPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="frankeneval-demo", help="output folder (default ./frankeneval-demo)")
    parser.add_argument("--lineage", choices=("trained", "random"), default="trained",
                        help="the trained miniature lineage (default; built once and cached) or the random tiny "
                             "lineage with planted updates (no training: for speed tests)")
    parser.add_argument("--fast", action="store_true", help="fewer items and tokens (CI)")
    parser.add_argument("--data", default=None, help="local data folder (FRANKENEVAL_DATA layout) to evaluate on")
    parser.add_argument("--no-localization", action="store_true", help="skip the localization sweeps")
    parser.add_argument("--necessity", action="store_true",
                        help="also run the necessity experiment (trained lineage: its RL stage re-run from IN with "
                             "none / early / middle / late / middle+late LLM layers frozen; cached; about 20 min on "
                             "2 cores the first time) and put its table and plot into the report")


def run(args: argparse.Namespace) -> int:
    from frankeneval.commands._shared import claim_out

    # a folder frankeneval owns (docs/safety.md); necessity/ is claimed again by that stage
    out = claim_out(args, "demo", ("data", args.data), extra=("necessity",) if args.necessity else ())
    result = run_demo(out, lineage=args.lineage, fast=args.fast, data=args.data,
                      localization=not args.no_localization, necessity=args.necessity)
    print()
    print(result.markdown)
    print(f"HTML report: {result.report['html']}")
    print("stage time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))
    if result.failed_stages:
        for stage, err in result.failed_stages.items():
            print(f"stage {stage} failed: {err}")
        return 1
    return 0
