"""attention-shift's capture, batched on the static decoder vs one prompt at a time through ``model.generate``.

    python bench/bench_attention.py --preset qwen2.5-vl-7b --workdir /tmp/ba --data DATA/vision_probes --out a.json
    python bench/bench_attention.py --base B --in I --rl R --data DATA/vision_probes --out a.json   # a lineage at hand
    python bench/bench_attention.py --preset tiny --workdir /tmp/ba --prompts 4 --max-new-tokens 8 --cpu-smoke \\
        --out /tmp/ba/out.json                                                        # CPU plumbing check only

Issue 32's comparison: ``--prompts`` (32) probe target images with attention-shift's prompt (the step-by-step
instruction), each member (Base, IN, RL) generating ``--max-new-tokens`` (256) greedy tokens with
``CaptureAttention(query="generated")``, exactly as ``frankeneval attention-shift`` does (its executor), two ways in
one process, bfloat16:

(a) the baseline: ``decode="hf"``, one prompt per call (the hooked forward inside ``model.generate``, which is
    how attention-shift ran before the static decoder captured attention);
(b) the batched path: ``decode="auto"``, all prompts in one call (the capture inside the static decoder's step,
    CUDA graph on a GPU).

Each is warmed up at the shape it is measured at (a: one prompt; b: the whole batch once, reported as the cold
call), model loads are timed apart. Then the equality check in float32 (RL only, ``--check`` prompts, both paths):
the generated tokens and each prompt's per-layer, per-head mean mass, largest absolute difference reported (the
unit test's tolerance is 1e-5). Random weights (a written lineage): time and agreement only. Writes ``--out`` (JSON)
and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from frankeneval.engine.generation import Generator
from frankeneval.localization.attention import _executor, _member_units, attention_prompts
from frankeneval.localization.vision import select_probe_sets
from frankeneval.miniature.lineage import write_lineage
from frankeneval.miniature.world import write_vision_probes

MEMBERS = ("base", "in", "rl")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def run_units(gen: Generator, units, max_new_tokens: int, per_call: int) -> list[dict]:
    """attention-shift's executor over ``units``, ``per_call`` units a generate call."""
    execute = _executor(gen, max_new_tokens)
    out = []
    for i in range(0, len(units), per_call):
        out += execute(units[i : i + per_call])
    return out


def plain_one(gen: Generator, unit, max_new_tokens: int) -> float:
    """Seconds of one prompt through the same ``decode`` path without the capture (what the hooks cost)."""
    from PIL import Image

    path, req = unit.request
    with Image.open(path) as im:
        request = type(req)(req.prompt, [im.convert("RGB")], req.system)
    return timed(lambda: gen.generate([request], max_new_tokens=max_new_tokens, batch_size=1))[1]


def write_json(path: Path, report: dict) -> None:
    """Atomic: written after every member, so a run stopped by a call's limit keeps what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)


def members_of(args) -> dict[str, str]:
    if args.base and args.in_ and args.rl:
        return {"base": args.base, "in": args.in_, "rl": args.rl}
    lin = write_lineage(args.workdir / f"lineage-{args.preset}", preset=args.preset, seed=0, progress=False)
    return {"base": str(lin.base), "in": str(lin.in_), "rl": str(lin.rl)}


def prompts_of(args) -> list[dict]:
    data = args.data or write_vision_probes(args.workdir / "probes", n_per_task=max(8, args.prompts), seed=0)
    per_task = -(-args.prompts // 4)
    pairs, _ = select_probe_sets(data=data, samples=per_task, seed=0, skip_broken=True, progress=False)
    return attention_prompts(pairs)[: args.prompts]


def compare(a: list[dict], b: list[dict]) -> dict:
    same_tokens = sum(x["response"] == y["response"] for x, y in zip(a, b, strict=True))
    diffs = [float(np.abs(np.asarray(x["mass"]) - np.asarray(y["mass"])).max())
             for x, y in zip(a, b, strict=True) if x["mass"] is not None and y["mass"] is not None]
    return {"prompts": len(a), "same_response": same_tokens, "max_abs_mass_diff": max(diffs) if diffs else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="qwen2.5-vl-7b", help="lineage preset written under --workdir")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/fe_bench_attention"))
    p.add_argument("--base"), p.add_argument("--in", dest="in_"), p.add_argument("--rl")
    p.add_argument("--data", type=Path, default=None, help="vision_probes folder (default: rendered probes)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--check", type=int, default=32, help="prompts of the float32 equality check (0: none)")
    p.add_argument("--members", default="base,in,rl", help="which members to time (default all three)")
    p.add_argument("--cpu-smoke", action="store_true", help="run on the CPU on purpose (never a measurement)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    if not gpu and not args.cpu_smoke:
        print("bench_attention: no CUDA GPU (use --cpu-smoke for a plumbing check)", file=sys.stderr)
        return 2
    device, dtype = ("cuda", "bfloat16") if gpu else ("cpu", "float32")
    args.workdir.mkdir(parents=True, exist_ok=True)
    members = members_of(args)
    wanted = [m for m in args.members.split(",") if m]
    if set(wanted) - set(MEMBERS):
        p.error(f"--members: choose from {', '.join(MEMBERS)}")
    prompts = prompts_of(args)
    new = args.max_new_tokens
    report = {"device": torch.cuda.get_device_name(0) if gpu else "cpu", "torch": torch.__version__,
              "prompts": len(prompts), "max_new_tokens": new, "dtype": dtype, "members": members, "runs": {},
              "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "complete": False}
    totals = {"baseline_s": 0.0, "batched_s": 0.0}
    for member in wanted:
        path = members[member]
        units = _member_units(member, prompts, None)
        gen, load_s = timed(lambda path=path: Generator.load(path, device=device, dtype=dtype))
        gen.decode = "hf"
        run_units(gen, units[:1], new, 1)  # warm-up at the measured shape (one prompt)
        plain_s = plain_one(gen, units[0], new)  # the same prompt, same path, no capture
        base_out, base_s = timed(lambda: run_units(gen, units, new, 1))
        gen.decode = "auto"
        _, cold_s = timed(lambda: run_units(gen, units, new, len(units)))  # warm-up at the measured shape
        batch_out, batch_s = timed(lambda: run_units(gen, units, new, len(units)))
        row = {"load_s": load_s, "baseline_s": base_s, "batched_s": batch_s, "batched_cold_s": cold_s,
               "hf_one_prompt_without_capture_s": plain_s,
               "speedup": base_s / batch_s, "agreement_" + dtype: compare(base_out, batch_out)}
        report["runs"][member] = row
        totals["baseline_s"] += base_s
        totals["batched_s"] += batch_s
        write_json(args.out, report)
        print(f"[bench_attention] {member}: one at a time {base_s:.1f} s, batched {batch_s:.1f} s "
              f"({base_s / batch_s:.1f}x; cold batched {cold_s:.1f} s), load {load_s:.1f} s; one prompt without "
              f"the capture {plain_s:.2f} s (with: {base_s / len(units):.2f} s)", flush=True)
        del gen
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
    report["total"] = {**totals, "speedup": totals["baseline_s"] / totals["batched_s"]}
    if args.check:
        write_json(args.out, report)
        gen = Generator.load(members["rl"], device=device, dtype="float32")
        units = _member_units("rl", prompts[: args.check], None)
        gen.decode = "hf"
        one = run_units(gen, units, new, 1)
        gen.decode = "auto"
        batched = run_units(gen, units, new, len(units))
        report["float32_check"] = compare(one, batched)
        del gen
    report["complete"] = wanted == list(MEMBERS)
    write_json(args.out, report)
    t = report["total"]
    print(f"\n| {len(prompts)} prompts x {len(wanted)} models, {new} tokens, {dtype}, {report['device']} | seconds |\n"
          f"|---|---:|\n| (a) one prompt at a time, model.generate + hooks | {t['baseline_s']:.1f} |\n"
          f"| (b) batched, static decoder capture | {t['batched_s']:.1f} |\n| speed-up | {t['speedup']:.1f}x |")
    if "float32_check" in report:
        c = report["float32_check"]
        print(f"float32 check (rl, {c['prompts']} prompts): same responses {c['same_response']} / {c['prompts']}, "
              f"largest mass difference {c['max_abs_mass_diff']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
