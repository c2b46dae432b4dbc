"""Measure what IN and RL changed: energy and singular-value spectra of ΔIN = IN - Base and ΔRL = RL - IN
for every weight matrix, streamed (each tensor read once), on the GPU when there is one.

    frankeneval characterize --base B --in I --rl R --out runs/char
    frankeneval characterize --recipe NAME --out runs/char           # a built-in recipe's lineage
    frankeneval characterize --base B --in I --rl R --out runs/energy --energy-only
    frankeneval characterize --base B --in I --rl R --out runs/char-seed --seed-compatible   # the reference scripts
    frankeneval characterize --base B --in I --rl R --out runs/down --weight-filter down_proj --llm-only

Writes OUT/matrices.jsonl (one line per matrix), OUT/summary.json (mean and sum per unified layer,
section, component and LLM region) and OUT/run.json (metadata). A rerun resumes: finished matrices are
skipped. Compare the ΔRL of two or more lineages (cosine similarity and top-r subspace overlap per
matrix and per layer):

    frankeneval characterize --compare runs/charA runs/charB --out runs/cmp
    frankeneval characterize --compare A=IN_A,RL_A B=IN_B,RL_B recipe:NAME --out runs/cmp

Then `frankeneval plot OUT` draws the figures (among them the reference's diversity plots: spectral norm and log
spectral volume per layer, and the representative spectra of the early / middle / late LLM thirds).
--weight-filter and --llm-only narrow the matrices measured; they are recorded in run.json's settings, and a rerun
in the same --out with another selection is refused.

--seed-compatible reproduces the paper's reference scripts (frankeneval.characterization.reference): fp16
deltas, fp32 svdvals, no spectra for matrices over 1e8 elements, the 1-D visual.merger.ln_q.weight in the
projector's energy, and the energy plot's mean of per-matrix ratios. Default: the paper's definitions.
"""

from __future__ import annotations

import argparse

from frankeneval.commands._shared import add_allow_foreign_argument, add_seed_compatible_argument, output_request
from frankeneval.errors import SpecError

COMMAND = "characterize"
HELP = "energy and spectra of ΔIN and ΔRL per weight matrix (and --compare ΔRL across lineages)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from frankeneval.commands._shared import int_arg, positive_int

    parser.add_argument("--base", help="Base checkpoint (local dir or hub id)")
    parser.add_argument("--in", dest="in_", metavar="IN", help="IN (instruction/SFT) checkpoint")
    parser.add_argument("--rl", help="RL checkpoint")
    parser.add_argument("--recipe",
                        help="built-in recipe whose lineage to measure (--base/--in/--rl override its models)")
    parser.add_argument("--compare", nargs="+", metavar="LINEAGE",
                        help="compare ΔRL across lineages: characterize run dirs, recipe:NAME, or [LABEL=]BASE,IN,RL")
    parser.add_argument("--out", required=True,
                        help="output directory (resumed when it holds a run with the same settings)")
    parser.add_argument("--top-k", type=positive_int, default=50,
                        help="singular values kept per matrix, >= 1 (default 50)")
    parser.add_argument("--volume-k", type=positive_int, default=50,
                        help="singular values in the log spectral volume, >= 1 (default 50)")
    parser.add_argument("--rank-r", type=int_arg(0, note="0 = skip"), default=8,
                        help="top-r singular subspaces for overlaps, >= 0 (0: skip; default 8)")
    parser.add_argument("--energy-only", action="store_true", help="Frobenius norms and cosines only (no spectra)")
    parser.add_argument("--svd-method", choices=("auto", "gram", "svd"), default="auto",
                        help="singular values: float64 Gram + eigvalsh (auto) or svdvals")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--sections", nargs="+", choices=("vision", "projector", "llm", "embeddings", "lm_head"),
                        help="only these sections (default: all)")
    parser.add_argument("--weight-filter", metavar="SUBSTRING",
                        help="only weights whose name contains SUBSTRING, e.g. down_proj (the reference's "
                             "--weight-filter: a plain substring, not a regex; default: every weight)")
    parser.add_argument("--llm-only", action="store_true",
                        help="only the LLM decoder layers (unified layers > 0; no vision, projector, embeddings)")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    add_allow_foreign_argument(parser)
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickle (.bin) weights (loading them can run code from the file!)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_seed_compatible_argument(parser)


def run(args: argparse.Namespace) -> int:
    from frankeneval.characterization.characterize import characterize
    from frankeneval.characterization.compare import compare
    from frankeneval.characterization.measure import CharacterizeSettings

    common = dict(device=args.device, overwrite=args.overwrite, progress=not args.no_progress,
                  allow_pickle=args.allow_pickle)
    if args.compare:
        if args.seed_compatible:
            raise SpecError("--seed-compatible has no counterpart for --compare "
                            "(the reference scripts have no cross-lineage comparison)")
        if args.weight_filter is not None or args.llm_only:
            raise SpecError("--weight-filter and --llm-only select the matrices of a characterize run; "
                            "--compare takes --sections")
        summary = compare(args.compare, output_request(args, args.out), rank_r=args.rank_r, sections=args.sections,
                          svd_method=args.svd_method, **common)
        overall = summary["aggregates"]["all"] or {"pairs": {}}
        for key, p in overall["pairs"].items():
            print(f"{key}: cosine {_fmt(p['cosine'])}, mean overlap left {_fmt(p['overlap_left']['mean'])} "
                  f"right {_fmt(p['overlap_right']['mean'])}")
        print(f"wrote {args.out}/compare.jsonl and compare_summary.json ({summary['n_matrices']} matrices)")
        return 0
    models = {"base": args.base, "in": args.in_, "rl": args.rl}
    label = None
    if args.recipe:
        from frankeneval.transferability.recipes import get_recipe  # lazy

        recipe_models = dict(get_recipe(args.recipe).models)
        models = {k: models[k] or recipe_models.get(k) for k in models}
        label = args.recipe
    missing = [k for k, v in models.items() if not v]
    if missing:
        raise SpecError(f"characterize needs --base, --in and --rl (or --recipe); "
                        f"missing: {', '.join('--' + m for m in missing)}")
    settings = CharacterizeSettings(
        top_k=args.top_k,
        volume_k=args.volume_k,
        rank_r=args.rank_r,
        spectra=not args.energy_only,
        svd_method=args.svd_method,
        sections=tuple(args.sections) if args.sections else None,
        seed_compatible=args.seed_compatible,
        weight_filter=args.weight_filter,
        llm_only=args.llm_only,
    )
    summary = characterize(models["base"], models["in"], models["rl"], output_request(args, args.out),
                           settings=settings, label=label, **common)
    sec = summary["aggregates"]["by_section"]
    seed = summary["seed_compatible"]
    for name, g in sec.items():
        if seed:  # the reference's numbers: mean over matrices of the per-matrix ratio
            rel_in, rel_rl, what = g["delta_in"]["rel_fro"]["mean"], g["delta_rl"]["rel_fro"]["mean"], "mean "
        else:
            rel_in, rel_rl, what = g["energy"]["delta_in_rel_fro"], g["energy"]["delta_rl_rel_fro"], ""
        sr = g["delta_rl"].get("stable_rank", {}).get("mean")
        print(f"{name:<11} {g['n']:>4} matrices  {what}‖ΔIN‖/‖W‖ {_fmt(rel_in)}  {what}‖ΔRL‖/‖W‖ {_fmt(rel_rl)}"
              + (f"  ΔRL stable rank (mean) {_fmt(sr)}" if sr is not None else ""))
    print(f"seed_compatible: {'true' if seed else 'false'}")
    if settings.weight_filter is not None or settings.llm_only:
        print("selection: " + ", ".join(([f"names containing {settings.weight_filter!r}"] if settings.weight_filter
                                         else []) + (["LLM layers only"] if settings.llm_only else [])))
    if seed:
        for name, why in summary["spectra_skipped"].items():
            print(f"no spectra for {name}: {why}")
    elif summary["over_reference_limit"]:
        print(f"measured {len(summary['over_reference_limit'])} matrices with more than 1e8 elements "
              f"(the reference skips them)")
    print(f"wrote {args.out}/matrices.jsonl and summary.json ({summary['n_matrices']}/{summary['n_planned']} matrices)")
    return 0


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"
