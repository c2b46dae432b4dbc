"""Realistic answer lengths (issue 32): useful tokens per second of the static path, the continuous path and plain
``generate``, side by side in one process, on requests whose lengths are forced to a seeded draw.

    python bench/bench_lengths.py --preset qwen2.5-vl-7b --workdir /tmp/fe_bench --draw lognormal     # GPU
    python bench/bench_lengths.py --preset qwen2.5-vl-7b --workdir /tmp/fe_bench --draw recorded \
        --recorded ../shared/data/mathvista/recorded
    python bench/bench_lengths.py --preset tiny --workdir /tmp/fe_bench_tiny --n-prompts 12 --rows 4 --cap 64  # CPU

Each request's length is drawn once (seeded) and forced the same way on every path, EOS otherwise ignored (random
weights never stop on their own):

* ``lognormal``: a log-normal with median ``--median`` (600) tokens and sigma ``--sigma`` (1.0), capped at ``--cap``
  (8192; about 2 % at the cap with these values);
* ``recorded``: the answer lengths of the recorded MathVista responses (``--recorded`` folder, ``*.jsonl`` with a
  ``response`` field), tokenized with the model's tokenizer, drawn with replacement, capped at ``--cap``.

Paths, all greedy, ``--rows`` rows at a time, warmed up first at that batch shape:

* ``static``: ``Generator`` with ``continuous=False``: batches of ``--rows`` requests, each batch as long as its
  longest request (finished rows keep their slots);
* ``continuous``: ``Generator`` (the default): a finished row is refilled from the queue;
* ``generate``: plain ``model.generate`` on the processor's batches of ``--rows``, each row's EOS forced at its
  drawn step by a logits processor;
* ``fixed``: the continuous path's row count at one fixed length (the draw's median), the yardstick of the
  issue's goal (useful tokens/s >= 70 % of it).

Every path gets fresh images of the same size (the prompt encoder caches images by content). Useful tokens are the
drawn lengths' sum (never padding). Prints a table and writes JSON (``--out``) with the
command, GPU, commit and date.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from frankeneval.core.results import write_json_atomic
from frankeneval.engine.generation import Generator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import make_requests  # noqa: E402
from provenance import code_commit  # noqa: E402


def draw_lengths(args, tokenizer, n: int) -> list[int]:
    rng = np.random.default_rng(args.seed)
    if args.draw == "lognormal":
        lengths = np.exp(np.log(args.median) + args.sigma * rng.standard_normal(n))
        return [int(min(max(1, round(x)), args.cap)) for x in lengths]
    pool = []
    for path in sorted(Path(args.recorded).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                text = json.loads(line).get("response") or ""
                if text:
                    pool.append(len(tokenizer(text)["input_ids"]))
    if not pool:
        raise SystemExit(f"no responses under {args.recorded}")
    return [int(min(max(1, pool[i]), args.cap)) for i in rng.integers(0, len(pool), n)]


class ForceEOS:
    """A logits processor: row ``r`` of the batch emits EOS at its drawn step (then generate pads it)."""

    def __init__(self, lengths: list[int], eos: int, prompt_len: int):
        self.lengths, self.eos, self.prompt_len = torch.tensor(lengths), eos, prompt_len

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len  # tokens generated so far
        stop = (self.lengths.to(scores.device) - 1) <= step
        if bool(stop.any()):
            scores[stop] = float("-inf")
            scores[stop, self.eos] = 0.0
        return scores


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_generator(gen: Generator, reqs, lengths, rows: int, continuous: bool) -> float:
    gen.continuous = continuous
    sync()
    t0 = time.perf_counter()
    out = gen.generate(reqs, max_new_tokens=lengths, ignore_eos=True, batch_size=rows)
    sync()
    seconds = time.perf_counter() - t0
    assert [len(r.token_ids) for r in out] == lengths, "a path did not produce the drawn lengths"
    return seconds


def run_plain(gen: Generator, reqs, lengths, rows: int) -> float:
    from transformers import GenerationConfig, LogitsProcessorList

    eos = sorted(gen._eos_ids())[0]
    sync()
    t0 = time.perf_counter()
    for lo in range(0, len(reqs), rows):
        part, budget = reqs[lo : lo + rows], lengths[lo : lo + rows]
        inputs = gen.encode(part)
        cfg = GenerationConfig(max_new_tokens=max(budget), do_sample=False, top_k=0, eos_token_id=[eos],
                               pad_token_id=gen._pad_id(), repetition_penalty=1.0)
        with torch.inference_mode():
            gen.model.generate(**inputs, generation_config=cfg, logits_processor=LogitsProcessorList(
                [ForceEOS(budget, eos, inputs["input_ids"].shape[1])]))
    sync()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="lineage preset: tiny | qwen2.5-vl-3b | qwen2.5-vl-7b")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--model", default=None, help="a checkpoint folder instead of the preset's random member")
    p.add_argument("--draw", choices=("lognormal", "recorded"), default="lognormal")
    p.add_argument("--recorded", default="../shared/data/mathvista/recorded")
    p.add_argument("--median", type=float, default=600.0)
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--cap", type=int, default=8192)
    p.add_argument("--n-prompts", type=int, default=256)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--image-size", type=int, default=336)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", default="", help="comma-separated paths not to run (static, continuous, generate, fixed)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = args.model
    if model is None:
        from frankeneval.miniature.lineage import write_lineage

        model = str(write_lineage(args.workdir / args.preset, preset=args.preset, members=("rl",)).rl)
    gen = Generator.load(model, device=device, dtype="bfloat16" if device == "cuda" else "float32")
    reqs = make_requests(args.n_prompts, args.image_size, seed=args.seed)
    lengths = draw_lengths(args, gen.tokenizer, len(reqs))
    useful = sum(lengths)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    # warm up at the measured batch shape (graphs, kernels, the encoder's caches are per call)
    warm = make_requests(args.rows, args.image_size, seed=args.seed + 1)
    gen.generate(warm, max_new_tokens=32, ignore_eos=True, batch_size=args.rows)
    rows = {}
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    record = {"command": " ".join(sys.argv), "gpu": gpu, **code_commit(), "date": time.strftime("%Y-%m-%d"),
              "draw": args.draw, "n": len(reqs), "rows": args.rows, "lengths": {
                  "median": float(np.median(lengths)), "mean": float(np.mean(lengths)), "max": max(lengths),
                  "at_cap": sum(x >= args.cap for x in lengths)}, "paths": rows, "complete": False}
    print(f"{gpu}: {len(reqs)} requests, {args.rows} rows, draw {args.draw} (median {record['lengths']['median']:.0f},"
          f" max {record['lengths']['max']}, {record['lengths']['at_cap']} at the cap)", flush=True)
    # the goal's two paths first (minutes), then the slow baselines (each batch runs to its longest row); the JSON
    # is rewritten after every path, so a run stopped by a call's limit keeps what it measured
    order = ("continuous", "fixed", "static", "generate")
    for name in order:
        if name in skip:
            continue
        k = ("static", "continuous", "generate", "fixed").index(name)  # the image seed of each path, as before
        # fresh images for every path (same count, size and lengths): no path reads another's encoder cache
        reqs = make_requests(args.n_prompts, args.image_size, seed=args.seed + 10 + k)
        if name == "fixed":
            fixed = [int(np.median(lengths))] * len(reqs)
            seconds = run_generator(gen, reqs, fixed, args.rows, True)
            rows[name] = {"seconds": seconds, "tokens": sum(fixed), "tok_s": sum(fixed) / seconds}
        else:
            seconds = (run_plain(gen, reqs, lengths, args.rows) if name == "generate"
                       else run_generator(gen, reqs, lengths, args.rows, name == "continuous"))
            rows[name] = {"seconds": seconds, "tokens": useful, "tok_s": useful / seconds}
        if "continuous" in rows and "fixed" in rows:
            record["continuous_vs_fixed"] = rows["continuous"]["tok_s"] / rows["fixed"]["tok_s"]
        record["complete"] = all(n in rows or n in skip for n in order)
        print(f"  {name:<11} {rows[name]['seconds']:8.1f} s  {rows[name]['tok_s']:9.0f} useful tok/s", flush=True)
        if args.out:
            write_json_atomic(args.out, record, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
