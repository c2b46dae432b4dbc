"""Necessity as an experiment: re-run RL from IN with LLM blocks frozen, and compare the gain with unfrozen RL.

On the miniature world (default): the trained miniature lineage's own RL stage (TRL GRPO, its recipe and seed) is
run from its IN member once per freeze setting -- none, early, middle, late, middle+late by default, on the unified
LLM layer axis with the lineage's depth -- each run cached (reused while IN's content, the recipe, the setting, the
seed and the versions match), evaluated on the held-out items, and reported as the RL gain over IN per axis with
paired 95 % bootstrap intervals, and the paired difference against unfrozen RL. Writes necessity.json,
necessity.md and necessity.png into --out.

    frankeneval necessity                                   # the five settings, default recipe (~20 min, 2 cores)
    frankeneval necessity --recipe smoke --out runs/nec     # the smallest recipe (seconds; CI)
    frankeneval necessity --settings none,late --eval-items 200

On a real model: the TRL and verl configurations carrying the freeze masks, and (where TRL and a GPU are present)
TRL's GRPOTrainer launched with them on your dataset:

    frankeneval necessity --model IN_CHECKPOINT --freeze late --freeze middle+late --write-configs cfg/
    frankeneval necessity --model IN_CHECKPOINT --freeze late --launch --dataset train.jsonl --out runs/nec
"""

from __future__ import annotations

import argparse
from pathlib import Path

from frankeneval.commands._shared import MAX_SEED, add_allow_foreign_argument, positive_int, seed_arg
from frankeneval.errors import FrankenevalError
from frankeneval.miniature.necessity import RECIPES

COMMAND = "necessity"
HELP = "re-run RL with LLM blocks frozen (miniature world), or write / launch TRL and verl configs for a model"

SMOKE_EVAL_ITEMS = 16  # per eval set with --recipe smoke (default recipe: the lineage evaluation's sizes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="frankeneval-necessity",
                        help="output folder (default ./frankeneval-necessity): necessity.json / .md / .png, or with "
                             "--launch one trl-<setting>/ run folder per setting")
    parser.add_argument("--settings", default=None,
                        help="comma-separated freeze settings: none, early, middle, late, middle+late, or unified "
                             "layer ranges joined by + (default: none,early,middle,late,middle+late)")
    parser.add_argument("--freeze", action="append", default=None, metavar="SETTING",
                        help="one more freeze setting (repeatable; may hold commas, e.g. 1-9,12 or late,vision)")
    parser.add_argument("--cuts", default=None,
                        help="block cuts c1,c2: early 1-c1, middle c1+1-c2, late c2+1-n (default n//3,2n//3)")
    parser.add_argument("--seed", type=seed_arg, default=0,
                        help=f"miniature: the lineage's seed; with --model: GRPO's seed (0 to {MAX_SEED}, default 0)")
    mini = parser.add_argument_group("miniature world")
    mini.add_argument("--recipe", choices=RECIPES, default="default",
                      help="the trained lineage's recipe (smoke: a few steps per stage, for CI; default: default)")
    mini.add_argument("--eval-items", type=positive_int, default=None,
                      help="held-out items per eval set (default: the lineage evaluation's 600 / 1500 / 600 / 600; "
                           f"{SMOKE_EVAL_ITEMS} with --recipe smoke)")
    mini.add_argument("--force", action="store_true", help="retrain every setting even when its cached run matches")
    mini.add_argument("--no-progress", action="store_true", help="no progress bars")
    real = parser.add_argument_group("a real model")
    real.add_argument("--model", default=None, help="the IN checkpoint (local folder) RL starts from")
    real.add_argument("--components", default="all", help="frozen components of those layers: attention,mlp,norm")
    real.add_argument("--write-configs", default=None, metavar="DIR",
                      help="write trl_grpo.py, trl_grpo_<setting>.json, verl_<setting>.txt, frozen_<setting>.txt")
    real.add_argument("--launch", action="store_true",
                      help="run TRL's GRPOTrainer with each setting's config (needs TRL and a CUDA GPU)")
    real.add_argument("--dataset", default=None, help="JSONL of {prompt, answer, images?} rows (needed by --launch)")
    real.add_argument("--allow-cpu", action="store_true",
                      help="with --launch: train on the CPU when no GPU is present (tiny models only)")
    real.add_argument("--steps", type=positive_int, default=None, help="GRPO steps (default 200)")
    real.add_argument("--learning-rate", type=float, default=None, help="default 1e-6")
    real.add_argument("--num-generations", type=positive_int, default=None, help="samples per prompt (default 8)")
    real.add_argument("--batch-size", type=positive_int, default=None,
                      help="completions per device step, a multiple of --num-generations (default 8)")
    real.add_argument("--max-completion-length", type=positive_int, default=None, help="default 1024")
    real.add_argument("--beta", type=float, default=None, help="KL weight to IN (default 0)")
    real.add_argument("--allow-pickle", action="store_true",
                      help="with --model: allow pickle (.bin) weights (loading them can run code from the file!)")
    add_allow_foreign_argument(parser)


def _cuts(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        cuts = [int(c) for c in text.split(",")]
    except ValueError:
        cuts = []
    if len(cuts) != 2:
        raise FrankenevalError(f"--cuts {text!r}: expected two integers like 8,20")
    return cuts


def _setting_names(args: argparse.Namespace, default: tuple[str, ...]) -> list[str]:
    names = [s for s in (args.settings or "").split(",") if s.strip()] + list(args.freeze or [])
    return names or list(default)


def _run_miniature(args: argparse.Namespace) -> int:
    from frankeneval.commands._shared import output_request
    from frankeneval.miniature.necessity import lineage_for_recipe, run_necessity
    from frankeneval.necessity.settings import SETTINGS

    if args.write_configs or args.launch or args.dataset:
        raise FrankenevalError("--write-configs, --launch and --dataset need --model IN_CHECKPOINT (a real model)")
    from frankeneval.miniature.necessity import claim_outputs

    out = claim_outputs(output_request(args, args.out))  # before a lineage is built or a run trained
    progress = not args.no_progress
    lineage = lineage_for_recipe(args.recipe, seed=args.seed, progress=progress)
    items = args.eval_items or (SMOKE_EVAL_ITEMS if args.recipe == "smoke" else None)
    sizes = {k: items for k in ("perception", "alignment", "reasoning", "alignment_blackdesc")} if items else None
    result = run_necessity(lineage, _setting_names(args, SETTINGS), eval_sizes=sizes, cuts=_cuts(args.cuts),
                           force=args.force, out=out, recipe_name=args.recipe,
                           progress=progress)
    print()
    print(result.markdown)
    for kind, path in result.paths.items():
        print(f"{kind}: {path}")
    print(f"time: {result.data['times']['total_s']:.0f} s (RL training {result.data['times']['train_s']:.0f} s)")
    return 0


def _run_model(args: argparse.Namespace) -> int:
    from frankeneval.commands._shared import output_request
    from frankeneval.core.outdir import claim_output_dir
    from frankeneval.necessity.configs import launch, launch_problem, write_configs
    from frankeneval.necessity.freeze import model_parameter_names
    from frankeneval.necessity.settings import parse_settings

    if not (args.write_configs or args.launch):
        raise FrankenevalError("with --model, give --write-configs DIR and/or --launch --dataset FILE")
    if args.launch and not args.dataset:
        raise FrankenevalError("--launch needs --dataset FILE.jsonl ({prompt, answer, images?} rows)")
    if args.dataset and not Path(args.dataset).is_file():
        raise FrankenevalError(f"--dataset {args.dataset}: no such file")
    if args.launch:  # before anything is written: one line where TRL or a GPU is missing
        problem = launch_problem(allow_cpu=args.allow_cpu)
        if problem:
            raise FrankenevalError(problem)
    names, n_layers = model_parameter_names(args.model, allow_pickle=args.allow_pickle)
    settings = parse_settings(_setting_names(args, ("late",)), n_layers=n_layers, cuts=_cuts(args.cuts),
                              components=args.components)
    import torch

    on_cpu = args.launch and not torch.cuda.is_available()
    grpo = {"seed": args.seed}
    for key, value in (("max_steps", args.steps), ("learning_rate", args.learning_rate),
                       ("num_generations", args.num_generations), ("per_device_train_batch_size", args.batch_size),
                       ("max_completion_length", args.max_completion_length), ("beta", args.beta)):
        if value is not None:
            grpo[key] = value
    if args.num_generations and not args.batch_size:
        grpo["per_device_train_batch_size"] = args.num_generations
    if on_cpu:
        grpo.update(use_cpu=True, bf16=False)
    out = None
    if args.launch:
        out = claim_output_dir(output_request(args, args.out), command="necessity",
                               files=[f"trl-{s.slug}" for s in settings] + ([] if args.write_configs else ["configs"]),
                               inputs=[("model", args.model), ("dataset", args.dataset)])
    cfg_dir = args.write_configs or (Path(out) / "configs")
    written = write_configs(output_request(args, cfg_dir), model=args.model, settings=settings, names=names,
                            output_root=Path(out) if out is not None else Path(args.out), dataset=args.dataset,
                            grpo=grpo, dtype="float32" if on_cpu else "bfloat16")
    for s in settings:
        print(f"{s.name} ({s.mask.describe()}): " + ", ".join(str(p) for p in written[s.name].values()))
    if args.launch:
        records = launch([written[s.name]["trl"] for s in settings], allow_cpu=args.allow_cpu)
        for s, rec in zip(settings, records):
            print(f"{s.name}: {rec['global_step']} GRPO steps in {rec['train_s']:.0f} s, {len(rec['frozen'])} frozen "
                  f"parameters verified unchanged -> {Path(out) / f'trl-{s.slug}'}")
    return 0


def run(args: argparse.Namespace) -> int:
    return _run_model(args) if args.model else _run_miniature(args)
