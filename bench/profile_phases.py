"""Where a Generator call spends its time on a GPU: encode / prefill / decode seconds at several batch sizes, and the
top CUDA kernels (torch.profiler) of one warm image-prompt call and of one warm vision-sweep batch.

    python bench/profile_phases.py --model LINEAGE/rl --data DATA --out prof.json

Every measured call is preceded by a warm-up call at the same shape. The weights of a factory lineage are random:
the numbers are about time only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import _sync, load_generator, make_requests, timed


def timed_call(gen, fn) -> tuple[float, dict]:
    fn()  # warm-up at this shape
    gen.profile, gen.timings = True, {}
    _, secs = timed(fn)
    phases = dict(gen.timings)
    gen.profile = False
    return secs, phases


def kernel_table(fn, top: int) -> tuple[str, list[dict]]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
        _sync()
    avg = prof.key_averages()
    rows = sorted(avg, key=lambda e: getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)),
                  reverse=True)
    out = []
    for e in rows[:top]:
        out.append({"name": e.key[:120], "count": e.count,
                    "self_device_ms": getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) / 1e3,
                    "self_cpu_ms": e.self_cpu_time_total / 1e3})
    return avg.table(sort_by="self_cuda_time_total", row_limit=top), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 256, 512])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--vision-units", type=int, default=256, help="units of the profiled vision-sweep batch")
    ap.add_argument("--no-kernels", action="store_true", help="phases only (no torch.profiler tables)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    gen = load_generator(args.model, dtype="bfloat16" if cuda else "float32", decode="auto",
                         device="cuda" if cuda else "cpu", attn=None)
    res: dict = {"model": args.model, "gpu": torch.cuda.get_device_name(0) if cuda else None,
                 "torch": torch.__version__,
                 "generator": [], "kernels": {}}

    def save():
        args.out.write_text(json.dumps(res, indent=1) + "\n")

    common = dict(max_new_tokens=args.new_tokens, ignore_eos=True)
    for rows in args.rows:
        reqs = make_requests(rows, 336, 0)
        for fresh in (False, True):
            def call(reqs=reqs, rows=rows, fresh=fresh):
                if fresh:
                    gen.encoder.clear()
                return gen.generate(reqs, batch_size=rows, **common)

            secs, phases = timed_call(gen, call)
            entry = {"rows": rows, "fresh": fresh, "seconds": secs, "tokens_per_s": rows * args.new_tokens / secs,
                     "phases": phases, "decode_ms_per_step": 1e3 * phases.get("decode", 0) / (args.new_tokens - 1)}
            res["generator"].append(entry)
            print(json.dumps(entry), flush=True)
            save()

    if args.no_kernels:
        return 0
    big = args.rows[min(1, len(args.rows) - 1)]
    reqs = make_requests(big, 336, 0)
    table, top = kernel_table(lambda: (gen.encoder.clear(), gen.generate(reqs, batch_size=big, **common)), args.top)
    res["kernels"][f"generator_{big}_fresh"] = top
    print(table, flush=True)
    save()

    # one vision-sweep batch: the first 256 units of the sweep (plain + swap rows), warm
    from frankeneval.localization.vision import (
        load_probe_sets,
        make_executor,
        vision_units,
    )

    pairs = load_probe_sets(data=args.data / "vision_probes", samples=3)
    layers = list(range(1, gen.n_llm_layers + 1))
    units, _ = vision_units(pairs, layers)
    batch = units[: args.vision_units]
    execute = make_executor(gen, max_new_tokens=64, system=None)
    secs, phases = timed_call(gen, lambda: execute(batch))
    res["vision_batch"] = {"units": len(batch), "seconds": secs, "phases": phases}
    print(json.dumps(res["vision_batch"]), flush=True)
    table, top = kernel_table(lambda: execute(batch), args.top)
    res["kernels"][f"vision_batch_{len(batch)}"] = top
    print(table, flush=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
