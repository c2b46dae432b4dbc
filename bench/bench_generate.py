"""Generation throughput of frankeneval's Generator: batch_size=auto vs unbatched, same prompts.

    python bench/bench_generate.py --preset qwen2.5-vl-7b --workdir /tmp/fe_bench      # GPU
    python bench/bench_generate.py --preset tiny --workdir /tmp/fe_bench_tiny           # CPU smoke run

Writes one random member (``rl``) of the preset's lineage (reused if present), then generates
``--n-prompts`` prompts with a small image each, exactly ``--max-new-tokens`` tokens per prompt (EOS ignored,
no stop strings, greedy), once with ``batch_size="auto"`` and once one prompt at a time; checks that the
first ``--check`` outputs agree token for token, prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from frankeneval.engine.generation import Generator, GenRequest
from frankeneval.miniature.lineage import write_lineage


def make_requests(n: int, image_size: int, seed: int = 0) -> list[GenRequest]:
    rng = np.random.RandomState(seed)
    questions = ["What is in this image?", "Describe the picture in detail.", "Count the objects.",
                 "What colour dominates?"]
    return [
        GenRequest(questions[i % len(questions)] + f" (item {i})",
                   [Image.fromarray(rng.randint(0, 256, (image_size, image_size, 3), dtype=np.uint8))])
        for i in range(n)
    ]


def timed(gen: Generator, reqs, **kwargs) -> tuple[list, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = gen.generate(reqs, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="lineage preset: tiny | qwen2.5-vl-3b | qwen2.5-vl-7b")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--n-prompts", type=int, default=None, help="default 64 (16 for tiny)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (16 for tiny)")
    p.add_argument("--image-size", type=int, default=None, help="square image side in pixels (default 336; 112 tiny)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--unbatched-prompts", type=int, default=None,
                   help="time batch 1 on the first N prompts only (tokens/s is per token)")
    p.add_argument("--check", type=int, default=4, help="prompts whose outputs must agree between the two runs")
    p.add_argument("--attn-implementation", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    tiny = args.preset == "tiny"
    n = args.n_prompts or (16 if tiny else 64)
    max_new = args.max_new_tokens or (16 if tiny else 128)
    size = args.image_size or (112 if tiny else 336)
    lineage = write_lineage(args.workdir, preset=args.preset, members=("rl",), progress=True)
    gen = Generator.load(str(lineage.rl), dtype="auto", attn_implementation=args.attn_implementation,
                         max_batch_size=args.max_batch_size)
    reqs = make_requests(n, size)
    common = dict(max_new_tokens=max_new, ignore_eos=True, do_sample=False)

    gen.generate(reqs[:2], max_new_tokens=2, batch_size=2)  # warm-up (kernels, allocator)
    batched, t_batched = timed(gen, reqs, batch_size="auto", **common)
    n_single = min(n, args.unbatched_prompts or n)
    single, t_single = timed(gen, reqs[:n_single], batch_size=1, **common)

    tok_batched = sum(len(r.token_ids) for r in batched)
    tok_single = sum(len(r.token_ids) for r in single)
    k = min(args.check, n_single)
    agree = [batched[i].token_ids == single[i].token_ids for i in range(k)]
    # bf16 batched kernels may round differently: also report the common prefix length
    prefix = [next((j for j, (a, b) in enumerate(zip(batched[i].token_ids, single[i].token_ids)) if a != b), max_new)
              for i in range(k)]
    rows = [
        ("auto (chosen %d)" % (gen._auto_batch_size or 0), n, tok_batched, t_batched, tok_batched / t_batched),
        ("1 (unbatched)", n_single, tok_single, t_single, tok_single / t_single),
    ]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"\nGenerator throughput -- preset {args.preset}, {device}, {n} prompts, image {size}px, "
          f"{max_new} new tokens each")
    print(f"{'batch size':<18}{'prompts':>8}{'tokens':>9}{'seconds':>10}{'tokens/s':>11}")
    for name, np_, tok, sec, tps in rows:
        print(f"{name:<18}{np_:>8}{tok:>9}{sec:>10.2f}{tps:>11.1f}")
    speedup = rows[0][4] / rows[1][4]
    print(f"speed-up: {speedup:.2f}x; greedy outputs identical on {sum(agree)}/{k} checked prompts "
          f"(common prefix lengths {prefix})")
    result = {
        "preset": args.preset, "device": device, "dtype": str(gen.model.dtype), "n_prompts": n, "image_size": size,
        "max_new_tokens": max_new, "auto_batch_size": gen._auto_batch_size,
        "batched": {"prompts": n, "tokens": tok_batched, "seconds": t_batched, "tokens_per_s": rows[0][4]},
        "unbatched": {"prompts": n_single, "tokens": tok_single, "seconds": t_single, "tokens_per_s": rows[1][4]},
        "speedup": speedup, "outputs_identical": agree, "common_prefix": prefix,
        "torch": torch.__version__,
    }
    out = args.out or args.workdir / f"bench_generate_{args.preset}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
