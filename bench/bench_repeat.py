"""Are greedy answers repeatable on one GPU? The same call twice in one process, and in two processes (issue 21).

    python bench/bench_repeat.py --model LINEAGE/rl --out repeat.json [--dtype bfloat16] [--rows 64] [--tokens 64]

For each decode path (``auto``: the static decoder with CUDA graphs; ``hf``: ``model.generate``) the same batch of
``--rows`` image prompts is generated twice in this process; ``--child`` runs the same batch once more in a fresh
process (what two transfer cells or two GPUs do) and compares. Also batch-invariance: the first 16 rows generated
one at a time against the batched run (bf16 differs by design there: the GEMM shapes change with the batch). Writes
the counts of rows with identical token ids, and the first token where any row differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def prompts(n: int):
    from bench_speed import make_requests  # the speed bench's 336 px random-image prompts (this folder)

    return make_requests(n, 336, seed=0)


def run(model: str, dtype: str, rows: int, tokens: int, decode: str) -> list[list[int]]:
    from frankeneval.engine.generation import Generator

    gen = Generator.load(model, dtype=dtype, decode=decode)
    res = gen.generate(prompts(rows), max_new_tokens=tokens, ignore_eos=True, batch_size=rows)
    return [r.token_ids for r in res]


def same(a: list[list[int]], b: list[list[int]]) -> dict:
    equal = sum(x == y for x, y in zip(a, b))
    first = [next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), None) for x, y in zip(a, b)]
    diffs = [f for f in first if f is not None]
    return {"rows": len(a), "identical": equal, "first_difference_at": min(diffs) if diffs else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # decode mode: print one run's tokens as JSON
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run(args.model, args.dtype, args.rows, args.tokens, args.child)))
        return 0
    import torch

    from frankeneval.engine.generation import Generator

    result = {"model": args.model, "dtype": args.dtype, "rows": args.rows, "tokens": args.tokens,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "date": time.strftime("%Y-%m-%d")}
    gen = Generator.load(args.model, dtype=args.dtype)
    reqs = prompts(args.rows)
    for decode in ("auto", "hf"):
        gen.decode = decode
        a = [r.token_ids for r in gen.generate(reqs, max_new_tokens=args.tokens, ignore_eos=True, batch_size=args.rows)]
        b = [r.token_ids for r in gen.generate(reqs, max_new_tokens=args.tokens, ignore_eos=True, batch_size=args.rows)]
        child = subprocess.run([sys.executable, __file__, "--model", args.model, "--dtype", args.dtype, "--rows",
                                str(args.rows), "--tokens", str(args.tokens), "--child", decode],
                               capture_output=True, text=True, check=True)
        c = json.loads(child.stdout.strip().splitlines()[-1])
        single = [gen.generate([r], max_new_tokens=args.tokens, ignore_eos=True, batch_size=1)[0].token_ids
                  for r in reqs[:16]]
        result[decode] = {"twice_in_one_process": same(a, b), "another_process": same(a, c),
                          "batched_vs_alone_16": same(a[:16], single)}
        print(decode, json.dumps(result[decode]), flush=True)
        result[decode + "_tokens"] = a
    gen.decode = "auto"
    result["auto_vs_hf"] = same(result["auto_tokens"], result["hf_tokens"])
    del result["auto_tokens"], result["hf_tokens"]
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
