"""Write a built-in Base -> IN -> RL lineage (``base/``, ``in/``, ``rl/`` in the hub layout) into DIR.

By default the lineage is random with planted, known updates (``frankeneval.miniature.lineage.write_lineage``; any preset,
seconds for ``tiny``). With ``--trained`` it is the trained miniature lineage: a tiny Qwen2.5-VL taken through
pre-training, SFT and GRPO on the rendered world (``frankeneval.miniature.training``; minutes on a CPU). The trained
lineage is built once per (version, seed) in the cache (``$FRANKENEVAL_CACHE/lineages/trained-seed<S>-v<V>``) and
linked or copied into DIR, so a second call returns at once; ``--force`` rebuilds it.

Examples:
  frankeneval demo-lineage runs/lineage                 # random tiny lineage
  frankeneval demo-lineage runs/trained --trained       # trained lineage, prints held-out accuracy
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from frankeneval.errors import FrankenevalError

COMMAND = "demo-lineage"
HELP = "write a built-in Base -> IN -> RL lineage (random, or --trained on the rendered world)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="output folder (base/, in/, rl/ are written inside)")
    parser.add_argument("--trained", action="store_true", help="the trained miniature lineage (cached build)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "tiny-vllm", "qwen2.5-vl-3b", "qwen2.5-vl-7b"],
                        help="random lineage size (ignored with --trained, which has its own tiny architecture)")
    parser.add_argument("--force", action="store_true", help="rewrite / retrain even when a complete copy exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _place(src: Path, dst: Path, force: bool) -> None:
    """Make ``dst`` hold the cached build ``src`` (a symlink when possible, else a copy)."""
    if dst.resolve() == src.resolve():
        return
    if dst.exists() or dst.is_symlink():
        if not force and dst.is_symlink() and dst.resolve() == src.resolve():
            return
        if not force and not dst.is_symlink():
            raise FrankenevalError(f"{dst} exists; pass --force to replace it")
        if dst.is_symlink() or dst.is_file():
            dst.unlink()
        else:
            shutil.rmtree(dst)
    try:
        os.symlink(src, dst, target_is_directory=True)
    except OSError:
        shutil.copytree(src, dst)


def run(args: argparse.Namespace) -> int:
    if not args.trained:
        from frankeneval.miniature.lineage import write_lineage

        lineage = write_lineage(args.dir, preset=args.preset, seed=args.seed, overwrite=args.force,
                                progress=not args.no_progress)
        for m, p in lineage.paths.items():
            print(f"{m}: {p}")
        return 0

    from frankeneval.miniature import training as tl

    cache = tl.trained_lineage_dir(args.seed)
    lineage = tl.build_trained_lineage(cache, seed=args.seed, recipe=tl.DEFAULT_RECIPE, force=args.force,
                                       progress=not args.no_progress)
    args.dir.mkdir(parents=True, exist_ok=True)
    for m, p in lineage.paths.items():
        _place(p, args.dir / m, args.force)
        print(f"{m}: {args.dir / m}")
    if lineage.timings:
        print("stage time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in lineage.timings.items()))
    if lineage.accuracy:
        print("held-out accuracy [95% bootstrap interval]:")
        print(tl.format_accuracy(lineage.accuracy))
    return 0
