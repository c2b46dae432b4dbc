"""Options and loaders shared by several commands (not a command: modules starting with ``_`` are skipped)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from frankeneval.errors import FrankenevalError

MAX_SEED = 2**32 - 1  # numpy's RandomState and the bootstrap take seeds 0 ... 2**32 - 1


def int_arg(low: int, high: int | None = None, *, note: str = ""):
    """An argparse ``type=``: an integer in ``low`` ... ``high`` (no upper bound when None); anything else is
    rejected at the parser with the valid range (``must be an integer >= 1, got '0'``), before any work starts.
    ``note`` says what a special value means (e.g. ``0 = all``)."""
    span = f">= {low}" if high is None else f"from {low} to {high}"
    extra = f" ({note})" if note else ""

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {span}{extra}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {span}{extra}, got {text!r}")
        return value

    parse.__name__ = f"integer {span}"
    return parse


positive_int = int_arg(1)
seed_arg = int_arg(0, MAX_SEED)


def _batch_size_arg(text: str):
    """``--batch-size``: an integer >= 1, or ``auto`` (lmms-eval's ``auto:N`` is taken as ``auto``)."""
    if re.fullmatch(r"auto(:\d+)?", str(text).strip().lower()):
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}")
    return value


batch_size_arg = _batch_size_arg


def add_generator_arguments(parser: argparse.ArgumentParser, *, batch_size: int, max_new_tokens: int | None,
                            max_new_tokens_help: str | None = None, auto_batch: bool = False) -> None:
    """Model-loading and generation options shared by the localization commands (``max_new_tokens=None``: the
    command picks its default after parsing, described by ``max_new_tokens_help``). ``auto_batch``: ``--batch-size``
    defaults to ``auto`` (``batch_size`` rows on a CPU; on a GPU as many as its free memory holds, see
    :func:`units_per_call`)."""
    shown = max_new_tokens_help or max_new_tokens
    parser.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens,
                        help=f"greedy new tokens, >= 1 (default {shown})")
    if auto_batch:
        parser.add_argument("--batch-size", type=_batch_size_arg, default="auto",
                            help=f"generations per batched call (sample x layer units), or auto: {batch_size} on a "
                                 "CPU, on a GPU as many rows as a quarter of its free memory holds (up to 1024; "
                                 "default auto)")
    else:
        parser.add_argument("--batch-size", type=positive_int, default=batch_size,
                            help=f"generations per batched call (sample x layer units), >= 1 (default {batch_size})")
    parser.add_argument("--dtype", default="auto", help="auto | bfloat16 | float16 | float32 (default auto)")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if present)")
    parser.add_argument("--attn-implementation", default=None,
                        help="sdpa | eager | flash_attention_2 (default: the model's)")
    parser.add_argument("--decode", choices=("auto", "compiled", "hf"), default="auto",
                        help="auto: greedy rows decode with the static-cache decoder (CUDA graphs on a GPU); "
                             "compiled: the same with its step torch.compile-d (fused kernels; the first call "
                             "compiles; bfloat16 tokens may differ from auto's at near-ties); hf: transformers' "
                             "generate for everything (default auto; auto and hf give the same tokens in float32)")
    parser.add_argument("--max-pixels", type=positive_int, default=None,
                        help="processor max_pixels, >= 1 (default: the processor's)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickle (.bin) weights (loading them can run code from the file!)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_generator(args: argparse.Namespace, model: str):
    from frankeneval.engine.generation import Generator

    fixed = args.batch_size if isinstance(args.batch_size, int) else None
    return Generator.load(model, dtype=args.dtype, device=args.device, attn_implementation=args.attn_implementation,
                          max_pixels=args.max_pixels, max_batch_size=fixed, decode=getattr(args, "decode", "auto"),
                          allow_pickle=getattr(args, "allow_pickle", False))


def units_per_call(args: argparse.Namespace, generator, cpu_default: int, max_new_tokens: int) -> int:
    """``--batch-size`` as a number: itself, or for ``auto`` what the generator's memory allows (``cpu_default`` on
    a CPU)."""
    if isinstance(args.batch_size, int):
        return args.batch_size
    if generator.device.type != "cuda":
        return cpu_default
    return generator.rows_per_call(max_new_tokens)


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    from frankeneval.evaluation.data import DEFAULT_SAMPLE_SEED
    from frankeneval.evaluation.probes import PROBE_TASKS

    parser.add_argument("--tasks", nargs="+", choices=PROBE_TASKS, default=list(PROBE_TASKS),
                        help="probe tasks (default: all four)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--data", help="probe folder in the vision_probes format (root or one task folder); default: "
                                    "the released probes at $FRANKENEVAL_DATA/vision_probes")
    src.add_argument("--rendered", nargs="?", const="", default=None, metavar="DIR",
                     help="use the built-in synthetic probes instead (miniature-world scenes, as make-probes renders "
                          "them), rendered into DIR (default OUT/probes); only when asked, never with "
                          "--seed-compatible")
    parser.add_argument("--samples", type=positive_int, default=None,
                        help="pairs per task, >= 1: the paper's sub-sample (default: all); with --seed-compatible the "
                             "first k pairs in file order, as the reference (default 50). More than a task has: all "
                             "of its pairs, said in a note")
    parser.add_argument("--seed", type=seed_arg, default=DEFAULT_SAMPLE_SEED,
                        help=f"sub-sampling seed, 0 to {MAX_SEED} (default {DEFAULT_SAMPLE_SEED})")
    add_skip_broken_argument(parser)


def probe_data(args: argparse.Namespace) -> str | None:
    """The probe folder :func:`probe_sets` reads: ``--data``, else the released probes at
    ``$FRANKENEVAL_DATA/vision_probes``; None only for ``--rendered`` (the built-in synthetic probes, when asked).
    Neither found: one line saying where to point it. ``--seed-compatible`` never runs on rendered probes."""
    if args.rendered is not None:
        if getattr(args, "seed_compatible", False):
            raise FrankenevalError("--seed-compatible runs on the released probes (--data DIR or "
                                   "$FRANKENEVAL_DATA/vision_probes), never on the rendered ones")
        return None
    if args.data is not None:
        return args.data
    env = os.environ.get("FRANKENEVAL_DATA", "").strip()
    if env and (Path(env) / "vision_probes").is_dir():
        return str(Path(env) / "vision_probes")
    where = f"$FRANKENEVAL_DATA/vision_probes ({Path(env) / 'vision_probes'}) does not exist" if env else \
        "$FRANKENEVAL_DATA is not set"
    raise FrankenevalError(f"no probe data: {where}; give --data DIR (the released vision_probes folder), set "
                           "$FRANKENEVAL_DATA to the folder that holds vision_probes/, or ask for the built-in "
                           "synthetic probes with --rendered")


def renders_into_out(args: argparse.Namespace) -> bool:
    """Whether :func:`probe_sets` renders the built-in probes into ``OUT/probes`` (``--rendered`` without DIR)."""
    return args.rendered == ""


def probe_sets(args: argparse.Namespace):
    """``(pairs per task, data folder, skipped)``: the selected pairs (``--samples``, ``--seed``,
    ``--seed-compatible``), every one's images checked before any model is loaded (``--skip-broken``: broken ones
    skipped and returned)."""
    from frankeneval.localization.vision import select_probe_sets

    data = probe_data(args)
    if data is None:  # --rendered: the one renderer (the miniature world's), here, before the analysis reads
        data = render_probes(args)
    pairs, skipped = select_probe_sets(args.tasks, data=data, samples=args.samples,
                                       seed=args.seed, seed_compatible=getattr(args, "seed_compatible", False),
                                       skip_broken=args.skip_broken, progress=not args.no_progress)
    return pairs, data, skipped


RENDERED_PAIRS = 100  # pairs per task --rendered renders (seed 0), as `make-probes` by default


def render_probes(args: argparse.Namespace) -> Path:
    """``--rendered [DIR]``: the built-in probes (:func:`frankeneval.miniature.world.write_vision_probes`,
    :data:`RENDERED_PAIRS` per task, seed 0) rendered into DIR (default ``OUT/probes``), a folder frankeneval owns:
    never over a probe dataset it did not render. Returns the folder."""
    from frankeneval.miniature.world import write_vision_probes

    folder = output_request(args, args.rendered) if args.rendered else Path(args.out) / "probes"
    return write_vision_probes(folder, n_per_task=RENDERED_PAIRS, seed=0, tasks=args.tasks)


def add_skip_broken_argument(parser: argparse.ArgumentParser) -> None:
    """``--skip-broken`` (:data:`frankeneval.evaluation.inputs_check.SKIP_BROKEN_HELP`) for every command that
    reads data."""
    from frankeneval.evaluation.inputs_check import SKIP_BROKEN_HELP

    parser.add_argument("--skip-broken", action="store_true", help=SKIP_BROKEN_HELP)


def add_system_prompt_arguments(parser: argparse.ArgumentParser, *, per_member: bool = False) -> None:
    """``--system-prompt auto|reasoner|revisual|none|TEXT|@FILE`` (:mod:`frankeneval.evaluation.prompts`) and the old
    ``--reasoning-prompt auto|on|off`` (on = reasoner, off = none)."""
    from frankeneval.evaluation.prompts import SETTING_HELP

    group = parser.add_mutually_exclusive_group()
    group.add_argument("--system-prompt", default=None, metavar="auto|reasoner|revisual|none|TEXT|@FILE",
                       help=SETTING_HELP + (" (auto: decided per member)" if per_member else ""))
    group.add_argument("--reasoning-prompt", choices=("auto", "on", "off"), default=None,
                       help="old spelling of --system-prompt: auto = auto, on = reasoner, off = none")


def system_prompt_setting(args: argparse.Namespace) -> str:
    """The ``--system-prompt`` setting of the parsed args (``--reasoning-prompt`` mapped; default ``auto``)."""
    if getattr(args, "system_prompt", None) is not None:
        return args.system_prompt
    return {"on": "reasoner", "off": "none"}.get(getattr(args, "reasoning_prompt", None) or "auto", "auto")


SEED_COMPATIBLE_HELP = (
    "reproduce the paper's reference code where it deviates from the paper (README: 'Paper definition vs reference "
    "code'); default off = the paper's definitions. Every output records whether it was on")


def add_seed_compatible_argument(parser: argparse.ArgumentParser) -> None:
    """The one ``--seed-compatible`` switch every analysis command takes (same name as the model arg / task
    metadata)."""
    parser.add_argument("--seed-compatible", action="store_true", help=SEED_COMPATIBLE_HELP)


def add_allow_foreign_argument(parser: argparse.ArgumentParser) -> None:
    """``--allow-foreign-files``: the user's explicit yes to an output folder that holds files frankeneval did not
    write (:mod:`frankeneval.core.outdir`; they are never overwritten, appended to or deleted)."""
    from frankeneval.core.outdir import ALLOW_FOREIGN_HELP

    parser.add_argument("--allow-foreign-files", action="store_true", help=ALLOW_FOREIGN_HELP)


def output_request(args: argparse.Namespace, path: str | os.PathLike):
    """``path`` with the user's ``--allow-foreign-files``, for the library function that claims it."""
    from frankeneval.core.outdir import OutputRequest

    return OutputRequest(path, allow_foreign=getattr(args, "allow_foreign_files", False))


def claim_out(args: argparse.Namespace, layout: str, *inputs: tuple[str, str | os.PathLike | None],
              extra: tuple[str, ...] = ()):
    """Claim ``args.out`` for ``layout`` (:func:`frankeneval.core.outdir.claim_for`) before any model is loaded:
    ``inputs`` (label, path) that exist locally must not be, hold or contain it."""
    from frankeneval.core.outdir import claim_for, local_inputs

    return claim_for(layout, args.out, inputs=local_inputs(*inputs), extra=extra,
                     allow_foreign=getattr(args, "allow_foreign_files", False))
