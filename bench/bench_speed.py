"""Speed goals of the fast decode path on one GPU: Generator decode="auto" against plain transformers, the two
localization sweeps at full size, and batched == per-unit answers in float32.

    python bench/bench_speed.py --model LINEAGE/rl --data DATA --out speed.json                       # H200
    python bench/bench_speed.py --lineage-preset qwen2.5-vl-7b --workdir /tmp/bs --data DATA --out speed.json
    python bench/bench_speed.py --cpu-smoke --lineage-preset tiny --workdir /tmp/bs --data DATA \\
        --out /tmp/bs/out.json                                                      # CPU plumbing check only

--model is a Qwen2.5-VL checkpoint folder (e.g. the rl/ member of a lineage); without it, --lineage-preset writes one
random member (rl/) under --workdir with write_lineage (reused if present). DATA holds gsm8k/test.jsonl and
vision_probes/ (the FRANKENEVAL_DATA layout, e.g. ../shared/data). Parts (--parts, default all, in this order):

generator  --n-prompts prompts (64), each one --image-size px image (336, random pixels, fixed seed) and a short
           text, exactly --max-new-tokens new tokens (128; EOS ignored, greedy), bf16. Side by side in one process:
           (a) Generator decode="auto", batch 64; (a3) decode="compiled" (the step torch.compile-d; its cold call
           compiles; on CPU only with --compiled); (b) Generator decode="hf", batch 64; (c) plain transformers
           model.generate(**gen.encode(requests), max_new_tokens, do_sample=False, min_new_tokens=max_new_tokens);
           (d) Generator decode="auto", batch_size="auto" on --auto-prompts prompts (512; where auto starts: the
           Generator's own max_batch_size unless --auto-max-batch-size), reporting the batch size it settled on;
           (d3) decode="compiled" on the same prompts at that settled size (issue 32's "at the auto batch size").
           Each: the cold first call at the measured shape (reported on its own), then --repeats timed calls at the
           same shape (torch.cuda.synchronize around). seconds, tokens/s, and the fraction of the decode floor:
           floor tokens/s for B rows = B / (LLM weight bytes / bandwidth), the LLM weight bytes = numel x
           element_size of the language model's parameters + lm_head (no visual tower), bandwidth --bandwidth-tbs
           (4.27 TB/s, an H200 as measured).
vision     the visual-KV swap sweep (run_vision_sweep, exactly as localize-vision runs it): the 4 probe tasks,
           every LLM layer, --vision-new-tokens (64), --vision-pairs pairs per task (100 = the full sweep),
           --vision-batch units per generate call (256). Timed without the model load; extrapolated to the full sweep
           (4 x 100 pairs x n_layers swaps + the plain answers) when fewer pairs ran (the JSON says so).
reasoning  the GSM8K ablation sweep (every LLM layer + unablated per question) through run_reasoning_sweep, as
           localize-reasoning --ignore-eos runs it: --reasoning-new-tokens (256) with EOS ignored, --gsm8k-questions
           (1319), --reasoning-batch units per call (512). Extrapolated to 1319 questions when fewer ran.
same       a second Generator in float32: >= --same-units swap units (+ their pairs' plain answers) and >=
           --same-units ablation units, each set in batched calls of --same-batch rows vs every unit alone
           (batch_size=1); counts units whose generated token ids are equal.

Without a GPU the script stops with one line unless --cpu-smoke (tiny sizes: 8 prompts, 8 new tokens, 2 pairs,
4 questions, 24 same units; float32; a plumbing check, never a measurement). Writes --out (JSON, rewritten after
every part) and prints a markdown table. The weights of a lineage are random: every number is about time, never
accuracy.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import code_commit  # noqa: E402

PARTS = ("generator", "vision", "reasoning", "same")
FULL_PAIRS = 100  # probe pairs per task in the data (the full sweep)
FULL_GSM8K = 1319  # GSM8K test questions


# ----------------------------------------------------------------------------------------------------- helpers
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    """(fn(), seconds), with torch.cuda.synchronize before and after."""
    _sync()
    t = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - t


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 1024**3, 2) if torch.cuda.is_available() else None


def say(msg: str) -> None:
    print(f"[bench_speed] {msg}", flush=True)


def load_generator(path: str, *, dtype: str, decode: str, device: str, attn: str | None):
    """``Generator.load``; ``max_batch_size`` is left at the Generator's default (where batch_size="auto" starts)."""
    from frankeneval.engine.generation import Generator

    return Generator.load(path, dtype=dtype, device=device, attn_implementation=attn, decode=decode)


def llm_weight_bytes(model) -> dict:
    """Bytes of the language model's parameters + lm_head (each tensor once; no visual tower)."""
    inner = getattr(model, "model", model)
    llm = getattr(inner, "language_model", None) or model.get_decoder()
    head = model.get_output_embeddings()
    seen: dict[int, torch.nn.Parameter] = {}
    for mod in (llm, head):
        if mod is not None:
            for p in mod.parameters():
                seen.setdefault(id(p), p)
    total = sum(p.numel() * p.element_size() for p in seen.values())
    emb = llm.get_input_embeddings() if hasattr(llm, "get_input_embeddings") else None
    emb_bytes = emb.weight.numel() * emb.weight.element_size() if emb is not None else None
    visual = getattr(inner, "visual", None)
    vis_bytes = sum(p.numel() * p.element_size() for p in visual.parameters()) if visual is not None else 0
    return {"llm_bytes": total, "llm_params": sum(p.numel() for p in seen.values()),
            "embed_tokens_bytes": emb_bytes, "visual_bytes": vis_bytes,
            "dtype": str(next(iter(seen.values())).dtype)}


def floor_tokens_per_s(rows: int, weight_bytes: int, bandwidth_tbs: float) -> float:
    """The decode floor: every step reads the LLM weights once, for ``rows`` tokens."""
    return rows / (weight_bytes / (bandwidth_tbs * 1e12))


def make_requests(n: int, size: int, seed: int):
    from frankeneval.engine.generation import GenRequest

    rng = np.random.RandomState(seed)
    questions = ["What is in this image?", "Describe the picture.", "Count the objects.", "What colour dominates?"]
    return [GenRequest(questions[i % len(questions)] + f" (item {i})",
                       [Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8))]) for i in range(n)]


def _open_image(path):
    with Image.open(path) as im:
        return im.convert("RGB")


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def machine_info(device: str) -> dict:
    import transformers

    import frankeneval

    info = {"device": device, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "frankeneval": frankeneval.__version__, "python": platform.python_version(), "host": platform.node(),
            "cpu_count": os.cpu_count(), "gpu": None}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu": torch.cuda.get_device_name(0), "gpu_memory_gib": round(props.total_memory / 1024**3, 1),
                     "gpu_count": torch.cuda.device_count()})
    return info | code_commit()


# ----------------------------------------------------------------------------------------------------- generator
def bench_generator(gen, args, weights: dict) -> dict:
    n, new, bs = args.n_prompts, args.max_new_tokens, args.batch_size
    reqs = make_requests(n, args.image_size, args.seed)
    common = {"max_new_tokens": new, "ignore_eos": True, "do_sample": False}
    bw, wbytes = args.bandwidth_tbs, weights["llm_bytes"]
    rows: dict[str, dict] = {}
    outs: dict[str, list[list[int]]] = {}

    def record(name: str, label: str, prompts: int, rows_per_call: int, cold_s: float, secs: list[float],
               tokens: int, short: int, **extra) -> None:
        s = min(secs)
        tps = tokens / s
        floor = floor_tokens_per_s(rows_per_call, wbytes, bw)
        rows[name] = {"label": label, "prompts": prompts, "rows_per_call": rows_per_call, "tokens": tokens,
                      "seconds": s, "seconds_all": secs, "tokens_per_s": tps, "floor_tokens_per_s": floor,
                      "floor_fraction": tps / floor, "cold_first_call_s": cold_s,
                      "rows_short_of_max_new_tokens": short, **extra}
        say(f"generator {label}: cold {cold_s:.2f} s, warm {s:.2f} s, {tps:.1f} tokens/s, "
            f"{100 * tps / floor:.1f} % of the decode floor")

    def via_generator(name: str, label: str, decode: str, requests, batch_size, fresh: bool = False) -> None:
        """``fresh``: the prompt encoder's caches are emptied before every call (64 new images, not a sweep's
        repeated ones), so the processor and the vision tower run inside the timed call."""
        gen.decode = decode

        def call():
            if fresh and hasattr(gen, "encoder"):
                gen.encoder.clear()
            return gen.generate(requests, batch_size=batch_size, **common)

        _, cold = timed(call)  # also the warm-up
        secs, out = [], None
        for _ in range(args.repeats):
            out, s = timed(call)
            secs.append(s)
        toks = [r.token_ids for r in out]
        outs[name] = toks
        used = gen.auto_batch_size if batch_size == "auto" else batch_size
        record(name, label, len(requests), int(used or 0), cold, secs, sum(len(t) for t in toks),
               sum(len(t) < new for t in toks), decode=decode, batch_size=batch_size,
               **({"auto_batch_size": used, "max_batch_size": getattr(gen, "max_batch_size", None)}
                  if batch_size == "auto" else {}))

    reset_peak()
    via_generator("auto", f'(a) Generator decode="auto", batch {bs}', "auto", reqs, bs)
    via_generator("auto_fresh", f'(a2) Generator decode="auto", batch {bs}, prompts encoded in the call', "auto",
                  reqs, bs, fresh=True)
    via_generator("hf", f'(b) Generator decode="hf", batch {bs}', "hf", reqs, bs)
    if not args.cpu_smoke or args.compiled:  # the compiled step (its cold call compiles it; reported apart)
        via_generator("compiled", f'(a3) Generator decode="compiled", batch {bs}', "compiled", reqs, bs)

    # (c) plain transformers on the same inputs (the Generator's own encoding, one batch)
    inputs, enc_s = timed(lambda: gen.encode(reqs))
    prompt_len = inputs["input_ids"].shape[1]
    pad = gen.tokenizer.pad_token_id

    def plain(inputs=inputs):
        with torch.inference_mode():
            return gen.model.generate(**inputs, max_new_tokens=new, do_sample=False, min_new_tokens=new,
                                      pad_token_id=pad)

    _, cold = timed(plain)
    secs, out = [], None
    for _ in range(args.repeats):
        out, s = timed(plain)
        secs.append(s)
    toks = out[:, prompt_len:].tolist()
    outs["plain"] = toks
    record("plain", f"(c) transformers model.generate, batch {n}", n, n, cold, secs, sum(len(t) for t in toks),
           sum(len(t) < new for t in toks), encode_s=enc_s,
           note="seconds exclude gen.encode (encode_s); the Generator rows include their own encoding")
    del inputs, out
    free_memory()

    # (d) batch_size="auto" on a larger set
    big = make_requests(args.auto_prompts, args.image_size, args.seed + 1)
    if args.auto_max_batch_size is not None:
        gen.max_batch_size = args.auto_max_batch_size
    if hasattr(gen, "_auto_batch_size"):
        gen._auto_batch_size = None  # start from max_batch_size, not from a size remembered earlier
    via_generator("auto_bs", f'(d) Generator decode="auto", batch_size="auto" ({args.auto_prompts} prompts)',
                  "auto", big, "auto")
    settled = rows["auto_bs"]["auto_batch_size"]
    rows["auto_bs"]["label"] += f", settled on {settled}"
    if settled and (not args.cpu_smoke or args.compiled):  # (d3) the compiled step at the size "auto" chose
        via_generator("compiled_bs", f'(d3) Generator decode="compiled", batch {settled} (the size "auto" settled '
                      f"on), {args.auto_prompts} prompts", "compiled", big, int(settled))

    # the same greedy tokens? (bf16: batched kernels may round differently; reported, not required)
    order = range(n)
    agree = {}
    for a, b in (("auto", "hf"), ("hf", "plain"), ("auto", "plain"), ("auto", "compiled"), ("auto_bs", "compiled_bs")):
        if a not in outs or b not in outs:
            continue
        eq = sum(outs[a][i] == outs[b][i] for i in order)
        agree[f"{a}_vs_{b}"] = {"equal_rows": eq, "rows": n,
                                "min_common_prefix": min(common_prefix(outs[a][i], outs[b][i]) for i in order)}
    short = {k: r["rows_short_of_max_new_tokens"] for k, r in rows.items() if r["rows_short_of_max_new_tokens"]}
    notes = []
    if short:
        notes.append(f"rows that ended before max_new_tokens despite ignore_eos=True: {short} (their tokens/s "
                     "counts the tokens they returned)")
    return {"n_prompts": n, "image_size": args.image_size, "max_new_tokens": new, "batch_size": bs, "notes": notes,
            "ignore_eos": True, "repeats": args.repeats, "bandwidth_tbs": bw, "weights": weights,
            "floor_definition": "floor tokens/s = rows per call / (LLM weight bytes / bandwidth); fraction = "
                                "measured tokens/s / floor (seconds include prefill and, for (a)/(b)/(d), encoding)",
            "cold_definition": "the first call at the measured shape, before the warm-up (it is the warm-up)",
            "runs": rows, "token_agreement": agree, "peak_gpu_gib": peak_gib(),
            "speedup_auto_over_hf": rows["hf"]["seconds"] / rows["auto"]["seconds"],
            "speedup_auto_over_plain": rows["plain"]["seconds"] / rows["auto"]["seconds"],
            "speedup_auto_fresh_over_plain": rows["plain"]["seconds"] / rows["auto_fresh"]["seconds"]}


# ----------------------------------------------------------------------------------------------------- vision
def bench_vision(gen, args, layers: list[int], work: Path, model_name: str) -> dict:
    from frankeneval.core.runstore import RunStore
    from frankeneval.localization.vision import load_probe_sets, run_vision_sweep, vision_units

    probes = args.data / "vision_probes"
    k = args.vision_pairs
    pairs = load_probe_sets(data=probes, samples=None if k >= FULL_PAIRS else k)
    units, _ = vision_units(pairs, layers)
    n_swap = sum(u.info["kind"] == "swap" for u in units)
    full_pairs = load_probe_sets(data=probes, samples=None)
    full_units, _ = vision_units(full_pairs, layers)
    out = Path(tempfile.mkdtemp(prefix="bench_speed-vision-", dir=work))  # its own scratch folder, removed after
    gen.decode = args.decode
    reset_peak()
    say(f"vision sweep: {len(units)} units ({n_swap} swaps), batch {args.vision_batch}, decode={args.decode!r}")
    gen.profile, gen.timings = True, {}  # encode / prefill / decode seconds (a synchronize around each phase)
    _, secs = timed(lambda: run_vision_sweep(gen, pairs, layers, out, model_name=model_name,
                                             max_new_tokens=args.vision_new_tokens, batch_size=args.vision_batch,
                                             progress=args.progress))
    recs = RunStore(out / "units.jsonl").records()
    tokens = sum(int(r.get("n_tokens", 0)) for r in recs.values())
    n_full = len(full_units)
    ran_full = len(units) >= n_full
    res = {"tasks": list(pairs), "pairs_per_task": {t: len(v) for t, v in pairs.items()}, "layers": len(layers),
           "max_new_tokens": args.vision_new_tokens, "batch_size": args.vision_batch, "decode": args.decode,
           "units": len(units), "swap_units": n_swap, "plain_units": len(units) - n_swap, "seconds": secs,
           "phase_seconds": dict(getattr(gen, "timings", {})),
           "units_per_s": len(units) / secs, "tokens": tokens, "tokens_per_s": tokens / secs,
           "eos": "respected (as localize-vision runs)", "peak_gpu_gib": peak_gib(),
           "full_sweep_units": n_full,
           "full_sweep_swap_units": sum(u.info["kind"] == "swap" for u in full_units),
           "timing_note": "run_vision_sweep call only (no model load); includes the source K/V prefills, image "
                          "decoding, the run store and any first-call warm-up of the decode path"}
    if ran_full:
        res.update({"full_sweep_seconds": secs, "extrapolated": False})
    else:
        res.update({"full_sweep_seconds": secs / len(units) * n_full, "extrapolated": True,
                    "extrapolation": f"measured seconds / {len(units)} units x {n_full} units of the full sweep "
                                     f"({len(full_pairs)} tasks x {FULL_PAIRS} pairs x {len(layers)} layers + the "
                                     "distinct plain answers); assumes the time per unit does not depend on the "
                                     "number of pairs"})
    shutil.rmtree(out, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------------------------------- reasoning
def gsm8k_path(data: Path) -> Path:
    return data / "gsm8k" / "test.jsonl"


def bench_reasoning(gen, args, layers: list[int], work: Path, model_name: str) -> dict:
    from frankeneval.core.runstore import RunStore
    from frankeneval.localization.reasoning import load_questions, run_reasoning_sweep

    k = args.gsm8k_questions
    questions = load_questions("gsm8k", data=gsm8k_path(args.data), samples=None if k >= FULL_GSM8K else k)
    out = Path(tempfile.mkdtemp(prefix="bench_speed-reasoning-", dir=work))  # its own scratch folder, removed after
    new = args.reasoning_new_tokens
    n_units = len(questions) * (len(layers) + 1)
    gen.decode = args.decode
    reset_peak()
    say(f"reasoning sweep: {len(questions)} questions x {len(layers) + 1} = {n_units} units, "
        f"batch {args.reasoning_batch}, {new} new tokens (EOS ignored), decode={args.decode!r}")
    gen.profile, gen.timings = True, {}
    swept, secs = timed(lambda: run_reasoning_sweep(
        gen, "gsm8k", questions, layers, out, model_name=model_name, system_prompt=args.system_prompt,
        max_new_tokens=new, batch_size=args.reasoning_batch, progress=args.progress, ignore_eos=True))
    prompt = swept["system_prompt"]
    units = [None] * n_units
    store = RunStore(out / "units.jsonl")
    recs = store.records()
    tokens = sum(int(r["n_tokens"]) for r in recs.values())
    short = sum(int(r["n_tokens"]) < new for r in recs.values())
    n_q = len(questions)
    res = {"dataset": "gsm8k", "questions": n_q, "layers": len(layers), "units": len(units),
           "phase_seconds": dict(getattr(gen, "timings", {})),
           "max_new_tokens": new, "ignore_eos": True, "batch_size": args.reasoning_batch, "decode": args.decode,
           "system_prompt": prompt, "seconds": secs, "units_per_s": len(units) / secs, "tokens": tokens,
           "tokens_per_s": tokens / secs, "units_short_of_max_new_tokens": short, "peak_gpu_gib": peak_gib(),
           "how": "localization.reasoning.run_reasoning_sweep(ignore_eos=True), as localize-reasoning --ignore-eos "
                  "runs it (answers scored; the time includes scoring and the results file)",
           "full_sweep_units": FULL_GSM8K * (len(layers) + 1)}
    if n_q >= FULL_GSM8K:
        res.update({"full_sweep_seconds": secs, "extrapolated": False})
    else:
        res.update({"full_sweep_seconds": secs / n_q * FULL_GSM8K, "extrapolated": True,
                    "extrapolation": f"measured seconds / {n_q} questions x {FULL_GSM8K} questions (every unit "
                                     f"has exactly {new} new tokens; prompt lengths differ per question)"})
    shutil.rmtree(out, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------------------------------- same
def _compare(gen, requests, rows, *, batch: int, **kw) -> tuple[list, list, float, float]:
    batched: list = []
    t0 = time.perf_counter()
    for i in range(0, len(requests), batch):
        batched += gen.generate(requests[i:i + batch], interventions=rows[i:i + batch],
                                batch_size=len(requests[i:i + batch]), **kw)
    _sync()
    t1 = time.perf_counter()
    alone = [gen.generate([r], interventions=[row], batch_size=1, **kw)[0] for r, row in zip(requests, rows)]
    _sync()
    return batched, alone, t1 - t0, time.perf_counter() - t1


def _tally(units, batched, alone, kinds) -> dict:
    out: dict = {}
    differ = []
    for u, b, a, kind in zip(units, batched, alone, kinds):
        d = out.setdefault(kind, {"units": 0, "equal_token_ids": 0, "min_common_prefix": None})
        d["units"] += 1
        eq = b.token_ids == a.token_ids
        d["equal_token_ids"] += eq
        cp = common_prefix(b.token_ids, a.token_ids)
        d["min_common_prefix"] = cp if d["min_common_prefix"] is None else min(d["min_common_prefix"], cp)
        if not eq:
            differ.append(u.key)
    return {"by_kind": out, "units": len(units), "equal_token_ids": sum(d["equal_token_ids"] for d in out.values()),
            "differing_units": differ[:20]}


def bench_same(args, model_path: str, layers: list[int], model_name: str) -> dict:
    from frankeneval.engine.generation import GenRequest
    from frankeneval.engine.interventions import SwapVisualKV
    from frankeneval.evaluation.prompts import resolve_system_prompt
    from frankeneval.localization.reasoning import load_questions, reasoning_units
    from frankeneval.localization.vision import load_probe_sets, vision_units

    gen = load_generator(model_path, dtype="float32", decode=args.decode, device=args.device,
                         attn=args.attn_implementation)
    gen.decode = args.decode
    need = args.same_units
    n_layers = len(layers)
    res: dict = {"dtype": "float32", "decode": args.decode, "batch": args.same_batch,
                 "max_new_tokens": args.same_new_tokens}
    reset_peak()

    # vision: pairs round-robin over the tasks until >= need swap units; the sweep's units in its own order
    all_pairs = load_probe_sets(data=args.data / "vision_probes", samples=None)
    n_pairs = math.ceil(need / n_layers)
    chosen: dict[str, list] = {t: [] for t in all_pairs}
    i = 0
    while sum(len(v) for v in chosen.values()) < n_pairs:
        t = list(all_pairs)[i % len(all_pairs)]
        if len(chosen[t]) < len(all_pairs[t]):
            chosen[t].append(all_pairs[t][len(chosen[t])])
        i += 1
    chosen = {t: v for t, v in chosen.items() if v}
    units, _ = vision_units(chosen, layers)
    requests, rows, kinds = [], [], []
    for u in units:  # as localization.vision.make_executor builds its rows
        if u.request[0] == "plain":
            _, image, prompt = u.request
            requests.append(GenRequest(prompt, [_open_image(image)], None))
            rows.append([])
        else:
            _, pair, prompt, layer = u.request
            kv = gen.visual_kv(_open_image(pair.source_image), prompt=prompt, system=None)
            requests.append(GenRequest(prompt, [_open_image(pair.target_image)], None))
            rows.append([SwapVisualKV(source=kv, from_layer=layer)])
        kinds.append(u.info["kind"])
    say(f"same (float32): vision {len(units)} units batched (batch {args.same_batch}) vs alone")
    b, a, tb, ta = _compare(gen, requests, rows, batch=args.same_batch, max_new_tokens=args.same_new_tokens)
    res["vision"] = {"pairs": {t: [p.id for p in v] for t, v in chosen.items()}, "eos": "respected",
                     "batched_s": tb, "alone_s": ta, **_tally(units, b, a, kinds)}

    # reasoning: the first questions of GSM8K, every layer + unablated, EOS ignored (as the reasoning part)
    n_q = math.ceil(need / (n_layers + 1))
    questions = load_questions("gsm8k", data=gsm8k_path(args.data), samples=None)[:n_q]
    prompt = resolve_system_prompt(model_name, args.system_prompt)
    runits = reasoning_units("gsm8k", questions, layers, prompt.text)
    say(f"same (float32): reasoning {len(runits)} units batched (batch {args.same_batch}) vs alone")
    b, a, tb, ta = _compare(gen, [u.request for u in runits], [u.interventions for u in runits],
                            batch=args.same_batch, max_new_tokens=args.same_new_tokens, ignore_eos=True)
    res["reasoning"] = {"questions": [q.index for q in questions], "ignore_eos": True, "batched_s": tb, "alone_s": ta,
                        **_tally(runits, b, a, ["ablate" if u.info["layer"] is not None else "unablated"
                                                for u in runits])}
    res["peak_gpu_gib"] = peak_gib()
    del gen
    free_memory()
    return res


# ----------------------------------------------------------------------------------------------------- report
def table(result: dict) -> str:
    lines = ["| part | run | rows / units | tokens | seconds | tokens/s | % of decode floor | note |",
             "|---|---|---|---|---|---|---|---|"]
    parts = result.get("parts", {})
    g = parts.get("generator")
    if g and "runs" in g:
        for r in g["runs"].values():
            lines.append(f"| generator | {r['label']} | {r['prompts']} | {r['tokens']} | {r['seconds']:.2f} | "
                         f"{r['tokens_per_s']:.0f} | {100 * r['floor_fraction']:.3g} | "
                         f"cold first call {r['cold_first_call_s']:.2f} s |")
        a = g["runs"]["auto"]
        lines.append(f'| generator | (a) decode="auto" cold first call | {a["prompts"]} | {a["tokens"]} | '
                     f"{a['cold_first_call_s']:.2f} | {a['tokens'] / a['cold_first_call_s']:.0f} | | before warm-up |")
    v = parts.get("vision")
    if v and "units" in v:
        note = (f"full sweep ({v['full_sweep_units']} units) {'extrapolated ' if v['extrapolated'] else ''}"
                f"{v['full_sweep_seconds']:.0f} s")
        phases = ", ".join(f"{k} {x:.1f} s" for k, x in v.get("phase_seconds", {}).items())
        lines.append(f"| vision | swap sweep, {sum(v['pairs_per_task'].values())} pairs x {v['layers']} layers, "
                     f"batch {v['batch_size']} | {v['units']} | {v['tokens']} | {v['seconds']:.1f} | "
                     f"{v['tokens_per_s']:.0f} | | {note}; {phases} |")
    r = parts.get("reasoning")
    if r and "units" in r:
        note = f"1319 questions {'extrapolated ' if r['extrapolated'] else ''}{r['full_sweep_seconds']:.0f} s; " + \
            ", ".join(f"{k} {x:.1f} s" for k, x in r.get("phase_seconds", {}).items())
        lines.append(f"| reasoning | ablation sweep, {r['questions']} questions x {r['layers'] + 1}, batch "
                     f"{r['batch_size']} | {r['units']} | {r['tokens']} | {r['seconds']:.1f} | "
                     f"{r['tokens_per_s']:.0f} | | {note} |")
    s = parts.get("same")
    if s and "vision" in s:
        for kind in ("vision", "reasoning"):
            d = s[kind]
            by = ", ".join(f"{k} {x['equal_token_ids']}/{x['units']}" for k, x in d["by_kind"].items())
            lines.append(f"| same | {kind}: batched vs alone, float32 | {d['units']} | | "
                         f"{d['batched_s']:.1f} / {d['alone_s']:.1f} | | | equal token ids {d['equal_token_ids']}/"
                         f"{d['units']} ({by}) |")
    for name, p in parts.items():
        if "error" in p:
            lines.append(f"| {name} | failed | | | | | | {p['error'][:120]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Qwen2.5-VL checkpoint folder (e.g. LINEAGE/rl)")
    ap.add_argument("--lineage-preset", default=None,
                    help="without --model: write (or reuse) WORKDIR/lineage-PRESET/rl with write_lineage")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="scratch folder (the lineage, the sweeps' run stores; default a temporary folder)")
    ap.add_argument("--data", type=Path, default=None, help="data folder with gsm8k/test.jsonl and vision_probes/")
    ap.add_argument("--out", type=Path, required=True, help="JSON results (rewritten after every part)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--compiled", action="store_true", help="with --cpu-smoke: also decode=\"compiled\" (slow to "
                    "compile on a CPU; always measured on a GPU)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run on the CPU on purpose with tiny sizes (a plumbing check, never a measurement)")
    ap.add_argument("--seed", type=int, default=0, help="lineage seed and image pixels (default 0)")
    ap.add_argument("--dtype", default=None, help="dtype of generator/vision/reasoning (bfloat16; smoke float32)")
    ap.add_argument("--attn-implementation", default=None)
    ap.add_argument("--decode", default="auto", help='decode path of the sweeps and the same part (default "auto")')
    ap.add_argument("--bandwidth-tbs", type=float, default=4.27, help="memory bandwidth, TB/s (H200 measured: 4.27)")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per generator run after the warm-up (best)")
    g = ap.add_argument_group("generator")
    g.add_argument("--n-prompts", type=int, default=None, help="default 64 (smoke 8)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (smoke 8)")
    g.add_argument("--image-size", type=int, default=336)
    g.add_argument("--batch-size", type=int, default=None, help="rows per call in (a) and (b) (default --n-prompts)")
    g.add_argument("--auto-prompts", type=int, default=None, help='prompts of (d) batch_size="auto" (512; smoke 16)')
    g.add_argument("--auto-max-batch-size", type=int, default=None,
                   help="Generator.max_batch_size in (d), where auto starts (default: the Generator's own)")
    v = ap.add_argument_group("vision")
    v.add_argument("--vision-pairs", type=int, default=None, help="pairs per task (100 = full sweep; smoke 2)")
    v.add_argument("--vision-batch", type=int, default=None, help="units per generate call (256; smoke 16)")
    v.add_argument("--vision-new-tokens", type=int, default=None, help="default 64 (smoke 8)")
    r = ap.add_argument_group("reasoning")
    r.add_argument("--gsm8k-questions", type=int, default=None, help="default 1319 (smoke 4)")
    r.add_argument("--reasoning-batch", type=int, default=None, help="units per generate call (512; smoke 14)")
    r.add_argument("--reasoning-new-tokens", type=int, default=None, help="default 256, EOS ignored (smoke 8)")
    r.add_argument("--system-prompt", default="auto", help="as localize-reasoning's (default auto)")
    s = ap.add_argument_group("same")
    s.add_argument("--same-units", type=int, default=None, help="at least this many units per sweep (100; smoke 24)")
    s.add_argument("--same-batch", type=int, default=256, help="rows per batched call (default 256)")
    s.add_argument("--same-new-tokens", type=int, default=None, help="default 64 (smoke 8)")
    ap.add_argument("--progress", action="store_true", help="progress bars in the sweeps")
    args = ap.parse_args(argv)

    if args.cpu_smoke:
        args.device = "cpu"
    elif not torch.cuda.is_available():
        print("bench_speed: no GPU visible (torch.cuda.is_available() is False); this benchmark runs on a GPU "
              "(--cpu-smoke for a CPU plumbing check)", file=sys.stderr)
        return 2
    else:
        args.device = "cuda"
    if (args.model is None) == (args.lineage_preset is None):
        ap.error("give --model DIR or --lineage-preset PRESET (with --workdir), not both")
    if args.lineage_preset and args.workdir is None:
        ap.error("--lineage-preset needs --workdir")
    if set(args.parts) - {"generator"} and args.data is None:
        ap.error("--data is needed by the vision, reasoning and same parts")
    smoke = args.cpu_smoke

    def pick(value, gpu, cpu):
        return value if value is not None else (cpu if smoke else gpu)

    args.dtype = pick(args.dtype, "bfloat16", "float32")
    args.n_prompts = pick(args.n_prompts, 64, 8)
    args.max_new_tokens = pick(args.max_new_tokens, 128, 8)
    args.batch_size = args.batch_size or args.n_prompts
    args.auto_prompts = pick(args.auto_prompts, 512, 16)
    args.vision_pairs = pick(args.vision_pairs, FULL_PAIRS, 2)
    args.vision_batch = pick(args.vision_batch, 256, 16)
    args.vision_new_tokens = pick(args.vision_new_tokens, 64, 8)
    args.gsm8k_questions = pick(args.gsm8k_questions, FULL_GSM8K, 4)
    args.reasoning_batch = pick(args.reasoning_batch, 512, 14)
    args.reasoning_new_tokens = pick(args.reasoning_new_tokens, 256, 8)
    args.same_new_tokens = pick(args.same_new_tokens, 64, 8)
    args.same_units = pick(args.same_units, 100, 24)
    if args.data is not None:
        args.data = args.data.resolve()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)

    tmp = None
    work = args.workdir
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_speed-")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"bench": "bench_speed", "machine": machine_info(args.device), "smoke": smoke,
                    "settings": {k: (str(x) if isinstance(x, Path) else x) for k, x in vars(args).items()},
                    "parts": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        tmp_out = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp_out.write_text(json.dumps(result, indent=1, default=str) + "\n")
        os.replace(tmp_out, args.out)

    t_all = time.perf_counter()
    try:
        if args.model is None:
            from frankeneval.miniature.lineage import write_lineage

            lin, write_s = timed(lambda: write_lineage(work / f"lineage-{args.lineage_preset}",
                                                       preset=args.lineage_preset, seed=args.seed,
                                                       members=("rl",), progress=False))
            model_path = str(lin.rl)
            result["lineage"] = {"preset": args.lineage_preset, "seed": args.seed, "path": model_path,
                                 "write_s": write_s}
        else:
            model_path = str(Path(args.model).resolve())
        result["model"] = model_path
        gen = None
        layers: list[int] = []
        if set(args.parts) - {"same"}:
            gen, load_s = timed(lambda: load_generator(model_path, dtype=args.dtype, decode="auto",
                                                       device=args.device, attn=args.attn_implementation))
            result["load_s"] = load_s
            result["dtype"] = str(gen.model.dtype)
            say(f"loaded {model_path} ({gen.model.dtype}, {gen.device}) in {load_s:.1f} s")
        n_layers = (gen.model.config.get_text_config().num_hidden_layers if gen is not None else
                    _n_layers_from_config(model_path))
        layers = list(range(1, n_layers + 1))
        result["n_llm_layers"] = n_layers
        model_name = model_path
        for part in [p for p in PARTS if p in args.parts]:
            t = time.perf_counter()
            try:
                if part == "generator":
                    res = bench_generator(gen, args, llm_weight_bytes(gen.model))
                elif part == "vision":
                    res = bench_vision(gen, args, layers, work, model_name)
                elif part == "reasoning":
                    res = bench_reasoning(gen, args, layers, work, model_name)
                else:
                    if gen is not None:  # free the bf16 model before the float32 one
                        del gen
                        gen = None
                        free_memory()
                    res = bench_same(args, model_path, layers, model_name)
            except Exception as exc:  # noqa: BLE001 -- one part failing still records the others
                import traceback

                traceback.print_exc()
                res = {"error": f"{type(exc).__name__}: {exc}"}
            res["part_wall_s"] = time.perf_counter() - t
            result["parts"][part] = res
            say(f"{part}: {res['part_wall_s']:.1f} s")
            free_memory()
            save()
    finally:
        result["wall_s"] = time.perf_counter() - t_all
        save()
        if tmp is not None:
            tmp.cleanup()
    m = result["machine"]
    print(f"\nbench_speed -- {m['gpu'] or 'CPU (smoke check, not a measurement)'}, torch {m['torch']}, "
          f"transformers {m['transformers']}, {result.get('dtype', '')}, model {result.get('model')}")
    print(table(result))
    print(f"wrote {args.out}")
    return 1 if any("error" in p for p in result["parts"].values()) else 0


def _n_layers_from_config(model_path: str) -> int:
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    text = cfg.get("text_config") or cfg
    return int(text.get("num_hidden_layers", cfg.get("num_hidden_layers")))


if __name__ == "__main__":
    sys.exit(main())
