"""Render the built-in vision probes (paired target/source images) into a folder in the vision_probes format.

    frankeneval make-probes OUT --n 100 --seed 0
    FRANKENEVAL_DATA=OUT  (or point the localization sweep at OUT)

The pairs are the miniature world's scenes (frankeneval.miniature.world.write_vision_probes, frankeneval's one
probe renderer): 84 x 84 images on a 3 x 3 grid, scaled to --size px by nearest neighbour when asked. Each task
folder gets data.jsonl (id, task, target_image, source_image, prompt, meta), images/ and generator.json; the two
images of a pair have the same size. The output depends only on (task, n, seed, size).
"""

from __future__ import annotations

import argparse

from frankeneval.commands._shared import add_allow_foreign_argument, output_request
from frankeneval.evaluation.probes import PROBE_TASKS

COMMAND = "make-probes"
HELP = "render the built-in counting / OCR / grounding / recognition probe pairs (miniature-world scenes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (gets <task>/data.jsonl, <task>/images/ and <task>/generator.json)")
    parser.add_argument("--tasks", default=",".join(PROBE_TASKS), help="comma-separated probe tasks (default: all)")
    from frankeneval.commands._shared import MAX_SEED, int_arg, positive_int, seed_arg

    parser.add_argument("--n", type=positive_int, default=100, help="pairs per task, >= 1 (default 100)")
    parser.add_argument("--seed", type=seed_arg, default=0, help=f"generator seed, 0 to {MAX_SEED} (default 0)")
    parser.add_argument("--size", type=int_arg(28), default=None,
                        help="scale every image to SIZE x SIZE px by nearest neighbour, >= 28 (default: the world's "
                             "84 px, which the miniature lineage was trained on; e.g. 336 for a 7B model)")
    add_allow_foreign_argument(parser)


def run(args: argparse.Namespace) -> int:
    from frankeneval.miniature.world import write_vision_probes

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    out = output_request(args, args.out)  # never over a probe dataset frankeneval did not render (docs/safety.md)
    root = write_vision_probes(out, n_per_task=args.n, seed=args.seed, tasks=tasks, command=COMMAND,
                               size=args.size)
    for task in tasks:
        print(f"{task}: {root / task / 'data.jsonl'}")
    return 0
