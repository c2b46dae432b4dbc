"""Attention shift: how much attention generated tokens pay to the visual tokens, per LLM layer and head, for
each lineage member (Base, IN, RL) on the same prompts.

For every prompt (an image and a question) each member generates greedily (``max_new_tokens``) with
``CaptureAttention(query="generated")``: at every decoder layer and head, the softmax probability mass that the
query producing each generated token puts on the visual-token keys. A prompt's value is that mass averaged over
its generated tokens; a member's value is the mean over prompts. Reported: per layer (mean over heads) and per
layer and head, for each member; the differences ``RL - IN`` and ``IN - Base`` per layer; and the region summary
(early / middle / late thirds of the LLM, :func:`frankeneval.weights.layermap.llm_region`), whose middle and late rows
are what the paper's claim (RL shifts attention to the image in mid/late layers) rests on.

Prompts: the target images of the probe pairs of ``tasks`` (``--data`` folder or the built-in rendered probes),
each question preceded by the method's step-by-step / ``\\boxed{}`` instruction (``instruction=False``: the bare
probe prompt), so the generated tokens are reasoning tokens. The system prompt is decided per member by
:func:`frankeneval.evaluation.prompts.resolve_system_prompt` (``system_prompt="auto"``: docs/method.md's name rule
on the hub id / the directory's own name, a splice its sources'; or one fixed choice for all: ``reasoner`` /
``revisual`` / ``none`` / a text), and recorded with its reason.

Members are loaded one at a time; every finished (member, prompt) unit is appended to ``units.jsonl``.

Output ``attention_shift.json`` schema::

    {
      "analysis": "attention_shift",
      "members": {"base": str, "in": str, "rl": str},          # model paths / hub ids
      "tasks": [str, ...], "n_prompts": int, "max_new_tokens": int, "instruction": bool,
      "system_prompt": {"<member>": {"name": str, "setting": str, "reason": str, "text": str | null}},
      "layers": [int, ...],                                    # unified LLM indices 1 … n
      "visual_share": {"<member>": [float per layer]},         # mean over prompts and heads
      "visual_share_heads": {"<member>": [[float per head] per layer]},
      "rl_minus_in": [float per layer], "in_minus_base": [float per layer],
      "regions": {"early"|"middle"|"late": {"layers": [int, ...], "base": float, "in": float, "rl": float,
                                            "rl_minus_in": float, "in_minus_base": float}},
      "mid_late": {"rl_minus_in": float, "in_minus_base": float},  # mean over middle + late layers
      "skipped": [{"id": "<task>/<pair id>", "path": str, "reason": str}, ...]  # broken, left out (--skip-broken)
    }
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from frankeneval.core.outdir import claim_for, local_inputs
from frankeneval.core.results import write_json_atomic
from frankeneval.core.runstore import RunStore, list_of_numbers
from frankeneval.evaluation.inputs_check import format_skipped
from frankeneval.evaluation.probes import ProbePair
from frankeneval.evaluation.prompts import resolve_system_prompt
from frankeneval.localization.common import (
    MATH_INSTRUCTION,
    Unit,
    run_units,
)
from frankeneval.weights.fingerprint import data_fingerprint, model_fingerprint
from frankeneval.weights.layermap import llm_region

__all__ = ["MEMBERS", "attention_prompts", "format_attention_table", "run_attention_shift", "summarize_attention"]

MEMBERS = ("base", "in", "rl")
RESULTS_FILE = "attention_shift.json"
UNITS_FILE = "units.jsonl"


def attention_prompts(pairs_by_task: dict[str, list[ProbePair]], *, instruction: bool = True) -> list[dict]:
    """``[{"id", "task", "image", "prompt"}]``: each pair's target image and question (deduplicated)."""
    out, seen = [], set()
    for task, pairs in pairs_by_task.items():
        for p in pairs:
            prompt = f"{MATH_INSTRUCTION}\n\n{p.text_prompt}" if instruction else p.text_prompt
            key = (str(p.target_image), prompt)
            if key in seen:
                continue
            seen.add(key)
            pid = hashlib.sha1("\x00".join(key).encode()).hexdigest()[:12]
            out.append({"id": f"{task}/{p.id}/{pid}", "task": task, "image": str(p.target_image), "prompt": prompt})
    return out


def _member_units(member: str, prompts: Sequence[dict], system: str | None) -> list[Unit]:
    from frankeneval.engine.generation import GenRequest
    from frankeneval.engine.interventions import CaptureAttention

    units = []
    for p in prompts:
        units.append(Unit(f"{member}/{p['id']}", (p["image"], GenRequest(p["prompt"], [], system)),
                          [CaptureAttention(query="generated")], {"member": member, "prompt": p["id"]}))
    return units


def _executor(generator, max_new_tokens: int):
    from PIL import Image

    def execute(batch: list[Unit]) -> list[dict]:
        requests = []
        for u in batch:
            path, req = u.request
            with Image.open(path) as im:
                requests.append(type(req)(req.prompt, [im.convert("RGB")], req.system))
        results = generator.generate(requests, max_new_tokens=max_new_tokens,
                                     interventions=[u.interventions for u in batch], batch_size=len(batch))
        out = []
        for r in results:
            cap = r.captures[0]
            n = int(cap.mass.shape[-1]) if cap.mass.numel() else 0
            mass = cap.mean_mass().tolist() if n else None
            out.append({"mass": mass, "n_generated": n, "response": r.text})
        return out

    return execute


def run_attention_shift(
    members: dict[str, str],
    prompts: Sequence[dict],
    out_dir: str | os.PathLike,
    *,
    load: Callable[[str], Any],
    max_new_tokens: int = 256,
    batch_size: int = 16,
    system_prompt: str | None = "auto",
    instruction: bool = True,
    progress: bool = True,
    meta: dict | None = None,
    skipped: Sequence[dict] = (),
    decode: str = "auto",
) -> dict:
    """Capture the visual attention share of every member on ``prompts``; write units + ``attention_shift.json``.

    ``members``: ``{"base": path, "in": path, "rl": path}``; ``load(path) -> Generator`` (one member at a time);
    ``system_prompt``: the setting every member's prompt is resolved with (``auto``: per member, by its name).
    ``skipped``: the selected pairs left out as broken (:func:`frankeneval.localization.vision.select_probe_sets`),
    recorded in the results. ``decode``: the mode ``load`` gives its generators (``compiled`` is recorded in each
    member's input, so its answers are never mixed with another mode's).
    """
    out = Path(claim_for("attention-shift", out_dir, inputs=local_inputs(*members.items())))
    chosen = {m: resolve_system_prompt(path, system_prompt) for m, path in members.items()}
    mode = {"decode": "compiled"} if decode == "compiled" else {}
    inputs = {f"{m} model": {"weights": model_fingerprint(path), **mode} for m, path in members.items()}
    inputs["probe data"] = {"content": data_fingerprint([[p["id"], p["prompt"]] for p in prompts],
                                                        [p["image"] for p in prompts])}
    store = RunStore(out / UNITS_FILE, header={"analysis": "attention_shift", "members": dict(members),
                                               "max_new_tokens": max_new_tokens,
                                               "system": {m: p.text for m, p in chosen.items()}},
                     required={"mass": (list_of_numbers, type(None)), "response": str}, inputs=inputs)
    for member, path in members.items():
        units = _member_units(member, prompts, chosen[member].text)
        todo = store.missing(u.key for u in units)
        if not todo:
            continue
        generator = load(path)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"attention {member}", unit="gen")
        try:
            run_units(units, _executor(generator, max_new_tokens), store, batch_size=batch_size,
                      progress=bar.update if bar else None)
        finally:
            if bar:
                bar.close()
            del generator
            gc.collect()
    results = summarize_attention(store.records(), list(members), prompts)
    results.update({"members": dict(members), "tasks": sorted({p["task"] for p in prompts}),
                    "max_new_tokens": max_new_tokens, "instruction": instruction,
                    "system_prompt": {m: p.record() for m, p in chosen.items()},
                    **(meta or {}), "skipped": list(skipped)})
    write_json_atomic(out / RESULTS_FILE, results, indent=1, ensure_ascii=False, newline=False)
    return results


def summarize_attention(records: dict[str, dict], members: Sequence[str], prompts: Sequence[dict]) -> dict:
    """Member means per layer / head, the RL - IN and IN - Base differences, and the region summary."""
    heads: dict[str, np.ndarray] = {}
    for m in members:
        masses = [records[f"{m}/{p['id']}"]["mass"] for p in prompts if records.get(f"{m}/{p['id']}", {}).get("mass")]
        if masses:
            heads[m] = np.mean(np.asarray(masses, dtype=np.float64), axis=0)  # (layers, heads)
    n_layers = next(iter(heads.values())).shape[0] if heads else 0
    per_layer = {m: h.mean(axis=1) for m, h in heads.items()}
    layers = list(range(1, n_layers + 1))

    def diff(a: str, b: str):
        return (per_layer[a] - per_layer[b]).tolist() if a in per_layer and b in per_layer else None

    regions: dict[str, dict] = {}
    for name in ("early", "middle", "late"):
        idx = [j for j in range(n_layers) if llm_region(j, n_layers) == name]
        entry: dict[str, Any] = {"layers": [j + 1 for j in idx]}
        for m, v in per_layer.items():
            entry[m] = float(v[idx].mean()) if idx else None
        for key, (a, b) in {"rl_minus_in": ("rl", "in"), "in_minus_base": ("in", "base")}.items():
            entry[key] = (entry[a] - entry[b]) if idx and a in per_layer and b in per_layer else None
        regions[name] = entry
    ml = [j for j in range(n_layers) if llm_region(j, n_layers) in ("middle", "late")]
    mid_late = {}
    for key, (a, b) in {"rl_minus_in": ("rl", "in"), "in_minus_base": ("in", "base")}.items():
        mid_late[key] = (
            float((per_layer[a][ml] - per_layer[b][ml]).mean()) if ml and a in per_layer and b in per_layer else None
        )
    return {
        "analysis": "attention_shift",
        "n_prompts": len(prompts),
        "layers": layers,
        "visual_share": {m: v.tolist() for m, v in per_layer.items()},
        "visual_share_heads": {m: h.tolist() for m, h in heads.items()},
        "rl_minus_in": diff("rl", "in"),
        "in_minus_base": diff("in", "base"),
        "regions": regions,
        "mid_late": mid_late,
    }


def format_attention_table(results: dict) -> str:
    """Terminal table: visual share per layer for each member, and the two differences."""
    members = list(results["visual_share"])
    head = f"{'layer':>5} " + " ".join(f"{m:>8}" for m in members) + f" {'RL-IN':>9} {'IN-Base':>9}"
    lines = [head, "-" * len(head)]
    for i, L in enumerate(results["layers"]):
        vals = " ".join(f"{results['visual_share'][m][i]:8.4f}" for m in members)
        a = results["rl_minus_in"][i] if results["rl_minus_in"] else None
        b = results["in_minus_base"][i] if results["in_minus_base"] else None
        lines.append(f"{L:>5} {vals} {'-' if a is None else f'{a:+9.4f}':>9} {'-' if b is None else f'{b:+9.4f}':>9}")
    for name, r in results["regions"].items():
        a, b = r.get("rl_minus_in"), r.get("in_minus_base")
        lines.append(f"{name:>7} (layers {r['layers'][0] if r['layers'] else '-'}-"
                     f"{r['layers'][-1] if r['layers'] else '-'}): "
                     f"RL-IN {'-' if a is None else f'{a:+.4f}'}  IN-Base {'-' if b is None else f'{b:+.4f}'}")
    ml = results["mid_late"]

    def f(x):
        return "-" if x is None else f"{x:+.4f}"

    lines.append(f"mid+late: RL-IN {f(ml['rl_minus_in'])}  IN-Base {f(ml['in_minus_base'])}")
    return "\n".join(lines + format_skipped(results.get("skipped")))
