"""Vision localization: swap the source image's visual-token K/V into the target's from each LLM layer L on,
and measure how often the answer changes, and how often it becomes the source image's own answer.

    frankeneval localize-vision --model M --out runs/vision              # the released probes, $FRANKENEVAL_DATA
    frankeneval localize-vision --model M --data ../shared/data/vision_probes --samples 25 --out runs/vision
    frankeneval localize-vision --model M --rendered --out runs/vision-synthetic   # built-in synthetic probes
    frankeneval localize-vision --model M --tasks counting ocr --layers 1-14 --out runs/vision
    frankeneval localize-vision --model M --data ../shared/data/vision_probes --seed-compatible --out runs/vision-ref

Layers are unified LLM indices (decoder layer j = L - 1); default: all. Per task and layer it reports the
method's change rate (seed-compatible rule), the task-aware change rate (numbers, words, boxes by IoU >= 0.5,
yes/no) and the source-follow rate, and per task the peak layer: the swap-start layer L where the change rate rises
most, rate(L) - rate(L'), L' the next swept layer (swapping from L on covers every layer >= L, so the rate falls as L
grows and the rise is what layers L ... L'-1 add), with a 95 % bootstrap interval over pairs (2000 resamples, seed 0)
of the peak layer and its rise; in the table, the JSON (tasks.<task>.peak) and the plot (dotted, shaded interval).
Writes OUT/units.jsonl (every finished generation; a rerun resumes),
OUT/vision_localization.json (schema: frankeneval.localization.vision) and OUT/vision_localization.png.
Prompts are the data's verbatim. --seed-compatible reproduces the reference code: the swap re-appends the source's
visual K/V at every decode step, and the pairs are the first 50 (or --samples) of each task file, in file order.

Before the model is loaded, both images of every selected pair are decoded and every selected row parsed: a broken
file (e.g. the released recognition_000058_t.jpg, truncated) stops the run in one line naming it. --skip-broken
leaves such pairs out instead: they are skipped after selection (not replaced by other pairs, so --samples and
--seed-compatible select the same pairs either way), listed under "skipped" in vision_localization.json and
printed below the table.

The default swap needs a pair's two images to give the same number of visual tokens. A pair that does not (the
counts follow from the image sizes through the processor) is refused before any model work on it: it is listed under
"refused" (task, pair id, both counts, reason) in vision_localization.json and below the table, recorded in
units.jsonl so a resumed run refuses it again without running it, and the other pairs run; rates are over the pairs
that ran. --seed-compatible runs such a pair with the source's K/V interpolated over token positions, as the reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from frankeneval.commands._shared import (
    add_allow_foreign_argument,
    add_generator_arguments,
    add_probe_arguments,
    add_seed_compatible_argument,
    claim_out,
    load_generator,
    probe_data,
    probe_sets,
    renders_into_out,
    units_per_call,
)

COMMAND = "localize-vision"
HELP = "visual-token KV swap sweep: change and source-follow rate per layer per probe task"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model (local dir or hub id)")
    add_probe_arguments(parser)
    parser.add_argument("--layers", nargs="+", default=None,
                        help="unified LLM layers 1-n, e.g. 1-28, 1 5 9 or late (README 'Layer grammar'; default: all)")
    add_seed_compatible_argument(parser)
    parser.add_argument("--out", required=True, help="output folder (a rerun with the same settings resumes)")
    add_allow_foreign_argument(parser)
    add_generator_arguments(parser, batch_size=32, max_new_tokens=64, auto_batch=True)


def run(args: argparse.Namespace) -> int:
    from frankeneval.localization.vision import (
        format_vision_table,
        pair_selection,
        run_vision_sweep,
    )
    from frankeneval.reports.localization_plots import plot_vision_localization
    from frankeneval.weights.layermap import parse_layers

    sc = args.seed_compatible
    # the output folder is claimed before anything is rendered or loaded (docs/safety.md)
    args.out = claim_out(args, "localize-vision", ("model", args.model), ("data", probe_data(args)),
                         extra=("probes",) if renders_into_out(args) else ())
    pairs, source, skipped = probe_sets(args)  # selected, and every selected image checked before the model loads
    gen = load_generator(args, args.model)
    layers = parse_layers(args.layers, gen.n_llm_layers)  # unified LLM layers 1 … n
    results = run_vision_sweep(gen, pairs, layers, args.out, model_name=args.model, max_new_tokens=args.max_new_tokens,
                               batch_size=units_per_call(args, gen, 32, args.max_new_tokens), seed_compatible=sc,
                               progress=not args.no_progress,
                               meta={"samples": args.samples, "seed": args.seed, "data": str(source),
                                     "pair_selection": pair_selection(args.samples, args.seed, seed_compatible=sc)},
                               skipped=skipped)
    print(format_vision_table(results))
    png = plot_vision_localization(results, Path(args.out) / "vision_localization.png")
    print(f"wrote {Path(args.out) / 'vision_localization.json'} and {png}")
    return 0
