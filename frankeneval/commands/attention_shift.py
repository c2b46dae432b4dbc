"""Attention shift: the share of attention that generated (reasoning) tokens pay to the visual tokens, per LLM
layer and head, for Base, IN and RL on the same prompts; RL - IN and IN - Base per layer, and the early /
middle / late summary (the paper's claim rests on the middle and late rows).

    frankeneval attention-shift --base B --in I --rl R --out runs/attn     # the released probes, $FRANKENEVAL_DATA
    frankeneval attention-shift --base B --in I --rl R --rendered --out runs/attn-synthetic  # built-in synthetic
    frankeneval attention-shift --base B --in I --rl R --tasks counting ocr \\
        --data ../shared/data/vision_probes --samples 25 --max-new-tokens 256 --out runs/attn

Prompts: the probe pairs' target images with their questions, preceded by the step-by-step / \\boxed{}
instruction (--plain: the bare question); each member's system prompt by --system-prompt (default auto:
docs/method.md's rule on its hub id / directory's own name), recorded in the JSON with the reason. Writes
OUT/units.jsonl (resumable), OUT/attention_shift.json (schema: frankeneval.localization.attention) and
OUT/attention_shift.png. The selected pairs' images are decoded before any
model is loaded: a broken one stops the run in one line, or with --skip-broken is left out (not replaced), listed
under "skipped" in attention_shift.json and below the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from frankeneval.commands._shared import (
    add_allow_foreign_argument,
    add_generator_arguments,
    add_probe_arguments,
    add_system_prompt_arguments,
    claim_out,
    load_generator,
    probe_data,
    probe_sets,
    renders_into_out,
    system_prompt_setting,
)

COMMAND = "attention-shift"
HELP = "share of attention generated tokens pay to visual tokens, per layer and head, for Base / IN / RL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="Base model (local dir or hub id)")
    parser.add_argument("--in", dest="in_", metavar="IN", required=True, help="IN model")
    parser.add_argument("--rl", required=True, help="RL model")
    add_probe_arguments(parser)
    parser.add_argument("--plain", action="store_true",
                        help="ask the bare probe question (no step-by-step instruction)")
    add_system_prompt_arguments(parser, per_member=True)
    parser.add_argument("--out", required=True, help="output folder (a rerun with the same settings resumes)")
    add_allow_foreign_argument(parser)
    add_generator_arguments(parser, batch_size=16, max_new_tokens=256)


def run(args: argparse.Namespace) -> int:
    from frankeneval.localization.attention import (
        attention_prompts,
        format_attention_table,
        run_attention_shift,
    )
    from frankeneval.reports.localization_plots import plot_attention_shift

    # the output folder is claimed before anything is rendered or loaded (docs/safety.md)
    args.out = claim_out(args, "attention-shift", ("base", args.base), ("in", args.in_), ("rl", args.rl),
                         ("data", probe_data(args)), extra=("probes",) if renders_into_out(args) else ())
    pairs, source, skipped = probe_sets(args)  # selected, and every selected image checked before any model loads
    prompts = attention_prompts(pairs, instruction=not args.plain)
    members = {"base": args.base, "in": args.in_, "rl": args.rl}
    results = run_attention_shift(
        members, prompts, args.out, load=lambda path: load_generator(args, path), max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, system_prompt=system_prompt_setting(args), instruction=not args.plain,
        progress=not args.no_progress, meta={"samples": args.samples, "seed": args.seed, "data": str(source)},
        skipped=skipped, decode=args.decode,
    )
    print(format_attention_table(results))
    png = plot_attention_shift(results, Path(args.out) / "attention_shift.png")
    print(f"wrote {Path(args.out) / 'attention_shift.json'} and {png}")
    return 0
