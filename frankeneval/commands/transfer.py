"""Evaluate Base, IN, RL and every Frankenstein variant of a recipe on the task groups, resumably.

``--splits v1`` (default: perception = MathVista general-vqa, alignment = math-targeted-vqa, reasoning = MATH-500),
``v2`` (perception by chart / table / natural-image context, vision+reasoning = geometry, reasoning = MATH-500 level
>= 4) or ``both`` choose the task groups, each with its controls; ``frankeneval report`` then gives the paper's
M_vis / M_v2r / M_rea table and the paired transitions.

Each variant is materialized once (cached); each (model, task) cell runs lmms-eval with the franken_qwen
model in a subprocess and is recorded in RUN_DIR/cells.jsonl when finished. Rerun the same command after a
crash or Ctrl-C: finished cells are skipped, unfinished ones start again. Before the first cell starts, every row
and image the tasks select is read (local data): a broken file stops the run in one line; --skip-broken leaves such
items out of the cells and lists them in transfer.json ("skipped_inputs") and in the report. Examples:

    frankeneval transfer --recipe openmmreasoner --out runs/omr --sample-size 100 --sample-seed 123 --gpus 8
    frankeneval transfer --recipe openmmreasoner --out runs/omr --splits both --gpus 8
    frankeneval transfer --recipe openmmreasoner --out runs/omr --gpus 2 --evict-variants   # a 128 GB disk
    frankeneval transfer --recipe tiny --tasks franken_gsm8k --data /path/to/data --sample-size 5 --max-new-tokens 32
    frankeneval report runs/omr
"""

from __future__ import annotations

import argparse

from frankeneval.commands._shared import add_seed_compatible_argument, add_skip_broken_argument
from frankeneval.evaluation.prompts import SETTING_HELP
from frankeneval.transferability.manifest import DEFAULT_SPLITS, SPLITS, split_tasks
from frankeneval.transferability.transfer import run_transfer

COMMAND = "transfer"
HELP = "run the transferability cells (Base, IN, RL, variants x tasks) through lmms-eval, resumably"


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True,
                        help="openmmreasoner | revisual_r1 | mmr1 | tiny | a recipe or merge-spec YAML")
    parser.add_argument("--out", required=True, help="run directory (rerun with the same one to resume)")
    parser.add_argument("--variants", default=None, help="comma-separated variant names (default: all of the recipe)")
    parser.add_argument("--splits", choices=("v1", "v2", "both"), default=DEFAULT_SPLITS,
                        help=f"the paper's splits to run (default {DEFAULT_SPLITS}): v1 = {','.join(SPLITS['v1'])}; "
                             f"v2 = {','.join(SPLITS['v2'])}; both = all six groups")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated lmms-eval tasks or groups to run instead of --splits")
    parser.add_argument("--base", dest="base_model", default=None, help="local copy of the Base model")
    parser.add_argument("--in", dest="in_model", default=None, help="local copy of the IN model")
    parser.add_argument("--rl", dest="rl_model", default=None, help="local copy of the RL model")
    from frankeneval.commands._shared import MAX_SEED, batch_size_arg, int_arg, positive_int, seed_arg

    parser.add_argument("--sample-size", type=int_arg(0, note="0 = all"), default=100,
                        help="items per task, >= 0: 0 = all, more than a task has = all of it (default 100, as the "
                             "paper)")
    parser.add_argument("--sample-seed", type=seed_arg, default=123,
                        help=f"sub-sampling seed, 0 to {MAX_SEED} (default 123, as the paper)")
    parser.add_argument("--data", default=None, help="local data folder (FRANKENEVAL_DATA layout); runs offline")
    parser.add_argument("--batch-size", type=batch_size_arg, default=1,
                        help="franken_qwen batch_size: an integer >= 1 or auto (default 1)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="new-token budget of every cell (default: the tasks' own, 8192 on MathVista / "
                             "MATH-500 / GSM8K as the reference's runs; answers that reach it are counted as "
                             "hit_limit)")
    parser.add_argument("--model-args", default=None,
                        help="extra franken_qwen model args, e.g. attn_implementation=sdpa")
    parser.add_argument("--system-prompt", default="auto", metavar="auto|reasoner|revisual|none|TEXT|@FILE",
                        help=SETTING_HELP + "; each cell's choice and reason go into cells.jsonl and the report")
    parser.add_argument("--grading", choices=("paper", "seed"), default=None,
                        help="with the judge on (--judge): paper = rules first, the judge for the rest, "
                             "a judge failure counted apart (default); seed = the reference's grading: its extraction, "
                             "judge texts and rule check; the judge decides every item and a failed call is wrong "
                             "(default with --seed-compatible)")
    judge = parser.add_mutually_exclusive_group()
    judge.add_argument("--judge", dest="judge", action="store_true", default=None,
                       help="turn the LLM judge on in every cell (default: FRANKENEVAL_JUDGE; the server and model "
                            "from OPENAI_BASE_URL, OPENAI_API_KEY, FRANKENEVAL_JUDGE_MODEL)")
    judge.add_argument("--no-judge", dest="judge", action="store_false", help="turn the LLM judge off in every cell")
    parser.add_argument("--description-source", choices=("auto", "judge", "caption_bard"), default=None,
                        help="who writes the black + description texts: judge = the judge model with the "
                             "reference's texts; caption_bard = the released Bard captions (a named alternative "
                             "for machines without a judge); auto = judge when the judge is on, else caption_bard "
                             "(default: FRANKENEVAL_DESCRIPTION_SOURCE, else auto). An item without a description "
                             "is left out of that setting and listed in the report")
    add_seed_compatible_argument(parser)
    add_skip_broken_argument(parser)
    parser.add_argument("--gpus", type=int_arg(0, note="0 = one cell at a time on the visible devices"), default=0,
                        help="run N models' cells at once, one lmms-eval process per GPU, >= 0 (default 0)")
    parser.add_argument("--process-per-cell", action="store_true",
                        help="one lmms-eval process per (model, task) cell; by default one process runs all of a "
                             "model's pending cells (the model loaded once) and its output is cut into the cells")
    parser.add_argument("--splice-cache", default=None,
                        help="where variants are materialized (default: frankeneval's cache)")
    parser.add_argument("--evict-variants", action="store_true",
                        help="materialize the variants max(1, --gpus) at a time and delete each one this run "
                             "materialized once its cells ran (disk: Base/IN/RL plus that many variants); splices "
                             "already in the cache are kept")
    parser.add_argument("--no-reference", action="store_true", help="skip the Base, IN and RL cells")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read pickle (.bin) weights, which can run code when loaded: only for sources you trust")


def run(args: argparse.Namespace) -> int:
    models = {k: v for k, v in (("base", args.base_model), ("in", args.in_model), ("rl", args.rl_model)) if v}
    result = run_transfer(
        args.out,
        args.recipe,
        variants=_csv(args.variants),
        tasks=_csv(args.tasks) or split_tasks(args.splits),
        models=models or None,
        splice_cache=args.splice_cache,
        include_reference=not args.no_reference,
        sample_size=args.sample_size,
        sample_seed=args.sample_seed,
        data_dir=args.data,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        model_args=args.model_args,
        system_prompt=args.system_prompt,
        gpus=args.gpus,
        grading=args.grading,
        seed_compatible=args.seed_compatible,
        skip_broken=args.skip_broken,
        judge=args.judge,
        description_source=args.description_source,
        allow_pickle=args.allow_pickle,
        evict_variants=args.evict_variants,
        joint=False if args.process_per_cell else None,
    )
    print(f"[transfer] done: {len(result.ran)} cells run, {len(result.skipped)} already finished -> {result.run_dir}")
    print(f"[transfer] leaderboard: frankeneval report {result.run_dir}")
    return 0
