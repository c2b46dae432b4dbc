"""The transfer matrix's prompt shape (issue 32): the continuous decoder's window policy and request order, side by
side in one process, on the requests the transfer actually sends.

The MathVista tasks show an image at the paper's size (``paper_image_size``: at most 1280 x 720 = 921,600 pixels),
so a transfer prompt brings at most about 1,200 visual tokens (testmini: median 252, 90th percentile 966, mean 328).
At the processor's own limits (``--sizes recorded``) the largest testmini image brings 16,224. Ways:

* ``new``: today's Generator: requests longest first by their prompt slots (text tokens + visual tokens), and the
  cache window cut once it is 1.5 times what the live rows need (``ContinuousDecoder.SHRINK``);
* ``visual``: the policy of 6891b04 to 252aabb (the acceptance run's first three variants): the order by image
  count, the images' visual tokens, then text length, and the window cut only once it is four times the need;
* ``old``: the policy of 0c42a82 and before (the acceptance run's Base / IN / RL): the order by image count, then
  text length, and a window that only grows;
* ``visual_order_grow_only`` (``--ways``): the visual order with the old window.

Requests, one of:

* ``--samples DIR``: a transfer's own requests, replayed: every ``*samples_*.jsonl`` under DIR (e.g. one model's
  ``transfer/cells/<model>``), or the file that ``--samples DIR --save-requests FILE`` wrote (0.9 MB for a model's
  1,364 requests: small enough to carry). Each request: the prompt text lmms-eval built (``input``), the row's image
  at the paper's size (random pixels, as the acceptance's synthetic images), black for the ``_black`` /
  ``_blackdesc`` controls, none for MATH-500; the system prompt ``--system`` (``reasoner``, as the transfer's cells;
  a saved file keeps the one given when it was saved). Image sizes come from
  ``--testmini`` (the rows' recorded sizes).
* else ``--testmini`` rows (a seeded draw of ``--prompts``): the query and one random-pixel image at the row's size,
  ``--sizes paper`` (default, as the tasks show it) or ``recorded``; ``--max-side`` scales larger ones down (CPU).

Each request runs ``--tokens`` new tokens with EOS ignored (random weights), greedy, ``--batch-size`` rows (``auto``:
settled in the warm-up, then fixed for every way). A warm-up runs every way once on other requests. Then the ways run
``--repeats`` times in alternating order (A B B A ...), so a drift of the machine falls on both. Per run: seconds,
useful tokens/s, the window lengths it went through, peak GPU memory; per way, whether its tokens equal the first
way's (bf16: reported, not required; float32 equality is in tests/test_continuous.py). JSON after each run (atomic).

    python bench/bench_window.py --samples /tmp/s09/transfer/cells/base --system reasoner \\
        --save-requests .devdata/transfer_requests.jsonl                          # CPU: Base's 1,364 requests, 0.9 MB
    python bench/bench_window.py --model /tmp/accept/lineage/rl --testmini .devdata/mathvista/testmini.jsonl \\
        --samples .devdata/transfer_requests.jsonl --prompts 512 --out /tmp/bw/window.json   # GPU, about 8 min at 7B
    python bench/bench_window.py --model <tiny>/rl --testmini ../shared/data/mathvista/testmini.jsonl \\
        --prompts 12 --tokens 8 --batch-size 4 --max-side 112 --out /tmp/bw.json     # CPU plumbing, not a measurement
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frankeneval.tasks.mathvista.utils import black_image, paper_image_size  # noqa: E402
from provenance import code_commit  # noqa: E402

import frankeneval.engine.continuous as continuous_mod  # noqa: E402
from frankeneval.core.results import read_jsonl, write_json_atomic  # noqa: E402
from frankeneval.engine.encoding import visual_token_count  # noqa: E402
from frankeneval.engine.generation import Generator, GenRequest  # noqa: E402
from frankeneval.evaluation.prompts import resolve_system_prompt  # noqa: E402

# way -> (request order, window shrink): "slots" / "today" are the Generator's own; the others re-create older code
WAYS = {"new": ("slots", "today"), "visual": ("visual", "x4"), "old": ("text", None),
        "visual_order_grow_only": ("visual", None)}


def _order_visual(gen: Generator, requests) -> list[int]:
    """6891b04 to 252aabb: image count, the images' visual tokens, then text length."""
    return sorted(range(len(requests)), key=lambda i: (-len(requests[i].images), -gen._visual_tokens(requests[i]),
                                                       -len(requests[i].prompt)))


def _order_text(gen: Generator, requests) -> list[int]:
    """0c42a82 and before: image count, then text length."""
    return sorted(range(len(requests)), key=lambda i: (-len(requests[i].images), -len(requests[i].prompt)))


def _shrink_x4(decoder, n: int) -> None:
    """6891b04 to 252aabb: cut the window to twice what the live rows need once it is four times that."""
    if decoder.mass is not None:
        return
    need = decoder._live_length() + n + decoder.check_every
    if 4 * max(need, decoder.GROW_TOKENS) > decoder.keys[0].shape[2]:
        return
    decoder._move(decoder._live_length())
    decoder._resize(2 * max(need, decoder.GROW_TOKENS))


_SHRINK_TODAY = continuous_mod.ContinuousDecoder._shrink


def _scaled(w: int, h: int, sizes: str, max_side: int | None) -> tuple[int, int]:
    if sizes == "paper":
        w, h = paper_image_size(w, h)
    if max_side and max(w, h) > max_side:
        w, h = max(28, w * max_side // max(w, h)), max(28, h * max_side // max(w, h))
    return w, h


def _noise(rng, w: int, h: int):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _recorded_size(row: dict) -> tuple[int, int]:
    meta = row.get("metadata") or {}
    return int(meta.get("img_width") or 336), int(meta.get("img_height") or 336)


def recorded_sizes(testmini: Path) -> dict[str, tuple[int, int]]:
    """image file name -> (width, height) recorded in testmini's metadata."""
    return {Path(str(row.get("image"))).name: _recorded_size(row) for row in read_jsonl(testmini)}


def testmini_requests(path: Path, n: int, seed: int, sizes: str, max_side: int | None) -> list[GenRequest]:
    rows = read_jsonl(path)
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.choice(len(rows), size=min(n, len(rows)), replace=False):
        w, h = _scaled(*_recorded_size(rows[i]), sizes, max_side)
        out.append(GenRequest(str(rows[i].get("query") or rows[i].get("question") or "What is shown?"),
                              [_noise(rng, w, h)]))
    return out


def transfer_rows(source: Path) -> list[tuple[str, dict]]:
    """(task, row) of a transfer's requests: every ``*samples_*.jsonl`` under a folder, or a file that
    ``--save-requests`` wrote (one ``{"task", "input", "input_media"}`` a line)."""
    if source.is_file():
        return [(row["task"], row) for row in read_jsonl(source)]
    files = sorted(source.rglob("*samples_*.jsonl"))
    if not files:
        raise SystemExit(f"bench_window: no *samples_*.jsonl under {source}")
    return [(re.sub(r"^.*samples_", "", f.stem), row) for f in files for row in read_jsonl(f)]


def refuse_foreign(path: Path, mine: str) -> None:
    """Stop when ``path`` exists and is not an earlier output of this bench (its text holds ``mine``)."""
    if path.exists() and (not path.is_file() or mine not in path.read_text(encoding="utf-8", errors="replace")[:4096]):
        raise SystemExit(f"bench_window: {path} exists and is not this bench's output; choose another path")


def save_requests(source: Path, out: Path, system: str | None) -> int:
    """The fields the replay reads, one request a line (1.4 MB for a model's 1,364: small enough to carry)."""
    refuse_foreign(out, '"task": ')
    rows = transfer_rows(source)
    out.write_text("".join(json.dumps({"task": task, "input": row["input"], "input_media": row.get("input_media") or [],
                                       "system": system}, ensure_ascii=False) + "\n"
                           for task, row in rows), encoding="utf-8")
    return len(rows)


def samples_requests(folder: Path, testmini: Path, n: int | None, seed: int, system: str | None,
                     max_side: int | None) -> list[GenRequest]:
    """A transfer's requests from its lmms-eval samples files (see the module docstring)."""
    sizes = recorded_sizes(testmini)
    rows = transfer_rows(folder)
    rng = np.random.default_rng(seed)
    if n and n < len(rows):
        rows = [rows[i] for i in sorted(rng.choice(len(rows), size=n, replace=False))]
    out = []
    for task, row in rows:
        images = []
        for media in row.get("input_media") or []:
            w, h = _scaled(*sizes[Path(media).name], "paper", max_side)
            images.append(black_image(w, h) if re.search(r"_black(desc)?$", task) else _noise(rng, w, h))
        out.append(GenRequest(str(row["input"]), images, system=system or row.get("system")))
    return out


class Windows:
    """Records every cache resize of the continuous decoder, (old length, new length), and the key/value slots its
    decode steps attend over: ``kv_slot_steps`` = the sum over steps of rows x window (every step reads the whole
    window), ``kv_slot_steps_needed`` = the same with the window the live rows need (their longest content plus the
    steps), the least any window policy reads; and the prefills: groups, padded and real prompt tokens, and the
    padded attention's query-key pairs. All follow from the prompts' slot counts and the policy alone, not from the
    model's weights."""

    def __init__(self):
        self.seen: list[tuple[int, int]] = []
        self.clear()
        cls, windows = continuous_mod.ContinuousDecoder, self
        real_resize, real_steps = cls._resize, cls.steps

        def resize(decoder, length):
            windows.seen.append((int(decoder.keys[0].shape[2]), int(length)))
            return real_resize(decoder, length)

        def steps(decoder, n):
            live = decoder._live_length()
            real_steps(decoder, n)
            rows = int(decoder.keys[0].shape[0])
            windows.steps += n
            windows.slot_steps += n * rows * int(decoder.keys[0].shape[2])
            windows.needed += n * rows * (live + n)

        cls._resize, cls.steps = resize, steps
        real_prefill = Generator._prefill_group

        def prefill(gen, decoder, group, rows, **kw):
            n, length = group.ids.shape
            windows.prefills += 1
            windows.prefill_slots += n * length  # padded prompt tokens through the model
            windows.prefill_pairs += n * length * length  # query-key pairs of the padded prompts' attention
            windows.prefill_real += int(group.mask.sum())
            return real_prefill(gen, decoder, group, rows, **kw)

        Generator._prefill_group = prefill

    def clear(self) -> None:
        self.seen.clear()
        self.slot_steps = self.needed = self.steps = 0
        self.prefills = self.prefill_slots = self.prefill_pairs = self.prefill_real = 0


def set_way(gen: Generator, way: str) -> None:
    order, shrink = WAYS[way]
    cls = continuous_mod.ContinuousDecoder
    cls.SHRINK = shrink is not None
    cls._shrink = _shrink_x4 if shrink == "x4" else _SHRINK_TODAY
    gen.__dict__.pop("request_order", None)
    if order != "slots":
        gen.request_order = (lambda reqs: _order_visual(gen, reqs)) if order == "visual" else (
            lambda reqs: _order_text(gen, reqs))


def run_way(gen: Generator, way: str, reqs, tokens: int, batch, windows: Windows) -> tuple[dict, list]:
    set_way(gen, way)
    windows.clear()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    gen.profile, gen.timings = True, {}  # encode / prefill / decode seconds (synchronized)
    t0 = time.perf_counter()
    out = gen.generate(reqs, max_new_tokens=tokens, ignore_eos=True, batch_size=batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    useful = sum(len(r.token_ids) for r in out)
    return {"way": way, "seconds": round(seconds, 2), "useful_tokens": useful, "tok_s": round(useful / seconds, 1),
            "windows": list(windows.seen), "decode_steps": windows.steps, "kv_slot_steps": windows.slot_steps,
            "kv_slot_steps_needed": windows.needed, "prefill_groups": windows.prefills,
            "prefill_tokens_padded": windows.prefill_slots, "prefill_tokens_real": windows.prefill_real,
            "prefill_attention_pairs": windows.prefill_pairs,
            "phases_s": {k: round(v, 2) for k, v in gen.timings.items()},
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available()
            else None,  # the tensors'; reserved: the caching allocator's, what NVML (the acceptance run) sees
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 1) if torch.cuda.is_available()
            else None}, [r.token_ids for r in out]


def alternating(ways: list[str], repeats: int) -> list[str]:
    """A B B A A B ... for two ways (A B C C B A ... for three): each way as often first as last."""
    return [w for r in range(repeats) for w in (ways if r % 2 == 0 else ways[::-1])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a checkpoint folder (e.g. the acceptance lineage's rl/)")
    p.add_argument("--testmini", type=Path, help="MathVista testmini.jsonl (rows with metadata)")
    p.add_argument("--samples", type=Path, default=None,
                   help="replay a transfer's requests: a folder with its lmms-eval *samples_*.jsonl files, or a "
                        "file --save-requests wrote")
    p.add_argument("--save-requests", type=Path, default=None,
                   help="with --samples: write the requests' fields to this file (to carry) and stop")
    p.add_argument("--system", default=None,
                   help="system prompt of every request: reasoner, revisual, @FILE or the text (default: the "
                        "template's; the transfer's cells use reasoner)")
    p.add_argument("--prompts", type=int, default=512, help="requests (a seeded draw; 0 with --samples: all)")
    p.add_argument("--sizes", choices=("paper", "recorded"), default="paper",
                   help="testmini requests: the paper's image size (as the tasks, default) or the recorded one")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--batch-size", default="auto")
    p.add_argument("--ways", default="new,visual,old",
                   help=f"comma-separated, of {', '.join(WAYS)} (default new,visual,old)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each way, in alternating order (default 2)")
    p.add_argument("--max-side", type=int, default=None, help="scale larger images down to this side (CPU smoke)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="the JSON record")
    args = p.parse_args(argv)
    args.system = resolve_system_prompt("bench", args.system).text if args.system else None
    if args.save_requests:
        if not args.samples:
            p.error("--save-requests needs --samples")
        print(f"{save_requests(args.samples, args.save_requests, args.system)} requests -> {args.save_requests}")
        return 0
    if not args.model or not args.testmini or not args.out:
        p.error("--model, --testmini and --out are needed to measure")
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    if not ways or any(w not in WAYS for w in ways):
        p.error(f"--ways: of {', '.join(WAYS)}, got {args.ways!r}")
    refuse_foreign(args.out, "bench_window")  # its record's "command" names this script
    gpu = torch.cuda.is_available()
    gen = Generator.load(args.model, device="cuda" if gpu else "cpu", dtype="bfloat16" if gpu else "float32")
    if args.samples:
        reqs = samples_requests(args.samples, args.testmini, args.prompts, args.seed, args.system, args.max_side)
        warm = samples_requests(args.samples, args.testmini, len(reqs), args.seed + 1, args.system, args.max_side)
    else:
        reqs = testmini_requests(args.testmini, args.prompts, args.seed, args.sizes, args.max_side)
        warm = testmini_requests(args.testmini, len(reqs), args.seed + 1, args.sizes, args.max_side)
    visual = sorted(sum(visual_token_count(gen.processor, im.size) for im in r.images) for r in reqs)
    windows = Windows()
    # warm-up on as many other requests: kernels, graphs and the auto batch size (then fixed, so every way runs the
    # same rows; fewer warm-up requests would cap it: 252aabb's 64 did, on the H100 where the transfer settles at 115)
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    for way in ways:
        run_way(gen, way, warm, min(args.tokens, 32), batch, windows)
    batch = int(gen._auto_batch_size or len(reqs)) if batch == "auto" else batch
    record = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(0) if gpu else "CPU",
              **code_commit(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "requests": str(args.samples) if args.samples else f"testmini, {args.sizes} sizes",
              "prompts": len(reqs), "tokens": args.tokens, "batch": batch,
              "visual_tokens": {"median": visual[len(visual) // 2], "max": visual[-1],
                                "mean": round(float(np.mean(visual)), 1)},
              "runs": [], "complete": False}
    print(f"{record['gpu']}: {len(reqs)} requests ({record['requests']}; visual tokens median "
          f"{visual[len(visual) // 2]}, max {visual[-1]}), {args.tokens} tokens, batch {batch}", flush=True)
    tokens: dict[str, list] = {}
    for way in alternating(ways, args.repeats):
        run, toks = run_way(gen, way, reqs, args.tokens, batch, windows)
        tokens.setdefault(way, toks)
        record["runs"].append(run)
        print(f"  {way:<24} {run['seconds']:8.1f} s {run['tok_s']:9.1f} useful tok/s, {len(run['windows'])} "
              f"resizes {run['windows'][:6]}{' ...' if len(run['windows']) > 6 else ''}; {run['decode_steps']} steps, "
              f"window {run['kv_slot_steps'] / max(1, run['decode_steps'] * batch):.0f} slots a row on average "
              f"(the live rows needed {run['kv_slot_steps_needed'] / max(1, run['decode_steps'] * batch):.0f}); "
              f"prefill {run['prefill_groups']} groups, {run['prefill_tokens_padded']} padded tokens "
              f"({run['prefill_tokens_real']} real); phases {run['phases_s']}",
              flush=True)
        write_json_atomic(args.out, record, indent=1)
    first = ways[0]
    record["ways"] = {w: {"seconds": [r["seconds"] for r in record["runs"] if r["way"] == w],
                          "median_s": float(np.median([r["seconds"] for r in record["runs"] if r["way"] == w])),
                          "equal_rows_to_" + first: sum(a == b for a, b in zip(tokens[w], tokens[first], strict=True))}
                      for w in ways}
    for w in ways[1:]:
        record["ways"][w]["time_vs_" + first] = round(record["ways"][w]["median_s"] / record["ways"][first]["median_s"],
                                                      3)
    record["complete"] = True
    write_json_atomic(args.out, record, indent=1)
    for w in ways:
        print(f"{w}: median {record['ways'][w]['median_s']:.1f} s"
              + (f", {record['ways'][w]['time_vs_' + first]:.3f}x the time of {first}" if w != first else "")
              + f"; rows equal to {first}'s: {record['ways'][w]['equal_rows_to_' + first]} / {len(reqs)}")
    set_way(gen, "new")
    return 0


if __name__ == "__main__":
    sys.exit(main())
