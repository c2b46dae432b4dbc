"""The transfer matrix's prompt shape (issue 32): MathVista images at their recorded sizes, a heavy tail of visual
tokens (testmini: median 252, 90th percentile 975, largest 16,224 under Qwen2.5-VL's default pixel limits). A
continuous run attends over one cache window for every row; this measures the window policy side by side in one
process, with the same requests:

* ``shrink``: today's Generator: requests longest first by visual tokens, and the window cut once the long prompts
  are answered (``ContinuousDecoder.SHRINK``);
* ``grow_only``: the window as before (``SHRINK`` off, it only grows) and the order as before (image count, then
  text length: the visual-token estimate patched to 0).

    python bench/bench_window.py --model /tmp/accept/lineage/rl --testmini .devdata/mathvista/testmini.jsonl \
        --out /tmp/bw/window.json                                                    # GPU, about 6 min at 7B
    python bench/bench_window.py --model <tiny>/rl --testmini ../shared/data/mathvista/testmini.jsonl \
        --prompts 12 --tokens 8 --batch-size 4 --max-side 112 --out /tmp/bw.json     # CPU plumbing, not a measurement

Requests: --prompts rows of testmini (seeded draw), each its question and one random-pixel image at the row's
recorded size (``metadata.img_width`` / ``img_height``; --max-side scales larger ones down, for CPU smoke runs),
--tokens new tokens with EOS ignored (random weights), greedy, --batch-size rows (``auto``: the Generator's own,
settled in the warm-up and then fixed for both ways). A warm-up call runs both ways once on other rows first. Per
way: seconds, useful tokens/s, the window lengths it went through, peak GPU memory, and whether its tokens equal
the other way's (bf16: reported, not required; float32 equality is in tests/test_continuous.py). JSON after each
way (atomic).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import code_commit  # noqa: E402

import frankeneval.engine.continuous as continuous_mod  # noqa: E402
from frankeneval.core.results import write_json_atomic  # noqa: E402
from frankeneval.engine.encoding import visual_token_count  # noqa: E402
from frankeneval.engine.generation import Generator, GenRequest  # noqa: E402


def testmini_requests(path: Path, n: int, seed: int, max_side: int | None) -> list[GenRequest]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.choice(len(rows), size=min(n, len(rows)), replace=False):
        meta = rows[i].get("metadata") or {}
        w, h = int(meta.get("img_width") or 336), int(meta.get("img_height") or 336)
        if max_side and max(w, h) > max_side:
            w, h = max(28, w * max_side // max(w, h)), max(28, h * max_side // max(w, h))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out.append(GenRequest(str(rows[i].get("query") or rows[i].get("question") or "What is shown?"),
                              [Image.fromarray(pixels)]))
    return out


class Windows:
    """Records every cache resize of the continuous decoder: (old length, new length)."""

    def __init__(self):
        self.seen: list[tuple[int, int]] = []
        real = continuous_mod.ContinuousDecoder._resize
        windows = self

        def resize(decoder, length):
            windows.seen.append((int(decoder.keys[0].shape[2]), int(length)))
            return real(decoder, length)

        continuous_mod.ContinuousDecoder._resize = resize


def run_way(gen: Generator, name: str, reqs, tokens: int, batch: int, windows: Windows) -> tuple[dict, list]:
    shrink = name == "shrink"
    continuous_mod.ContinuousDecoder.SHRINK = shrink
    if shrink:
        gen.__dict__.pop("_visual_tokens", None)
    else:
        gen._visual_tokens = lambda request: 0  # the order before: image count, then text length
    windows.seen.clear()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = gen.generate(reqs, max_new_tokens=tokens, ignore_eos=True, batch_size=batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    useful = sum(len(r.token_ids) for r in out)
    return {"seconds": round(seconds, 2), "useful_tokens": useful, "tok_s": round(useful / seconds, 1),
            "windows": list(windows.seen),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available()
            else None}, [r.token_ids for r in out]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a checkpoint folder (e.g. the acceptance lineage's rl/)")
    p.add_argument("--testmini", required=True, type=Path, help="MathVista testmini.jsonl (rows with metadata)")
    p.add_argument("--prompts", type=int, default=512)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--batch-size", default="auto")
    p.add_argument("--max-side", type=int, default=None, help="scale larger images down to this side (CPU smoke)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    gen = Generator.load(args.model, device="cuda" if gpu else "cpu", dtype="bfloat16" if gpu else "float32")
    reqs = testmini_requests(args.testmini, args.prompts, args.seed, args.max_side)
    visual = sorted(sum(visual_token_count(gen.processor, im.size) for im in r.images) for r in reqs)
    windows = Windows()
    # warm-up on other rows: kernels, graphs and the auto batch size (then fixed, so both ways run the same rows)
    warm = testmini_requests(args.testmini, min(len(reqs), 64), args.seed + 1, args.max_side)
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    for name in ("shrink", "grow_only"):
        run_way(gen, name, warm, min(args.tokens, 32), batch, windows)
    batch = int(gen._auto_batch_size or len(reqs)) if batch == "auto" else batch
    record = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(0) if gpu else "CPU",
              **code_commit(), "date": time.strftime("%Y-%m-%d"), "prompts": len(reqs), "tokens": args.tokens,
              "batch": batch, "visual_tokens": {"median": visual[len(visual) // 2], "max": visual[-1],
                                                 "mean": round(float(np.mean(visual)), 1)},
              "ways": {}, "complete": False}
    print(f"{record['gpu']}: {len(reqs)} testmini-shaped prompts (visual tokens median {visual[len(visual) // 2]}, "
          f"max {visual[-1]}), {args.tokens} tokens, batch {batch}", flush=True)
    tokens = {}
    for name in ("shrink", "grow_only"):
        record["ways"][name], tokens[name] = run_way(gen, name, reqs, args.tokens, batch, windows)
        w = record["ways"][name]
        print(f"  {name:<10} {w['seconds']:8.1f} s {w['tok_s']:9.1f} useful tok/s, windows {w['windows'][:8]}"
              f"{' ...' if len(w['windows']) > 8 else ''}", flush=True)
        write_json_atomic(args.out, record, indent=1)
    record["equal_rows"] = sum(a == b for a, b in zip(tokens["shrink"], tokens["grow_only"], strict=True))
    record["speedup"] = round(record["ways"]["grow_only"]["seconds"] / record["ways"]["shrink"]["seconds"], 3)
    record["complete"] = True
    write_json_atomic(args.out, record, indent=1)
    print(f"shrink vs grow_only: {record['speedup']:.2f}x; equal rows {record['equal_rows']} / {len(reqs)}")
    continuous_mod.ContinuousDecoder.SHRINK = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
