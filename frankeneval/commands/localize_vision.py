"""Vision localization: swap the source image's visual-token K/V into the target's from each LLM layer L on,
and measure how often the answer changes, and how often it becomes the source image's own answer.

    frankeneval localize-vision --model M --out runs/vision                       # built-in rendered probes
    frankeneval localize-vision --model M --data ../shared/data/vision_probes --samples 25 --out runs/vision
    frankeneval localize-vision --model M --tasks counting ocr --layers 1-14 --out runs/vision

Layers are unified LLM indices (decoder layer j = L - 1); default: all. Per task and layer it reports the
method's change rate (seed-compatible rule), the task-aware change rate (numbers, words, boxes by IoU >= 0.5,
yes/no) and the source-follow rate. Writes OUT/units.jsonl (every finished generation; a rerun resumes),
OUT/vision_localization.json (schema: frankeneval.localize_vision) and OUT/vision_localization.png.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

COMMAND = "localize-vision"
HELP = "visual-token KV swap sweep: change and source-follow rate per layer per probe task"


def add_generator_arguments(parser: argparse.ArgumentParser, *, batch_size: int, max_new_tokens: int) -> None:
    """Model-loading and generation options shared by the localization commands."""
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"greedy new tokens (default {max_new_tokens})")
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help=f"generations per batched call (sample x layer units; default {batch_size})")
    parser.add_argument("--dtype", default="auto", help="auto | bfloat16 | float16 | float32 (default auto)")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if present)")
    parser.add_argument("--attn-implementation", default=None, help="sdpa | eager | flash_attention_2 (default: the model's)")
    parser.add_argument("--max-pixels", type=int, default=None, help="processor max_pixels (default: the processor's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_generator(args: argparse.Namespace, model: str):
    from frankeneval.generation import Generator

    return Generator.load(model, dtype=args.dtype, device=args.device, attn_implementation=args.attn_implementation,
                          max_pixels=args.max_pixels, max_batch_size=args.batch_size)


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    from frankeneval.data import DEFAULT_SAMPLE_SEED
    from frankeneval.probes import PROBE_TASKS

    parser.add_argument("--tasks", nargs="+", choices=PROBE_TASKS, default=list(PROBE_TASKS), help="probe tasks (default: all four)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--data", help="probe folder in the vision_probes format (root or one task folder)")
    src.add_argument("--rendered", nargs="?", const="", default=None, metavar="DIR",
                     help="use the built-in rendered probes (rendered into DIR, default OUT/probes); the default "
                          "when neither --data nor $FRANKENEVAL_DATA/vision_probes is given")
    parser.add_argument("--samples", type=int, default=None, help="pairs per task: the paper's sub-sample (default: all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SAMPLE_SEED, help=f"sub-sampling seed (default {DEFAULT_SAMPLE_SEED})")


def probe_sets(args: argparse.Namespace):
    from frankeneval.localize_vision import load_probe_sets

    data = args.data
    if data is None and args.rendered is None:
        env = os.environ.get("FRANKENEVAL_DATA", "").strip()
        if env and (Path(env) / "vision_probes").is_dir():
            data = str(Path(env) / "vision_probes")
    rendered = None
    if data is None:
        rendered = args.rendered or str(Path(args.out) / "probes")
    return load_probe_sets(args.tasks, data=data, rendered_dir=rendered, samples=args.samples, seed=args.seed), (data or rendered)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model (local dir or hub id)")
    add_probe_arguments(parser)
    parser.add_argument("--layers", nargs="+", default=None, help="unified LLM layers, e.g. 1-28 or 1 5 9 (default: all)")
    parser.add_argument("--out", required=True, help="output folder (a rerun with the same settings resumes)")
    add_generator_arguments(parser, batch_size=32, max_new_tokens=64)


def run(args: argparse.Namespace) -> int:
    from frankeneval.localize import parse_layers
    from frankeneval.localize_vision import format_vision_table, run_vision_sweep
    from frankeneval.plots_localize import plot_vision_localization

    pairs, source = probe_sets(args)
    gen = load_generator(args, args.model)
    layers = parse_layers(args.layers, gen.model.config.get_text_config().num_hidden_layers)
    results = run_vision_sweep(gen, pairs, layers, args.out, model_name=args.model, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, progress=not args.no_progress,
                               meta={"samples": args.samples, "seed": args.seed, "data": str(source)})
    print(format_vision_table(results))
    png = plot_vision_localization(results, Path(args.out) / "vision_localization.png")
    print(f"wrote {Path(args.out) / 'vision_localization.json'} and {png}")
    return 0
