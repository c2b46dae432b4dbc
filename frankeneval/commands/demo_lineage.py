"""Write a built-in Base -> IN -> RL lineage (``base/``, ``in/``, ``rl/`` in the hub layout) into DIR.

By default the lineage is random with planted, known updates (``frankeneval.miniature.lineage.write_lineage``; any
preset, seconds for ``tiny``). With ``--trained`` it is the trained miniature lineage: a tiny Qwen2.5-VL taken through
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

from frankeneval.commands._shared import add_allow_foreign_argument
from frankeneval.errors import FrankenevalError, OutputRefused

COMMAND = "demo-lineage"
HELP = "write a built-in Base -> IN -> RL lineage (random, or --trained on the rendered world)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="output folder (base/, in/, rl/ are written inside)")
    parser.add_argument("--trained", action="store_true", help="the trained miniature lineage (cached build)")
    from frankeneval.commands._shared import MAX_SEED, seed_arg

    parser.add_argument("--seed", type=seed_arg, default=0, help=f"seed, 0 to {MAX_SEED} (default 0)")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "tiny-vllm", "qwen2.5-vl-3b", "qwen2.5-vl-7b"],
                        help="random lineage size (ignored with --trained, which has its own tiny architecture)")
    parser.add_argument("--force", action="store_true", help="rewrite / retrain even when a complete copy exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_allow_foreign_argument(parser)


MEMBERS = ("base", "in", "rl")


def _member_link(path: Path) -> bool:
    """``path`` is a symbolic link to a frankeneval lineage member (what :func:`_place` makes)."""
    from frankeneval.miniature.lineage import owned_member

    target = Path(os.path.realpath(path))
    return path.is_symlink() and target.is_dir() and owned_member(target) is None


def _owned(path: Path) -> str | None:
    """None when ``path`` is a lineage member frankeneval wrote here (a folder it wrote, or its link to the cached
    build), else why it may not be replaced."""
    from frankeneval.miniature.lineage import owned_member

    if path.is_symlink():
        return None if _member_link(path) else "it is a symbolic link to something that is not a lineage member"
    if not path.is_dir():
        return "it is not a folder"
    return owned_member(path)


def _adopt_lineage(folder: Path, present: set[str]) -> str | None:
    """An older frankeneval's lineage folder (no output marker): only members it wrote."""
    for name in sorted(present):
        why = "it is not a lineage member" if name not in MEMBERS else _owned(folder / name)
        if why:
            return f"{name}: {why}"
    return None


def _place(src: Path, dst: Path, force: bool) -> None:
    """Make ``dst`` hold the cached build ``src`` (a symlink when possible, else a copy). An existing ``dst`` is
    replaced only when frankeneval wrote it (:func:`_owned`: its link to a lineage member, or a member folder it
    wrote); anything else is refused in one line, with or without ``--force``."""
    from frankeneval.core.locks import output_lock
    from frankeneval.core.results import discard_directory

    if dst.resolve() == src.resolve():
        return
    if dst.exists() or dst.is_symlink():
        why = _owned(dst)
        if why:
            raise OutputRefused(f"{dst} was not replaced: {why}; move it away or choose another folder")
        if not force and not dst.is_symlink():
            raise FrankenevalError(f"{dst} exists; pass --force to replace it")
        if dst.is_symlink():
            dst.unlink()  # our link: its target is left as it is
        else:
            with output_lock(dst):
                discard_directory(dst)
    try:
        os.symlink(src, dst, target_is_directory=True)
    except OSError:
        shutil.copytree(src, dst)


def run(args: argparse.Namespace) -> int:
    from frankeneval.core.outdir import claim_output_dir

    if not args.trained:
        from frankeneval.miniature.lineage import write_lineage

        claim_output_dir(args.dir, command="demo-lineage", files=MEMBERS, links=MEMBERS, adopt=_adopt_lineage,
                         allow_foreign=args.allow_foreign_files)

        lineage = write_lineage(args.dir, preset=args.preset, seed=args.seed, overwrite=args.force,
                                progress=not args.no_progress)
        for m, p in lineage.paths.items():
            print(f"{m}: {p}")
        return 0

    from frankeneval.miniature import training as tl

    # DIR is an output folder frankeneval owns; base/, in/, rl/ are replaced only when frankeneval wrote them
    claim_output_dir(args.dir, command="demo-lineage", files=MEMBERS, links=MEMBERS, adopt=_adopt_lineage,
                     allow_foreign=args.allow_foreign_files)
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
