"""Evaluate IN, RL and every Frankenstein variant of a recipe on the task groups, resumably.

Each variant is materialized once (cached); each (model, task) cell runs lmms-eval with the franken_qwen
model in a subprocess and is recorded in RUN_DIR/cells.jsonl when finished. Rerun the same command after a
crash or Ctrl-C: finished cells are skipped, unfinished ones start again. Examples:

    frankeneval transfer --recipe openmmreasoner --out runs/omr --sample-size 100 --sample-seed 123 --gpus 8
    frankeneval transfer --recipe tiny --tasks franken_gsm8k --data /path/to/data --sample-size 5 --max-new-tokens 32
    frankeneval report runs/omr
"""

from __future__ import annotations

import argparse

from frankeneval.transferability.transfer import DEFAULT_TASKS, run_transfer

COMMAND = "transfer"
HELP = "run the transferability cells (IN, RL, variants x tasks) through lmms-eval, resumably"


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="openmmreasoner | revisual_r1 | mmr1 | tiny | a recipe or merge-spec YAML")
    parser.add_argument("--out", required=True, help="run directory (rerun with the same one to resume)")
    parser.add_argument("--variants", default=None, help="comma-separated variant names (default: all of the recipe)")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma-separated lmms-eval tasks or groups (default: {','.join(DEFAULT_TASKS)})")
    parser.add_argument("--in", dest="in_model", default=None, help="local copy of the IN model")
    parser.add_argument("--rl", dest="rl_model", default=None, help="local copy of the RL model")
    parser.add_argument("--sample-size", type=int, default=100, help="items per task, 0 = all (default 100, as the paper)")
    parser.add_argument("--sample-seed", type=int, default=123, help="sub-sampling seed (default 123, as the paper)")
    parser.add_argument("--data", default=None, help="local data folder (FRANKENEVAL_DATA layout); runs offline")
    parser.add_argument("--batch-size", default="1", help="franken_qwen batch_size (int or auto)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="override the tasks' generation length")
    parser.add_argument("--model-args", default=None, help="extra franken_qwen model args, e.g. attn_implementation=sdpa")
    parser.add_argument("--gpus", type=int, default=0, help="run N cells at once, one lmms-eval process per GPU")
    parser.add_argument("--splice-cache", default=None, help="where variants are materialized (default: frankeneval's cache)")
    parser.add_argument("--no-reference", action="store_true", help="skip the IN and RL cells")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read pickle (.bin) weights, which can run code when loaded: only for sources you trust")


def run(args: argparse.Namespace) -> int:
    models = {k: v for k, v in (("in", args.in_model), ("rl", args.rl_model)) if v}
    result = run_transfer(
        args.out,
        args.recipe,
        variants=_csv(args.variants),
        tasks=_csv(args.tasks) or list(DEFAULT_TASKS),
        models=models or None,
        splice_cache=args.splice_cache,
        include_reference=not args.no_reference,
        sample_size=args.sample_size,
        sample_seed=args.sample_seed,
        data_dir=args.data,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        model_args=args.model_args,
        gpus=args.gpus,
        allow_pickle=args.allow_pickle,
    )
    print(f"[transfer] done: {len(result.ran)} cells run, {len(result.skipped)} already finished -> {result.run_dir}")
    print(f"[transfer] leaderboard: frankeneval report {result.run_dir}")
    return 0
