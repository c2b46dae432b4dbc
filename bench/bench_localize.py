"""Benchmark the localization sweeps against the naive loop (one generate per sample per layer, batch 1).

    python bench/bench_localize.py --preset qwen2.5-vl-7b --workdir /tmp/bench_loc            # GPU
    python bench/bench_localize.py --preset tiny --workdir /tmp/bench_loc --pairs 2 --questions 3 \\
        --naive-units 6 --max-new-tokens-vision 8 --max-new-tokens-reasoning 8                     # CPU check

1. Writes one random RL member of the preset's shape (``write_lineage(members=("rl",))``; reused if present).
2. Swap sweep: every LLM layer x 4 probe tasks x ``--pairs`` pairs (built-in rendered probes, or ``--data``),
   batched as ``frankeneval localize-vision`` runs it (source K/V once per pair, many layers per call).
3. Ablation sweep: every LLM layer (+ unablated) x ``--questions`` GSM8K questions (``--gsm8k FILE``, else the
   hub), fixed ``--max-new-tokens-reasoning``.
4. For each sweep, the naive loop (batch 1, one generate per unit; for swaps the source image is re-encoded per
   call, as the reference does) on ``--naive-units`` units spread evenly over the sweep (all units when 0);
   its time is extrapolated to the whole sweep (stated in the output) and its answers are compared with the
   batched sweep's answers for the same units.

Prints a table and writes ``WORKDIR/bench_localize.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _spread(items: list, k: int) -> list:
    if k <= 0 or k >= len(items):
        return list(items)
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


def bench_vision(gen, pairs, layers, out: Path, args) -> dict:
    from PIL import Image

    from frankeneval.engine.generation import GenRequest
    from frankeneval.engine.interventions import SwapVisualKV
    from frankeneval.localization.vision import run_vision_sweep, vision_units

    shutil.rmtree(out, ignore_errors=True)
    units, _ = vision_units(pairs, layers)
    _sync()
    t = time.perf_counter()
    res = run_vision_sweep(gen, pairs, layers, out, model_name="bench", max_new_tokens=args.max_new_tokens_vision,
                           batch_size=args.batch_size, progress=False)
    _sync()
    batched_s = time.perf_counter() - t
    got = {}
    for p in res["pairs"]:
        for L, text in p["swapped"].items():
            got[(p["task"], p["id"], int(L))] = text
    by_id = {(task, p.id): p for task, ps in pairs.items() for p in ps}
    swap_units = [u for u in units if u.info["kind"] == "swap"]
    plain_units = [u for u in units if u.info["kind"] == "plain"]
    subset = _spread(swap_units, args.naive_units)
    equal = 0
    _sync()
    t = time.perf_counter()
    for u in subset:
        pair = by_id[(u.info["task"], u.info["pair"])]
        gen._kv_cache.clear()  # naive: the source is re-encoded for every call
        target = Image.open(pair.target_image).convert("RGB")
        source = Image.open(pair.source_image).convert("RGB")
        text = gen.generate([GenRequest(pair.text_prompt, [target])], max_new_tokens=args.max_new_tokens_vision,
                            interventions=[[SwapVisualKV(source=source, from_layer=u.info["layer"])]],
                            batch_size=1)[0].text
        equal += text == got[(u.info["task"], u.info["pair"], u.info["layer"])]
    _sync()
    naive_subset_s = time.perf_counter() - t
    # the naive loop also generates the original and source answers once per pair (batch 1)
    n_naive_total = len(swap_units) + 2 * sum(len(v) for v in pairs.values())
    naive_s = naive_subset_s / max(1, len(subset)) * n_naive_total
    return {"sweep": "vision swap", "layers": len(layers), "tasks": len(pairs), "pairs_per_task": args.pairs,
            "units": len(units), "plain_units_dedup": len(plain_units), "batched_s": batched_s,
            "naive_units_run": len(subset), "naive_units_total": n_naive_total, "naive_subset_s": naive_subset_s,
            "naive_s_extrapolated": naive_s, "speedup": naive_s / batched_s, "equal": equal,
            "max_new_tokens": args.max_new_tokens_vision}


def bench_reasoning(gen, questions, layers, out: Path, args) -> dict:
    from frankeneval.engine.generation import GenRequest
    from frankeneval.engine.interventions import Ablate
    from frankeneval.localization.reasoning import (
        question_prompt,
        reasoning_units,
        run_reasoning_sweep,
    )

    shutil.rmtree(out, ignore_errors=True)
    units = reasoning_units("gsm8k", questions, layers, None)
    _sync()
    t = time.perf_counter()
    run_reasoning_sweep(gen, "gsm8k", questions, layers, out, model_name="bench", system_prompt="none",
                        max_new_tokens=args.max_new_tokens_reasoning, batch_size=args.batch_size, progress=False)
    _sync()
    batched_s = time.perf_counter() - t
    records = {key: rec["response"] for key, rec in RunStore(out / "units.jsonl").records().items()}
    by_index = {q.index: q for q in questions}
    subset = _spread(units, args.naive_units)
    equal = 0
    _sync()
    t = time.perf_counter()
    for u in subset:
        q = by_index[u.info["index"]]
        L = u.info["layer"]
        text = gen.generate([GenRequest(question_prompt(q.problem))], max_new_tokens=args.max_new_tokens_reasoning,
                            interventions=[[] if L is None else [Ablate((L,))]], batch_size=1)[0].text
        equal += text == records[u.key]
    _sync()
    naive_subset_s = time.perf_counter() - t
    naive_s = naive_subset_s / max(1, len(subset)) * len(units)
    return {"sweep": "ablation", "layers": len(layers), "questions": len(questions), "units": len(units),
            "batched_s": batched_s, "naive_units_run": len(subset), "naive_units_total": len(units),
            "naive_subset_s": naive_subset_s, "naive_s_extrapolated": naive_s, "speedup": naive_s / batched_s,
            "equal": equal, "max_new_tokens": args.max_new_tokens_reasoning}


from frankeneval.core.runstore import RunStore  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="tiny | qwen2.5-vl-3b | qwen2.5-vl-7b")
    p.add_argument("--workdir", required=True)
    p.add_argument("--data", default=None, help="probe folder in the vision_probes format (default: rendered probes)")
    p.add_argument("--gsm8k", default=None,
                   help="local GSM8K JSONL (default: ../shared/data/gsm8k/test.jsonl, else hub)")
    p.add_argument("--pairs", type=int, default=25, help="probe pairs per task (default 25)")
    p.add_argument("--questions", type=int, default=50, help="GSM8K questions (default 50)")
    p.add_argument("--max-new-tokens-vision", type=int, default=64)
    p.add_argument("--max-new-tokens-reasoning", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64, help="units per batched call (default 64)")
    p.add_argument("--naive-units", type=int, default=60, help="units the naive loop runs per sweep (0 = all)")
    p.add_argument("--only", choices=("vision", "reasoning"), default=None, help="run one sweep only")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args(argv)

    from frankeneval.engine.generation import Generator
    from frankeneval.localization.reasoning import load_questions
    from frankeneval.localization.vision import load_probe_sets
    from frankeneval.miniature.lineage import write_lineage

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    lin = write_lineage(work / f"lineage-{args.preset}", preset=args.preset, members=("rl",), progress=False)
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    gen = Generator.load(str(lin.rl), dtype=args.dtype, max_batch_size=args.batch_size)
    load_s = time.perf_counter() - t
    n_layers = gen.model.config.get_text_config().num_hidden_layers
    layers = list(range(1, n_layers + 1))
    device = str(gen.device) + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "")
    rows = []
    if args.only in (None, "vision"):
        from frankeneval.miniature.world import write_vision_probes

        data = args.data or write_vision_probes(work / "probes", n_per_task=max(args.pairs, 25), seed=0)
        pairs = load_probe_sets(data=data, samples=args.pairs, seed=123)
        rows.append(bench_vision(gen, pairs, layers, work / "vision", args))
    if args.only in (None, "reasoning"):
        gsm = args.gsm8k
        if gsm is None:
            shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "test.jsonl"
            gsm = str(shared) if shared.is_file() else None
        questions = load_questions("gsm8k", data=gsm, samples=args.questions, seed=123)
        rows.append(bench_reasoning(gen, questions, layers, work / "reasoning", args))
    print(f"preset {args.preset}, {n_layers} LLM layers, device {device}; write {write_s:.1f} s, load {load_s:.1f} s")
    print(f"{'sweep':<12} {'units':>6} {'batched s':>10} {'naive s (extrap.)':>18} {'naive run':>10} {'speedup':>8} "
          f"{'equal':>8}")
    for r in rows:
        print(f"{r['sweep']:<12} {r['units']:>6} {r['batched_s']:>10.1f} {r['naive_s_extrapolated']:>18.1f} "
              f"{r['naive_units_run']:>4}/{r['naive_units_total']:<5} {r['speedup']:>8.1f} "
              f"{r['equal']:>3}/{r['naive_units_run']:<4}")
    print("naive time = (time of the naive loop on the units run) / (units run) x (all units of the sweep)")
    out = {"preset": args.preset, "device": device, "n_layers": n_layers, "write_s": write_s, "load_s": load_s,
           "dtype": args.dtype, "batch_size": args.batch_size, "results": rows}
    (work / "bench_localize.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {work / 'bench_localize.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
