"""Transfer cells: one lmms-eval process per GPU (``--process-per-gpu``), one per model (the default) and one per
cell (``--process-per-cell``), measured whole, side by side, on the same models, tasks and items.

    python bench/bench_transfer_joint.py --work /tmp/tj --data ../shared/data                      # tiny lineage, CPU
    python bench/bench_transfer_joint.py --work /tmp/tj --data DATA --recipe openmmreasoner \
        --in IN --rl RL --base BASE --tasks franken_perception,franken_alignment,franken_reasoning --gpus 1   # GPU

Each mode runs the whole matrix into its own fresh run folder (the variants are materialized once, before the
timing, into a shared splice cache); the wall time is the ``run_transfer`` call. ``--variants-at-a-time N`` (a
disk that holds the lineage but not six 7B variants; ``--one-variant-at-a-time`` is N = 1): Base / IN / RL first,
then N variants at a time: materialized (untimed), their cells run in every mode (timed: the sum over the chunks is
each mode's wall time), then deleted.
Afterwards every cell's samples of each mode are compared with one process per cell's (responses and scores, item
for item). Prints a table and writes JSON (``--out``). In chunks, one process per GPU holds only a chunk's models
(Base / IN / RL together, then N variants), so its figure grows with N.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import code_commit  # noqa: E402

from frankeneval.core.results import write_json_atomic  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--data", required=True)
    p.add_argument("--recipe", default="tiny")
    p.add_argument("--in", dest="in_model", default=None)
    p.add_argument("--rl", dest="rl_model", default=None)
    p.add_argument("--base", dest="base_model", default=None)
    p.add_argument("--tasks", default="franken_gsm8k,franken_math500,franken_mathvista_perception_black")
    p.add_argument("--sample-size", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", default="4")
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--variants-at-a-time", type=int, default=0,
                   help="materialize N variants at a time, untimed, and delete them after every mode ran their "
                        "cells (default 0: all at once)")
    p.add_argument("--one-variant-at-a-time", action="store_true", help="--variants-at-a-time 1")
    p.add_argument("--modes", default="per_gpu,per_model,per_cell",
                   help="which of per_gpu, per_model, per_cell to run (per_cell: the baseline the others are "
                        "compared with; default all three)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from frankeneval.transferability.recipes import tiny_recipe
    from frankeneval.transferability.transfer import prepare_models, run_transfer

    recipe = args.recipe
    models = {k: v for k, v in (("base", args.base_model), ("in", args.in_model), ("rl", args.rl_model)) if v}
    if recipe == "tiny" and not models:
        from frankeneval.miniature.lineage import write_lineage

        lineage = write_lineage(args.work / "lineage", preset="tiny", progress=False)
        recipe = tiny_recipe(lineage)
    cache = args.work / "splices"
    tasks = [t for t in args.tasks.split(",") if t]
    batch = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    known = {"per_gpu": "gpu", "per_model": None, "per_cell": False}
    wanted = [m for m in args.modes.split(",") if m]
    if "per_cell" not in wanted or any(m not in known for m in wanted):
        p.error(f"--modes: a comma list of {', '.join(known)}, per_cell included (the baseline)")
    modes = [(m, known[m]) for m in known if m in wanted]
    from frankeneval.transferability.manifest import MANIFEST

    for mode, _ in modes:  # each mode starts fresh: only a transfer run folder (its manifest) is cleared
        run = args.work / f"run_{mode}"
        if run.exists() and any(run.iterdir()) and not (run / MANIFEST).is_file():
            p.error(f"{run} exists and is not a transfer run folder: choose another --work")
        shutil.rmtree(run, ignore_errors=True)
    at_a_time = 1 if args.one_variant_at_a_time else max(args.variants_at_a_time, 0)
    if at_a_time:
        if cache.exists():  # it is deleted after each chunk: only a cache this run made
            p.error(f"--variants-at-a-time deletes {cache} after each chunk; it exists already: move it")
        from full_size import variants

        names = variants(recipe) if isinstance(recipe, str) else list(recipe.variants)
        chunks = [([], True)] + [(names[i:i + at_a_time], False) for i in range(0, len(names), at_a_time)]
    else:
        chunks = [(None, True)]
    seconds, runs = {mode: 0.0 for mode, _ in modes}, {mode: (args.work / f"run_{mode}", 0) for mode, _ in modes}
    for chunk, refs in chunks:
        if chunk != []:  # untimed: the chunk's variants (None: all of them) into the splice cache
            prepare_models(recipe, variants=chunk, models=models or None, splice_cache=cache,
                           progress=lambda s: None)
        for mode, joint in modes:
            t0 = time.perf_counter()
            result = run_transfer(runs[mode][0], recipe, tasks=tasks, models=models or None, splice_cache=cache,
                                  variants=chunk, include_reference=refs, sample_size=args.sample_size,
                                  sample_seed=123, data_dir=args.data, max_new_tokens=args.max_new_tokens,
                                  batch_size=batch, gpus=args.gpus, joint=joint, progress=lambda s: None)
            seconds[mode] += time.perf_counter() - t0
            runs[mode] = (runs[mode][0], runs[mode][1] + len(result.ran))
        if at_a_time:
            shutil.rmtree(cache, ignore_errors=True)  # this script's own cache under --work: the next variant's room
    from frankeneval.transferability.cells import find_results

    equal: dict[str, str] = {}
    ok = True
    for mode, _ in modes:
        if mode == "per_cell":
            continue
        same, compared = 0, 0
        for cell_dir in sorted((runs[mode][0] / "cells").glob("*/*")):
            other = runs["per_cell"][0] / cell_dir.relative_to(runs[mode][0])
            a, b = find_results(cell_dir)[1], find_results(other)[1]
            for task, path in a.items():
                rows = [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x]
                rows_b = [json.loads(x) for x in b[task].read_text(encoding="utf-8").split("\n") if x]
                key = ("doc_id", "filtered_resps", "rule_acc")
                compared += len(rows)
                same += sum([r.get(k) for k in key] == [s.get(k) for k in key]
                            for r, s in zip(rows, rows_b, strict=True))
        equal[mode] = f"{same} / {compared}"
        ok = ok and same == compared and runs[mode][1] == runs["per_cell"][1]
    speedup = {mode: seconds["per_cell"] / seconds[mode] for mode, _ in modes if mode != "per_cell"}
    record = {"command": " ".join(sys.argv), "cells": runs["per_cell"][1], "tasks": tasks,
              "variants_at_a_time": at_a_time, "seconds": seconds,
              "speedup_over_per_cell": speedup, "items_equal_to_per_cell": equal,
              "date": time.strftime("%Y-%m-%d"), **code_commit(),
              "complete": True}  # written once, after every mode ran the whole matrix
    print(f"{record['cells']} cells ({len(tasks)} tasks a model): one process per cell {seconds['per_cell']:.1f} s; "
          + "; ".join(f"{mode.replace('_', ' ')} {seconds[mode]:.1f} s = {speedup[mode]:.2f}x, items equal "
                      f"{equal[mode]}" for mode in speedup))
    if args.out:
        write_json_atomic(args.out, record, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
