"""Does decode="compiled" give decode="auto"'s tokens on a full-size lineage? (issue 32: the compiled step's speed is
claimed only where its tokens are right.)

    python bench/check_compiled.py --model /tmp/accept/lineage/rl --out /tmp/cc.json        # GPU: float32, bfloat16
    python bench/check_compiled.py --model <tiny>/rl --device cpu --rows 4 --tokens 8 --out x.json  # plumbing only

For each --dtypes entry, one Generator on the same --rows fresh --image-size px image prompts (bench_generate's
make_requests, seeded), --tokens new tokens with EOS ignored, greedy: decode="auto" then decode="compiled" (its cold
call compiles), then plain ``model.generate`` with ``output_scores`` on the same encoded batch for the top-1 minus
top-2 logit margin at every step. Reports equal rows, each row's common prefix, and the margin at the step where a
row first differs (random weights have near-flat logits; a difference at a near-tie is rounding, a difference at a
wide margin is a bug). float32 is the invariant the tests hold (tests/test_compiled_decode.py); bfloat16 is reported.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import make_requests  # noqa: E402
from provenance import code_commit  # noqa: E402

from frankeneval.core.results import write_json_atomic  # noqa: E402
from frankeneval.engine.generation import Generator  # noqa: E402


def prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def margins(gen: Generator, reqs, tokens: int) -> list[list[float]]:
    """Per row, per step: top-1 minus top-2 logit of plain ``model.generate`` (greedy, EOS ignored)."""
    inputs = gen.encode(reqs)
    with torch.inference_mode():
        out = gen.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=gen.tokenizer.pad_token_id)
    per_step = [torch.topk(s.float(), 2, dim=-1).values for s in out.scores]  # [rows, 2] each
    return [[float(v[r, 0] - v[r, 1]) for v in per_step] for r in range(len(reqs))]


def check(model: str, dtype: str, device: str, reqs, tokens: int) -> dict:
    gen = Generator.load(model, dtype=dtype, device=device)
    out, secs = {}, {}
    for mode in ("auto", "compiled"):
        gen.decode = mode
        t = time.perf_counter()
        out[mode] = [r.token_ids for r in gen.generate(reqs, max_new_tokens=tokens, batch_size=len(reqs),
                                                       ignore_eos=True)]
        secs[mode] = round(time.perf_counter() - t, 2)
    gen.decode = "auto"
    marg = margins(gen, reqs, tokens)
    rows = []
    for i, (a, c) in enumerate(zip(out["auto"], out["compiled"], strict=True)):
        p = prefix(a, c)
        rows.append({"row": i, "common_prefix": p, "equal": a == c,
                     "margin_at_first_difference": None if a == c or p >= len(marg[i]) else round(marg[i][p], 4)})
    flat = sorted(m for r in marg for m in r)
    res = {"dtype": dtype, "rows": len(reqs), "tokens": tokens, "equal_rows": sum(r["equal"] for r in rows),
           "seconds_first_call": secs, "margin_median": round(flat[len(flat) // 2], 4),
           "margin_p10": round(flat[len(flat) // 10], 4), "per_row": rows}
    del gen
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a checkpoint folder (e.g. the acceptance lineage's rl/)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--image-size", type=int, default=336)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="JSON, rewritten after each dtype")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("check_compiled: no CUDA GPU (use --device cpu for a plumbing check)", file=sys.stderr)
        return 2
    reqs = make_requests(args.rows, args.image_size, args.seed)
    report = {"command": " ".join(sys.argv), "model": args.model, "date": time.strftime("%Y-%m-%d %H:%M UTC",
              time.gmtime()), "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, **code_commit(), "checks": []}
    for dtype in [d for d in args.dtypes.split(",") if d]:
        res = check(args.model, dtype, args.device, reqs, args.tokens)
        report["checks"].append(res)
        diffs = [r["margin_at_first_difference"] for r in res["per_row"] if not r["equal"]]
        print(f"[check_compiled] {dtype}: compiled = auto in {res['equal_rows']} / {res['rows']} rows of "
              f"{args.tokens} tokens; margins at the first differences {diffs}; all margins median "
              f"{res['margin_median']}, 10th percentile {res['margin_p10']}", flush=True)
        write_json_atomic(args.out, report, indent=1)  # after each dtype: a call's limit keeps what ran
    return 0


if __name__ == "__main__":
    sys.exit(main())
