"""Render the built-in vision probes (paired target/source images) into a folder in the vision_probes format.

    frankeneval make-probes OUT --n 100 --seed 0
    FRANKENEVAL_DATA=OUT  (or point the localization sweep at OUT)

Each task folder gets data.jsonl (id, task, target_image, source_image, prompt, meta) and images/; the two images
of a pair have the same size. The output depends only on (task, n, seed, size).
"""

from __future__ import annotations

import argparse

from frankeneval.commands._shared import add_allow_foreign_argument, output_request
from frankeneval.evaluation.probes import PROBE_TASKS, write_probe_pairs

COMMAND = "make-probes"
HELP = "render the built-in counting / OCR / grounding / recognition probe pairs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (gets <task>/data.jsonl and <task>/images/)")
    parser.add_argument("--tasks", default=",".join(PROBE_TASKS), help="comma-separated probe tasks (default: all)")
    from frankeneval.commands._shared import MAX_SEED, int_arg, positive_int, seed_arg

    parser.add_argument("--n", type=positive_int, default=100, help="pairs per task, >= 1 (default 100)")
    parser.add_argument("--seed", type=seed_arg, default=0, help=f"generator seed, 0 to {MAX_SEED} (default 0)")
    parser.add_argument("--size", type=int_arg(64, note="smaller canvases cannot hold the scenes"), default=384,
                        help="canvas side in pixels, >= 64 (default 384)")
    add_allow_foreign_argument(parser)


def run(args: argparse.Namespace) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    out = output_request(args, args.out)  # never over a probe dataset frankeneval did not render (docs/safety.md)
    for task, folder in write_probe_pairs(out, tasks=tasks, n=args.n, seed=args.seed, size=args.size).items():
        print(f"{task}: {folder / 'data.jsonl'}")
    return 0
