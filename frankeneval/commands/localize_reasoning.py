"""Reasoning localization: accuracy on GSM8K or MATH-500 with each LLM layer ablated (the layer returns its
input), against the unablated accuracy; answers checked with math-verify.

    frankeneval localize-reasoning --model M --dataset gsm8k --out runs/ablate           # hub dataset, 100 questions
    frankeneval localize-reasoning --model M --dataset math500 --data ../shared/data/math500/test.jsonl \\
        --samples 50 --layers 1-28 --max-new-tokens 1024 --out runs/ablate-math

Prompt: the method's step-by-step / \\boxed{} instruction, a blank line, the problem; the system prompt of
--system-prompt (default auto: docs/method.md's rule on the hub id or the directory's own name, a splice its sources';
reasoner / revisual / none / a text / @FILE fix it; --reasoning-prompt on|off is the old spelling of reasoner|none),
recorded in the JSON with the reason it was chosen. --seed-compatible scores the responses as the paper's reference
script (first <answer> tag, "answer is" / "therefore" fallbacks, last 50 characters, 1 % relative error). Both modes
default to the reference's 2048 new tokens. --layers takes the layer grammar (README "Layer grammar"): unified LLM
layers 1 ... n, decoder layer j = L - 1. Writes OUT/units.jsonl (resumable), OUT/reasoning_localization.json (schema:
frankeneval.localization.reasoning) and OUT/reasoning_localization.png. Every selected row is parsed before the
model is loaded: a malformed one (bad JSON, a missing field) stops the run in one line naming its file:line, or with
--skip-broken is left out (not replaced), listed under "skipped" in the JSON and below the table.

--dataset all runs GSM8K then MATH-500 in one run into one OUT: one units.jsonl (a rerun resumes either dataset),
one reasoning_localization.json (by_dataset: each dataset's results, as a run of it alone gives), one table with
both datasets side by side, one plot. --samples / --seed select each dataset's questions as a one-dataset run does;
--data is then the data folder holding gsm8k/test.jsonl and math500/test.jsonl (a single file is refused).

    frankeneval localize-reasoning --model M --dataset all --data ../shared/data --out runs/ablate-both
"""

from __future__ import annotations

import argparse
from pathlib import Path

from frankeneval.commands._shared import (
    add_allow_foreign_argument,
    add_generator_arguments,
    add_seed_compatible_argument,
    add_skip_broken_argument,
    add_system_prompt_arguments,
    claim_out,
    load_generator,
    system_prompt_setting,
    units_per_call,
)

COMMAND = "localize-reasoning"
HELP = "layer-ablation sweep: GSM8K / MATH-500 (or both: all) accuracy with each LLM layer ablated"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from frankeneval.commands._shared import MAX_SEED, int_arg, seed_arg
    from frankeneval.evaluation.data import DEFAULT_SAMPLE_SEED, DEFAULT_SAMPLE_SIZE

    parser.add_argument("--model", required=True, help="model (local dir or hub id)")
    parser.add_argument("--dataset", required=True, choices=("gsm8k", "math500", "all"),
                        help="all: GSM8K then MATH-500 in one run, one output folder and one report")
    parser.add_argument("--data", default=None,
                        help="local JSONL (or data folder; with --dataset all a data folder) instead of the hub "
                             "dataset (default: $FRANKENEVAL_DATA when set)")
    parser.add_argument("--samples", type=int_arg(0, note="0 = all"), default=DEFAULT_SAMPLE_SIZE,
                        help=f"questions, >= 0: the paper's sub-sample (default {DEFAULT_SAMPLE_SIZE}; 0 = all; more "
                             "than the dataset has: all of it, said in a note)")
    parser.add_argument("--seed", type=seed_arg, default=DEFAULT_SAMPLE_SEED,
                        help=f"sub-sampling seed, 0 to {MAX_SEED} (default {DEFAULT_SAMPLE_SEED})")
    add_skip_broken_argument(parser)
    parser.add_argument("--layers", nargs="+", default=None,
                        help="unified LLM layers 1-n, e.g. 1-28, 9-17 or late (README 'Layer grammar'; default: all)")
    add_system_prompt_arguments(parser)
    add_seed_compatible_argument(parser)
    parser.add_argument("--out", required=True, help="output folder (a rerun with the same settings resumes)")
    add_allow_foreign_argument(parser)
    parser.add_argument("--ignore-eos", action="store_true",
                        help="benchmarks on random weights only: every answer runs to --max-new-tokens (recorded)")
    add_generator_arguments(parser, batch_size=32, max_new_tokens=None, auto_batch=True,
                            max_new_tokens_help="2048, the reference's")


def run(args: argparse.Namespace) -> int:
    from frankeneval.errors import FrankenevalError
    from frankeneval.evaluation.data import data_root_from_env
    from frankeneval.evaluation.prompts import resolve_system_prompt
    from frankeneval.localization.reasoning import (
        ALL,
        DATASETS,
        REASONING_MAX_NEW_TOKENS,
        REFERENCE_MAX_NEW_TOKENS,
        format_reasoning_table,
        run_reasoning_sweeps,
        select_questions,
    )
    from frankeneval.reports.localization_plots import plot_reasoning_localization
    from frankeneval.weights.layermap import parse_layers

    if args.max_new_tokens is None:
        args.max_new_tokens = REFERENCE_MAX_NEW_TOKENS if args.seed_compatible else REASONING_MAX_NEW_TOKENS
    data = args.data or data_root_from_env()  # as the other commands and the lmms-eval tasks: $FRANKENEVAL_DATA
    datasets = list(DATASETS) if args.dataset == ALL else [args.dataset]
    if len(datasets) > 1 and data and Path(data).expanduser().is_file():
        raise FrankenevalError(f"--dataset all reads both datasets: give --data a data folder (holding "
                               f"gsm8k/test.jsonl and math500/test.jsonl), not the file {data}")
    args.out = claim_out(args, "localize-reasoning", ("model", args.model), ("data", data))  # before any loading
    questions, skipped = {}, []
    for d in datasets:  # every selected row of every dataset parsed before the model loads
        questions[d], broken = select_questions(d, data=data, samples=args.samples, seed=args.seed,
                                                skip_broken=args.skip_broken, progress=not args.no_progress)
        skipped += broken
    gen = load_generator(args, args.model)  # after every selected row was parsed
    layers = parse_layers(args.layers, gen.n_llm_layers)  # unified LLM layers 1 … n
    prompt = resolve_system_prompt(args.model, system_prompt_setting(args))
    print(f"system prompt: {prompt}")
    results = run_reasoning_sweeps(
        gen, questions, layers, args.out, model_name=args.model,
        system_prompt=prompt, max_new_tokens=args.max_new_tokens,
        batch_size=units_per_call(args, gen, 32, args.max_new_tokens), seed_compatible=args.seed_compatible,
        progress=not args.no_progress,
        meta={"data": data or "hub", "samples": args.samples, "seed": args.seed}, ignore_eos=args.ignore_eos,
        skipped=skipped,
    )
    print(format_reasoning_table(results))
    png = plot_reasoning_localization(results, Path(args.out) / "reasoning_localization.png")
    print(f"wrote {Path(args.out) / 'reasoning_localization.json'} and {png}")
    return 0
