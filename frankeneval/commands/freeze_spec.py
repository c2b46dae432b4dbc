"""Print the parameter-name patterns to freeze for the necessity test (re-run RL with a block held fixed).

Layers: the layer grammar (README "Layer grammar"): unified LLM layers 1 ... n (decoder layer j is j + 1), block
regions early / middle / late / all (cuts n // 3 and 2n // 3, or --cuts), inclusive ranges (1-9, 12), and
vision / projector for the whole vision encoder or the patch merger. Names are the ones trainers see
(transformers module names, model.language_model.layers.N... with N = unified layer - 1). Examples:

    frankeneval freeze-spec --layers middle,late --format trl
    frankeneval freeze-spec --layers 1-9 --components attention --n-layers 28 --format verl
    frankeneval freeze-spec --layers late --model path/to/checkpoint --format names
"""

from __future__ import annotations

import argparse
import sys

from frankeneval.errors import FrankenevalError
from frankeneval.necessity.freeze import FORMATS, check_against, freeze_mask, model_parameter_names, render

COMMAND = "freeze-spec"
HELP = "print the parameter patterns to freeze (necessity test) for TRL, verl or as a regex"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", required=True,
                        help="unified LLM layers 1-n, e.g. 1-9,12 or late, plus vision / projector "
                             "(README 'Layer grammar')")
    parser.add_argument("--components", default="all", help="attention,mlp,norm (default: all)")
    src = parser.add_mutually_exclusive_group()
    from frankeneval.commands._shared import positive_int

    src.add_argument("--n-layers", type=positive_int, default=None,
                     help="number of LLM layers, >= 1 (default 28, Qwen2.5-VL-7B)")
    src.add_argument("--model", default=None, help="checkpoint dir: read the depth and check the patterns on its names")
    parser.add_argument("--cuts", default=None,
                        help="block cuts c1,c2: early 1-c1, middle c1+1-c2, late c2+1-n (default n//3,2n//3)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="with --model: allow pickle (.bin) weights (loading them can run code from the file!)")
    parser.add_argument("--format", choices=FORMATS, default="regex", help="output form (default: regex)")


def run(args: argparse.Namespace) -> int:
    names = None
    if args.model:
        names, n_layers = model_parameter_names(args.model, allow_pickle=args.allow_pickle)
    else:
        n_layers = args.n_layers or 28
    cuts = None
    if args.cuts:
        try:
            cuts = [int(c) for c in args.cuts.split(",")]
        except ValueError:
            raise FrankenevalError(f"--cuts {args.cuts!r}: expected two integers like 8,20") from None
        if len(cuts) != 2:
            raise FrankenevalError(f"--cuts {args.cuts!r}: expected two integers like 8,20")
    mask = freeze_mask(args.layers, n_layers=n_layers, components=args.components, cuts=cuts)
    if names is not None:
        bad = check_against(mask, names)
        if bad:
            raise FrankenevalError(f"pattern disagrees with the layer map on {len(bad)} names, e.g. {bad[0]}")
        print(f"# {mask.describe()}: checked on {len(names)} parameter names of {args.model}", file=sys.stderr)
    print(render(mask, args.format, names))
    return 0
