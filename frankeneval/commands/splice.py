"""Materialize a Frankenstein checkpoint: LLM layer blocks of one model spliced into another.

SPEC is one of
  * a built-in recipe variant, RECIPE:VARIANT   (e.g. openmmreasoner:in_early+rl_middle_late)
  * a merge-spec YAML file                       (see merges/ and frankeneval.transferability.mergespec)
  * a paper phrase with its models               ("SFT early 1/3 layers + RL late 2/3 layers" --in DIR --rl DIR)
  * a variant phrase of the reference's transferability_test.py (noise ablation, interpolation, replacement):
        "<model> layers A-B ablate noise=r [seed=N]"
        "<model> layers A-B interpolate <donor> alpha=a [component=mlp|attn|all]"
        "<model> early|middle|late 1/3 layers interpolate <donor> alpha=a"
        "<model> early|middle|late 1/3 layers replaced by <donor>"
    In these phrases only, A-B are the reference's 0-based decoder indices (layers 0-1 = unified LLM layers 1-2);
    every output and the provenance give unified layers. <model> and <donor> are IN / RL / base / donor (--donor),
    a checkpoint folder or a hub id; the donor may be a text-only LLM (Qwen2ForCausalLM). The thirds follow --cuts.
    The selected tensors are computed (seeded noise: seed 0 unless seed=N; the seed is recorded).

The result is an ordinary hub-layout checkpoint (sharded safetensors + index, the host's config, tokenizer,
processor, chat template and generation config) plus frankeneval_provenance.json. The write is atomic, and
rerunning with the same spec and unchanged sources does nothing (use --force to rewrite).

Examples:
  frankeneval splice --list
  frankeneval splice openmmreasoner:in_early+rl_middle_late --out runs/omr-in-early
  frankeneval splice --recipe mmr1 --variant rl_early+in_middle+rl_late --in /ckpt/sft --rl /ckpt/rl --out X
  frankeneval splice "IN early 1/3 layers + RL late 2/3 layers" --in DIR_IN --rl DIR_RL --cuts 8 20 --out X
  frankeneval splice "IN layers 0-1 ablate noise=0.5 seed=1" --in DIR_IN --out X
  frankeneval splice "RL late 1/3 layers replaced by donor" --rl DIR_RL --donor Qwen/Qwen2.5-7B-Instruct --out X
  frankeneval splice --check X
"""

from __future__ import annotations

import argparse
import json
import re

COMMAND = "splice"
HELP = ("materialize a Frankenstein checkpoint (layer blocks spliced from IN / RL, noise ablation, interpolation "
        "with a donor) or check one")


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 5GB, 500MB, 2GiB)")
    unit = m.group(2).rstrip("B")
    mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
    size = int(float(m.group(1)) * mult[unit])
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be a size of at least 1 byte (e.g. 5GB, 500MB, 2GiB), got {text!r}")
    return size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="RECIPE:VARIANT, a merge-spec YAML file, or a quoted paper phrase "
                        "(layers: unified LLM layers 1-n, README 'Layer grammar'), or a variant phrase of the "
                        "reference ('IN layers 0-1 ablate noise=0.5', '... interpolate DONOR alpha=0.5 "
                        "[component=mlp|attn|all]', 'IN late 1/3 layers replaced by DONOR'): in variant phrases only, "
                        "'layers A-B' are 0-based decoder indices (0-1 = unified 1-2)")
    parser.add_argument("--out", "-o", help="output directory of the spliced checkpoint")
    parser.add_argument("--recipe", help="built-in recipe name (or recipe YAML) -- with --variant")
    parser.add_argument("--variant", help="variant of --recipe (see --list)")
    parser.add_argument("--in", dest="in_", metavar="DIR_OR_ID", help="the IN (SFT / cold-start) model")
    parser.add_argument("--rl", metavar="DIR_OR_ID", help="the RL model")
    parser.add_argument("--base", metavar="DIR_OR_ID", help="the base model (only if the spec uses it)")
    parser.add_argument("--donor", metavar="DIR_OR_ID",
                        help="the source named 'donor' of an interpolation / replacement (may be a text-only "
                             "Qwen2ForCausalLM LLM); a variant phrase may name the donor's folder or hub id instead")
    from frankeneval.commands._shared import positive_int

    parser.add_argument("--cuts", nargs=2, type=positive_int, metavar=("C1", "C2"),
                        help="block cuts on the unified axis: early 1-C1, middle C1+1-C2, late C2+1-n "
                             "(default n//3 2n//3)")
    parser.add_argument("--host",
                        help="source that supplies non-layer parts, config and tokenizer (default: layer 1's)")
    parser.add_argument("--force", action="store_true",
                        help="rewrite even if OUT already holds this splice (never replaces a source, a folder "
                             "holding one, or files frankeneval did not write)")
    parser.add_argument("--shard-size", type=_size, default=None, help="output shard size (default 5GiB)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print which source every block comes from, write nothing")
    parser.add_argument("--check", metavar="DIR", help="verify every tensor of a splice against its declared source")
    parser.add_argument("--list", action="store_true", help="list built-in recipes and their variants")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickle (.bin) source weights (loading them can run code from the file!)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def _list() -> int:
    from frankeneval.transferability.recipes import get_recipe, list_recipes

    for name in list_recipes():
        r = get_recipe(name)
        print(f"{name}: {r.description}")
        for key in ("base", "in", "rl"):
            if key in r.models:
                print(f"    {key:>4}: {r.models[key]}")
        for v, spec in r.variants.items():
            print(f"  {name}:{v}")
            print(f"      {spec.phrase or ''}  ->  {spec.describe()}")
    return 0


def run(args: argparse.Namespace) -> int:
    from frankeneval.errors import SpecError
    from frankeneval.transferability.recipes import get_recipe, load_spec
    from frankeneval.transferability.splice import DEFAULT_SHARD_BYTES, materialize, plan_splice, verify

    if args.list:
        return _list()
    if args.check:
        report = verify(args.check, progress=not args.quiet, allow_pickle=args.allow_pickle)
        print(report.summary())
        return 0 if report.ok else 1
    models = {"in": args.in_, "rl": args.rl, "base": args.base, "donor": args.donor}
    models = {k: v for k, v in models.items() if v}
    if args.recipe:
        if not args.variant:
            raise SpecError(f"--recipe needs --variant; choose from: {', '.join(get_recipe(args.recipe).variants)}")
        if args.spec:
            raise SpecError("give either SPEC or --recipe/--variant, not both")
        spec_text = f"{args.recipe}:{args.variant}"
    elif args.spec:
        spec_text = args.spec
    else:
        raise SpecError("nothing to do: give SPEC (or --recipe/--variant) with --out, --check DIR, or --list")
    spec = load_spec(spec_text, models=models, cuts=args.cuts, host=args.host)
    if args.dry_run:
        plan = plan_splice(spec, allow_pickle=args.allow_pickle)
        print(json.dumps({"spec": spec.to_dict(), "tensors_per_source": plan.counts(),
                          "tensors_computed": len(plan.computed), "bytes": plan.total_bytes,
                          "build_hash": plan.build_hash}, indent=2))
        return 0
    if not args.out:
        raise SpecError("--out DIR is required (where to write the spliced checkpoint)")
    out = materialize(spec, args.out, force=args.force, progress=not args.quiet,
                      shard_bytes=args.shard_size or DEFAULT_SHARD_BYTES, allow_pickle=args.allow_pickle)
    _warn_without_tokenizer(out, spec)
    print(out)
    return 0


def _warn_without_tokenizer(out, spec) -> None:
    """One stderr line when the splice has no tokenizer (its host had none): its weights can be inspected and
    characterized, but no command can generate with it until tokenizer files are added."""
    import sys

    from frankeneval.weights.checkpoint import TOKENIZER_FILES, tokenizer_files

    if not tokenizer_files(out):
        print(f"frankeneval splice: warning: {out} has no tokenizer: its host {spec.host!r} "
              f"({spec.sources.get(spec.host)}) has none of {', '.join(TOKENIZER_FILES)}; copy a tokenizer into it "
              "(or splice with --host set to a source that has one) before evaluating it", file=sys.stderr)
