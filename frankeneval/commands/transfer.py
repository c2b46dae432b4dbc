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
    frankeneval transfer --recipe openmmreasoner --out runs/omr-8-20 --cuts 8 20 --reuse-from runs/omr
    frankeneval transfer --regrade judge --from runs/omr --out runs/omr-judge   # re-score, no generation
    frankeneval transfer --recipe openmmreasoner --out runs/omr --api-model gpt4o=openai:model_version=gpt-4o
    frankeneval report runs/omr

--cuts C1 C2 sets the variants' block cuts (early 1-C1, middle C1+1-C2, late C2+1-n; recorded in transfer.json); a
rerun of a folder with other cuts runs again the variants whose splice changed (cells are stamped with the splice's
build hash). --reuse-from RUN takes RUN's finished cells of the same model content (fingerprints, not names), task and
settings, hard-linked and recorded as reused with their origin; a cell whose model content, prompt or settings differ
is run here, saying why. --regrade rules|judge|seed --from RUN scores RUN's stored responses again into --out (a new
folder) without generating: rules = the judge off, judge = rules first then the judge (--grading paper --judge),
seed = the reference's grading (--grading seed --judge). API rows (--api-model) are regraded alike from their stored
responses: no key, no server, no API call (only the judge, when on, is asked). `frankeneval report` marks the cells a
run did not run itself: † taken by --reuse-from, ‡ re-scored by --regrade, each with a footnote naming the source
run (and the grading), as the run recorded it (cells.jsonl and each cell's frankeneval_cell.json).
--item-time-limit S cuts off an item still generating after S seconds (its batch's time; exact with --batch-size 1):
counted as timed_out in the report, apart from wrong.
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
    parser.add_argument("--recipe", default=None,
                        help="openmmreasoner | revisual_r1 | mmr1 | tiny | a recipe or merge-spec YAML (required, "
                             "except with --regrade)")
    parser.add_argument("--out", required=True, help="run directory (rerun with the same one to resume)")
    parser.add_argument("--variants", default=None, help="comma-separated variant names (default: all of the recipe)")
    from frankeneval.commands._shared import positive_int as _positive

    parser.add_argument("--cuts", nargs=2, type=_positive, metavar=("C1", "C2"), default=None,
                        help="the variants' block cuts on the unified axis: early 1-C1, middle C1+1-C2, late C2+1-n "
                             "(default: the recipe's, else n//3 and 2n//3); recorded in transfer.json")
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
    parser.add_argument("--item-time-limit", type=_seconds, default=None, metavar="SECONDS",
                        help="cut off an item still generating after SECONDS (its batch's time: exact with "
                             "--batch-size 1); it is counted as timed_out, apart from wrong (franken_qwen, backend hf)")
    parser.add_argument("--reuse-from", default=None, metavar="RUN",
                        help="take the finished cells of another transfer run whose model content (fingerprint, "
                             "not label), task and settings are identical, hard-linked and recorded as reused (the "
                             "report marks them † with a footnote naming RUN); the others run here, a refused one "
                             "saying why")
    parser.add_argument("--regrade", choices=("rules", "judge", "seed"), default=None,
                        help="score the stored responses of the run --from RUN again into --out (a new folder), "
                             "without generating: rules = the judge off; judge = rules first, then the judge; seed = "
                             "the reference's grading (the judge decides every item). --grading / --judge / "
                             "--no-judge override. API rows too: their stored responses, no key, no server, no API "
                             "call. The report marks every regraded cell ‡ with a footnote naming RUN and the "
                             "grading")
    parser.add_argument("--from", dest="regrade_from", default=None, metavar="RUN",
                        help="the finished transfer run --regrade re-scores")
    parser.add_argument("--gpus", type=int_arg(0, note="0 = one cell at a time on the visible devices"), default=0,
                        help="run N models' cells at once, one lmms-eval process per GPU, >= 0 (default 0)")
    processes = parser.add_mutually_exclusive_group()
    processes.add_argument("--process-per-cell", action="store_true",
                           help="one lmms-eval process per (model, task) cell; by default one process runs all of a "
                                "model's pending cells (the model loaded once) and its output is cut into the cells")
    processes.add_argument("--process-per-gpu", action="store_true",
                           help="one lmms-eval process per GPU runs its models one after another (lmms-eval's "
                                "--config list): the process start and the lmms-eval import paid once per GPU, not "
                                "once per model; a model whose output is missing runs again in its own process")
    parser.add_argument("--splice-cache", default=None,
                        help="where variants are materialized (default: frankeneval's cache)")
    parser.add_argument("--evict-variants", action="store_true",
                        help="materialize the variants max(1, --gpus) at a time and delete each one this run "
                             "materialized once its cells ran (disk: Base/IN/RL plus that many variants); splices "
                             "already in the cache are kept")
    parser.add_argument("--no-reference", action="store_true", help="skip the Base, IN and RL cells")
    parser.add_argument("--api-model", dest="api_models", action="append", default=None,
                        metavar="LABEL=LMMS_MODEL:MODEL_ARGS",
                        help="add an API model as a row, run through lmms-eval's own class on the same items, e.g. "
                             "gpt4o=openai:model_version=gpt-4o or sonnet=claude:model_version=claude-sonnet-4-20250514"
                             " (classes: openai, gpt4v, claude; key from OPENAI_API_KEY / ANTHROPIC_API_KEY, never "
                             "recorded); repeatable. Refused in one line without its key or a reachable server")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read pickle (.bin) weights, which can run code when loaded: only for sources you trust")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _regrade(args: argparse.Namespace) -> int:
    from frankeneval.errors import FrankenevalError
    from frankeneval.transferability.reuse import regrade_run

    if not args.regrade_from:
        raise FrankenevalError("--regrade needs --from RUN (the finished transfer run whose responses it re-scores)")
    given = [f for f, v in (("--recipe", args.recipe), ("--variants", args.variants), ("--tasks", args.tasks),
                            ("--cuts", args.cuts), ("--reuse-from", args.reuse_from),
                            ("--item-time-limit", args.item_time_limit), ("--api-model", args.api_models)) if v]
    if given:
        raise FrankenevalError(f"--regrade re-scores the stored cells of --from as they are; drop {', '.join(given)}")
    result = regrade_run(args.regrade_from, args.out, args.regrade, judge=args.judge, grading_mode=args.grading,
                         data_dir=args.data, gpus=args.gpus, joint=_joint_mode(args))
    print(f"[transfer] regraded ({args.regrade}): {len(result.ran)} cells scored again, {len(result.skipped)} already "
          f"done -> {result.run_dir}")
    print(f"[transfer] leaderboard: frankeneval report {result.run_dir}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.regrade:
        return _regrade(args)
    if args.regrade_from:
        from frankeneval.errors import FrankenevalError

        raise FrankenevalError("--from names the run --regrade re-scores; give --regrade rules|judge|seed")
    if not args.recipe:
        from frankeneval.errors import FrankenevalError

        raise FrankenevalError("transfer needs --recipe (or --regrade GRADING --from RUN)")
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
        joint=_joint_mode(args),
        cuts=args.cuts,
        item_time_limit=args.item_time_limit,
        reuse_from=args.reuse_from,
        api_models=args.api_models,
    )
    reused = f", {len(result.reused)} reused from {args.reuse_from}" if result.reused else ""
    print(f"[transfer] done: {len(result.ran)} cells run, {len(result.skipped)} already finished{reused} -> "
          f"{result.run_dir}")
    print(f"[transfer] leaderboard: frankeneval report {result.run_dir}")
    return 0


def _joint_mode(args: argparse.Namespace) -> bool | str | None:
    """``joint`` of :func:`frankeneval.transferability.transfer.run_cells`: False one process per cell, ``"gpu"``
    one per GPU, None one per model (the default)."""
    return False if args.process_per_cell else "gpu" if args.process_per_gpu else None
