"""attention-shift's capture, batched on the static decoder vs one prompt at a time through ``model.generate``.

    python bench/bench_attention.py --preset qwen2.5-vl-7b --workdir /tmp/ba --data DATA/vision_probes --out a.json
    python bench/bench_attention.py --base B --in I --rl R --data DATA/vision_probes --out a.json   # a lineage at hand
    python bench/bench_attention.py --preset tiny --workdir /tmp/ba --prompts 4 --max-new-tokens 8 --cpu-smoke \\
        --out /tmp/ba/out.json                                                        # CPU plumbing check only

Issue 32's comparison: ``--prompts`` (32) probe target images with attention-shift's prompt (the step-by-step
instruction), each member (Base, IN, RL) generating ``--max-new-tokens`` (256) greedy tokens with
``CaptureAttention(query="generated")``, exactly as ``frankeneval attention-shift`` does (its executor), in one
process, bfloat16, three ways:

(b) the batched path: ``decode="auto"``, all prompts in one call (the capture inside the static decoder's step,
    CUDA graph on a GPU);
(a16) how attention-shift ran before the static decoder captured attention (e95975c): ``decode="hf"``, the hooked
    forward inside ``model.generate``, ``--old-batch`` (16, that command's default) prompts a call;
(a1) the same one prompt per call (the issue's description of the baseline; ``--skip-one-at-a-time`` leaves it
    out: at 7B it takes about 350 s a member).

Each is warmed up at the shape it is measured at (b: the whole batch once, reported as the cold call), model loads
are timed apart, and the JSON is rewritten after each member. Then the equality check in float32 (RL only,
``--check`` prompts, one at a time vs batched): the generated tokens and each prompt's per-layer, per-head mean
mass, largest absolute difference reported (the unit test's tolerance is 1e-5). Random weights (a written lineage):
time and agreement only. Writes ``--out`` (JSON) and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

from frankeneval.core.results import write_json_atomic
from frankeneval.engine.generation import Generator
from frankeneval.localization.attention import _executor, _member_units, attention_prompts
from frankeneval.localization.vision import select_probe_sets
from frankeneval.miniature.lineage import write_lineage
from frankeneval.miniature.world import write_vision_probes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import code_commit  # noqa: E402

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
    write_json_atomic(path, report, indent=1)


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
    p.add_argument("--old-batch", type=int, default=16, help="prompts a call of the pre-capture baseline (a16)")
    p.add_argument("--skip-one-at-a-time", action="store_true", help="leave out baseline (a1)")
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
              **code_commit(),
              "complete": False}
    ways = {"batched": ("auto", None), f"hf_batch{args.old_batch}": ("hf", args.old_batch)}
    if not args.skip_one_at_a_time:
        ways["one_at_a_time"] = ("hf", 1)
    totals = dict.fromkeys(ways, 0.0)
    for member in wanted:
        path = members[member]
        units = _member_units(member, prompts, None)
        gen, load_s = timed(lambda path=path: Generator.load(path, device=device, dtype=dtype))
        row: dict = {"load_s": load_s}
        outs = {}
        for way, (decode, per_call) in ways.items():
            gen.decode = decode
            per_call = per_call or len(units)
            _, cold_s = timed(lambda: run_units(gen, units[:per_call], new, per_call))  # warm-up at this shape
            outs[way], row[f"{way}_s"] = timed(lambda: run_units(gen, units, new, per_call))
            row[f"{way}_cold_s"] = cold_s
            if way != "batched":
                row[f"speedup_vs_{way}"] = row[f"{way}_s"] / row["batched_s"]
                row[f"agreement_{way}_{dtype}"] = compare(outs[way], outs["batched"])
            totals[way] += row[f"{way}_s"]
            report["runs"][member] = row
            write_json(args.out, report)
        gen.decode = "hf"
        row["hf_one_prompt_without_capture_s"] = plain_one(gen, units[0], new)  # what the hooks cost
        write_json(args.out, report)
        print(f"[bench_attention] {member}: " + ", ".join(f"{w} {row[w + '_s']:.1f} s" for w in ways)
              + f"; load {load_s:.1f} s; hf one prompt without the capture {row['hf_one_prompt_without_capture_s']:.2f}"
              " s", flush=True)
        del gen
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
    report["total"] = {**{f"{w}_s": t for w, t in totals.items()},
                       **{f"speedup_vs_{w}": t / totals["batched"] for w, t in totals.items() if w != "batched"}}
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
    print(f"\n| {len(prompts)} prompts x {len(wanted)} models, {new} tokens, {dtype}, {report['device']} | seconds | "
          "batched is faster by |\n|---|---:|---:|")
    for w in ways:
        print(f"| {w} | {t[w + '_s']:.1f} | " + (f"{t['speedup_vs_' + w]:.1f}x |" if w != "batched" else "– |"))
    if "float32_check" in report:
        c = report["float32_check"]
        print(f"float32 check (rl, {c['prompts']} prompts): same responses {c['same_response']} / {c['prompts']}, "
              f"largest mass difference {c['max_abs_mass_diff']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
