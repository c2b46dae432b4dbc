"""Vision localization: the visual-token KV swap sweep (docs/method.md §4.1).

For each probe pair (target image, source image, prompt) of each task, three kinds of generation:

* the **original** answer: the target image, no intervention;
* the **source's own** answer: the source image, no intervention;
* for each unified LLM layer ``L`` of the sweep, the **swapped** answer: the target image with, at every LLM
  layer ``>= L`` (unified; decoder modules ``L - 1`` on), the keys/values at the visual-token positions replaced by
  the source's post-RoPE keys/values, at prefill (decode steps read the edited cache). Greedy, ``max_new_tokens`` (64).

The prompt is the data's ``prompt`` field verbatim (a literal ``<image>`` stays text), after the image. Pairs: the
paper's sub-sample (``--samples k``: ``RandomState(seed).choice``, sorted; default all). Before any model work every
selected pair's two images are decoded (:func:`select_probe_sets`): a broken file stops the run in one line, or with
``--skip-broken`` the pair is left out (not replaced) and listed under ``skipped`` in the results and the table.
The default swap needs the pair's two images to give the same number of visual tokens: a pair that does not (the
counts follow from the image sizes through the processor, :func:`unequal_pairs`) is refused before any model work on
it, recorded (``refused`` in the results and the table, a ``refused/<task>/<pair id>`` record in the store, never a
result) and the other pairs run; its task's rates are over the pairs that ran.

``seed_compatible=True`` (``--seed-compatible``) reproduces the reference code: the swap also re-appends the source's
visual K/V at every decode step (:class:`frankeneval.engine.interventions.SwapVisualKV`), the pairs are the first
50 (or ``samples``) of each task file, in file order, and a pair of unequal visual-token counts runs with the source's
K/V interpolated over token positions (:meth:`frankeneval.engine.interventions.VisualKV.resized`), never refused.
Its swap units are keyed apart and the run store's header records it, so a run never reuses units computed with the
other setting.

Speed by design: the source's visual K/V is computed once per pair (one prefill) and shared by all of the
pair's layers; the units (pair x layer) are packed into batched ``Generator.generate`` calls with a different
``SwapVisualKV`` per row; plain generations are keyed by (image content, prompt) so a repeated prompt/image is
generated once. Every finished unit is appended to ``units.jsonl`` (:class:`frankeneval.core.runstore.RunStore`);
a rerun skips it.

Metrics per task and layer (see :mod:`frankeneval.localization.common`): ``change_rate`` (the method's rule,
seed-compatible), ``task_change_rate`` (numbers / words / boxes by IoU >= 0.5 / yes-no), ``source_follow_rate``
(the swapped answer equals the model's own answer on the source image, task-aware), the same over the
*informative* pairs only (those whose original and source answers differ, task-aware), and
``source_truth_rate`` (the swapped answer is correct for the source image's ground truth).

Peak layer per task (:func:`frankeneval.localization.common.peak_rise`, for ``change_rate`` and
``task_change_rate``): swapping from L on covers every layer >= L, so the change rate falls as L grows; the rise at
L is ``rate(L) - rate(L')`` (L' the next swept layer above L), what layers L … L' - 1 add when they join the swap,
and the peak is the L of the largest rise -- the paper's reading of the plot. Its 95 % interval: 2000 bootstrap
resamples of the task's pairs (seed 0), the peak recomputed on each.

Output ``vision_localization.json`` schema::

    {
      "analysis": "vision_localization",
      "model": str, "max_new_tokens": int, "system": str | null,
      "seed_compatible": bool,                # the reference's decode-step re-append and first-50 pairs
      "pair_selection": str,                  # how the pairs were chosen (select_pairs; given by the command)
      "layers": [int, ...],                   # unified LLM indices swept (decoder layer j = L - 1)
      "samples": int | null, "seed": int, "data": str,
      "tasks": {
        "<task>": {
          "n_pairs": int,                     # pairs that ran (the rates are over these)
          "n_refused": int,                   # pairs refused as unequal (default mode)
          "target_accuracy": float,           # original answers correct for the target's ground truth
          "source_accuracy": float,           # source's own answers correct for the source's ground truth
          "n_informative": int,               # pairs whose original and source answers differ (task-aware)
          "layers": [ {"layer": int, "decoder_layer": int, "n": int,   # unified LLM layer; decoder index layer - 1
                                                                       # (= the reference's 0-based swap layer)
                       "change_rate": float, "task_change_rate": float,
                       "source_follow_rate": float, "source_follow_rate_informative": float | null,
                       "source_truth_rate": float}, ... ],
          "peak": {                           # where the change rate rises most (common.peak_rise), per metric
            "change_rate" | "task_change_rate": {
              "layer": int | null,            # swept L of the largest rise rate(L) - rate(L'), L' the next swept
              "decoder_layer": int | null,    #   layer above L (the swap from L on adds layers L … L'-1); null when
              "next_layer": int | null,       #   nothing rises
              "rise": float, "rate": float | null, "next_rate": float | null,
              "layer_ci": [int, int] | null,  # 95 % percentile bootstrap over pairs of the peak layer
              "rise_ci": [float, float] | null,   # ... and of the rise at the point peak's span
              "agreement": float | null,      # share of resamples whose peak is the point peak
              "n": int, "n_resamples": int, "seed": int, "level": float} | null   # null: < 2 layers or no pairs
          }
        }, ...
      },
      "pairs": [ {"task": str, "id": str, "original": str, "source_own": str,
                  "swapped": {"<unified layer>": str, ...}}, ... ],
      "n_refused": int,
      "refused": [ {"task": str, "id": str, "target_tokens": int, "source_tokens": int, "reason": str}, ... ],
                                              # unequal visual-token counts (default mode; not in any figure)
      "skipped": [ {"id": "<task>/<pair id>", "path": str, "reason": str}, ... ]   # selected but broken
    }                                                                              # (--skip-broken; not in any figure)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frankeneval.core.outdir import claim_for, local_inputs
from frankeneval.core.results import write_json_atomic
from frankeneval.core.runstore import RunStore
from frankeneval.errors import FrankenevalError
from frankeneval.evaluation.data import DEFAULT_SAMPLE_SEED, note_all_samples, subsample
from frankeneval.evaluation.inputs_check import check_inputs, format_skipped
from frankeneval.evaluation.probes import (
    PROBE_TASKS,
    ProbePair,
    check_pair,
    load_probe_pairs,
)
from frankeneval.evaluation.scoring import probe_correct
from frankeneval.localization.common import (
    PEAK_RESAMPLES,
    PEAK_SEED,
    Unit,
    answer_changed,
    check_layers,
    model_input,
    peak_rise,
    rate,
    run_units,
    source_follows,
    task_changed,
)

__all__ = [
    "REFERENCE_PAIRS",
    "VISION_MAX_NEW_TOKENS",
    "format_peak",
    "format_peaks",
    "format_refused",
    "format_vision_table",
    "load_probe_sets",
    "make_executor",
    "pair_selection",
    "plain_key",
    "probe_fingerprint",
    "refusal_key",
    "run_vision_sweep",
    "select_pairs",
    "select_probe_sets",
    "summarize_vision",
    "swap_key",
    "unequal_pairs",
    "vision_units",
]

VISION_MAX_NEW_TOKENS = 64
REFERENCE_PAIRS = 50  # the reference code uses the first 50 pairs of each task file (seed-compatible)
RESULTS_FILE = "vision_localization.json"
UNITS_FILE = "units.jsonl"


def load_probe_sets(tasks: Sequence[str] = PROBE_TASKS, **selection) -> dict[str, list[ProbePair]]:
    """Probe pairs per task: :func:`select_probe_sets` (same keywords) without the skipped list; a broken image or
    row raises :class:`~frankeneval.evaluation.inputs_check.BrokenInput` unless ``skip_broken``."""
    return select_probe_sets(tasks, **selection)[0]


def select_probe_sets(
    tasks: Sequence[str] = PROBE_TASKS,
    *,
    data: str | os.PathLike | None = None,
    samples: int | None = None,
    seed: int = DEFAULT_SAMPLE_SEED,
    seed_compatible: bool = False,
    skip_broken: bool = False,
    progress: bool = True,
) -> tuple[dict[str, list[ProbePair]], list[dict]]:
    """``(pairs per task, skipped)``: :func:`select_pairs` per task, then every selected pair's images decoded
    (:func:`frankeneval.evaluation.inputs_check.check_inputs`). A broken pair raises one
    :class:`~frankeneval.evaluation.inputs_check.BrokenInput`, or with ``skip_broken`` is left out (never replaced by
    another pair) and listed in ``skipped`` (``{"id": "<task>/<pair id>", "path", "reason"}``).
    """
    if data is None:  # the built-in probes are rendered before (make-probes, --rendered: the commands' layer)
        raise FrankenevalError("give a probe folder (--data), or render the built-in probes first (frankeneval "
                               "make-probes OUT, or --rendered)")
    selected = []
    for task in tasks:
        pairs = load_probe_pairs(data, task, check_images=False, keep_broken=True)
        if not pairs:
            raise FrankenevalError(f"no probe pairs for task {task!r} in {data}")
        note_all_samples(samples, len(pairs), f"{task} pairs in {data}")
        selected += [(task, p) for p in select_pairs(pairs, samples, seed, seed_compatible=seed_compatible)]

    def ident(item) -> str:
        task, p = item
        return f"{task}/{p.id}" if isinstance(p, ProbePair) else f"{task}/{p.where.rsplit('/', 1)[-1]}"

    good, skipped = check_inputs(selected, lambda item: (item[0], check_pair(item[1])), ident=ident,
                                 skip=skip_broken, what="probe pairs", progress=progress)
    out: dict[str, list[ProbePair]] = {task: [] for task in tasks}
    for task, p in good:
        out[task].append(p)
    if skipped and not good:
        raise FrankenevalError(f"every selected probe pair is broken ({len(skipped)}); nothing to run")
    return out, skipped


def select_pairs(pairs: Sequence[ProbePair], samples: int | None, seed: int = DEFAULT_SAMPLE_SEED, *,
                 seed_compatible: bool = False) -> list[ProbePair]:
    """The pairs a run uses, from one task's pairs in file order.

    Default (the paper): the sub-sample ``sorted(RandomState(seed).choice(n, samples))``, all when ``samples`` is
    None. Seed-compatible (the reference code): the first ``samples`` (default 50) pairs, in file order.
    """
    if seed_compatible:
        return list(pairs[: samples or REFERENCE_PAIRS])
    return subsample(pairs, samples, seed)


def pair_selection(samples: int | None, seed: int = DEFAULT_SAMPLE_SEED, *, seed_compatible: bool = False) -> str:
    """How :func:`select_pairs` chose the pairs, in words (recorded in the results)."""
    if seed_compatible:
        return f"first {samples or REFERENCE_PAIRS} of each task file (reference code)"
    return f"RandomState({seed}).choice(n, {samples}), sorted" if samples else "all"


def probe_fingerprint(pairs_by_task: dict[str, list[ProbePair]]) -> str:
    """The content fingerprint of the selected pairs: their data.jsonl fields (id, prompt, meta) and both images'
    bytes (:func:`frankeneval.weights.fingerprint.data_fingerprint`)."""
    from frankeneval.weights.fingerprint import data_fingerprint

    pairs = [(task, p) for task, plist in pairs_by_task.items() for p in plist]
    return data_fingerprint([[task, p.id, p.prompt, p.meta] for task, p in pairs],
                            [f for _, p in pairs for f in (p.target_image, p.source_image)])


def _file_digest(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def _text_digest(*parts: Any) -> str:
    return hashlib.sha1("\x00".join(str(p) for p in parts).encode()).hexdigest()[:12]


def plain_key(image: Path, prompt: str, system: str | None) -> str:
    """Store key of an unmodified generation: image content + prompt (so duplicates are generated once)."""
    return f"gen/{_file_digest(image)}/{_text_digest(system, prompt)}"


def swap_key(pair: ProbePair, layer: int, system: str | None = None, *, seed_compatible: bool = False) -> str:
    """Store key of a swap unit: pair, prompt (+ system), layer, and the seed-compatible mode (never mixed)."""
    key = f"swap/{pair.task}/{pair.id}/{_text_digest(system, pair.prompt)}/L{layer}"
    return key + ("/seed" if seed_compatible else "")


def _open_image(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def refusal_key(task: str, pair_id: str) -> str:
    """Store key of a refused pair's record (never a result: no summary reads it)."""
    return f"refused/{task}/{pair_id}"


def unequal_pairs(processor, pairs_by_task: dict[str, list[ProbePair]]) -> list[dict]:
    """The pairs whose target and source images give different visual-token counts, which the default swap refuses:
    ``{"task", "id", "target_tokens", "source_tokens", "reason"}`` each, in pair order. The counts come from the
    image sizes through the processor (:func:`frankeneval.engine.encoding.visual_token_count`), no model work."""
    from PIL import Image

    from frankeneval.engine.encoding import visual_token_count

    counts: dict[Path, int] = {}

    def tokens(path: Path) -> int:
        if path not in counts:
            with Image.open(path) as im:  # the size only: the header is read, not the pixels
                counts[path] = visual_token_count(processor, im.size)
        return counts[path]

    refused = []
    for task, pairs in pairs_by_task.items():
        for pair in pairs:
            n_target, n_source = tokens(pair.target_image), tokens(pair.source_image)
            if n_target != n_source:
                refused.append({"task": task, "id": pair.id, "target_tokens": n_target, "source_tokens": n_source,
                                "reason": f"unequal visual-token counts (target {n_target}, source {n_source}): the "
                                          "default swap needs equal counts; --seed-compatible interpolates, as the "
                                          "reference"})
    return refused


def vision_units(pairs_by_task: dict[str, list[ProbePair]], layers: Sequence[int], system: str | None = None, *,
                 seed_compatible: bool = False) -> tuple[list[Unit], dict]:
    """All units of the sweep, in execution order (a pair's plain and swap units together), and a key index.

    Every prompt is the pair's ``prompt`` verbatim (docs/method.md: a literal ``<image>`` stays text).

    Returns ``(units, keys)`` with ``keys[(task, pair_id)] = {"original": key, "source_own": key,
    "swapped": {layer: key}}``. Plain units with the same key appear once.
    """
    units: list[Unit] = []
    seen: set[str] = set()
    keys: dict[tuple[str, str], dict] = {}
    for task, pairs in pairs_by_task.items():
        for pair in pairs:
            prompt = pair.prompt  # verbatim, after the image
            k_orig = plain_key(pair.target_image, prompt, system)
            k_src = plain_key(pair.source_image, prompt, system)
            for key, image in ((k_orig, pair.target_image), (k_src, pair.source_image)):
                if key not in seen:
                    seen.add(key)
                    units.append(Unit(key, ("plain", image, prompt), [], {"kind": "plain", "image": str(image)},
                                      group=pair.id))
            swapped = {}
            for layer in layers:
                key = swap_key(pair, layer, system, seed_compatible=seed_compatible)
                swapped[layer] = key
                info = {"kind": "swap", "task": task, "pair": pair.id, "layer": layer}
                units.append(Unit(key, ("swap", pair, prompt, layer), [], info, group=pair.id))
            keys[(task, pair.id)] = {"original": k_orig, "source_own": k_src, "swapped": swapped}
    return units, keys


def make_executor(generator, *, max_new_tokens: int, system: str | None, seed_compatible: bool = False):
    """``execute(batch) -> records``: one batched generate call; source K/V computed once per pair (cached).

    ``seed_compatible``: the swaps re-append the source's visual K/V at every decode step (the reference code).
    """
    from frankeneval.engine.generation import GenRequest
    from frankeneval.engine.interventions import SwapVisualKV

    source_kv: dict[str, Any] = {}

    def execute(batch: list[Unit]) -> list[dict]:
        requests, rows = [], []
        opened: dict = {}  # one image object per file in a batch (the encoder then hashes and encodes it once)

        def image(path):
            if path not in opened:
                opened[path] = _open_image(path)
            return opened[path]

        live = {u.group for u in batch}
        for pid in list(source_kv):  # units come pair by pair: drop sources no longer needed
            if pid not in live:
                del source_kv[pid]
        new = {u.request[1].id: u.request for u in batch if u.request[0] == "swap" and u.request[1].id not in source_kv}
        if new:  # the batch's new sources, through the vision tower together
            kvs = generator.visual_kvs([image(r[1].source_image) for r in new.values()],
                                       prompts=[r[2] for r in new.values()], system=system)
            source_kv.update(zip(new, kvs))
        for u in batch:
            kind = u.request[0]
            if kind == "plain":
                _, path, prompt = u.request
                requests.append(GenRequest(prompt, [image(path)], system))
                rows.append([])
            else:
                _, pair, prompt, layer = u.request
                requests.append(GenRequest(prompt, [image(pair.target_image)], system))
                rows.append([SwapVisualKV(source=source_kv[pair.id], from_layer=layer,  # unified
                                          seed_compatible=seed_compatible)])
        results = generator.generate(requests, max_new_tokens=max_new_tokens, interventions=rows,
                                     batch_size=len(requests),
                                     repetition_penalty="checkpoint" if seed_compatible else None)
        return [{"response": r.text, "n_tokens": len(r.token_ids)} for r in results]

    return execute


def run_vision_sweep(
    generator,
    pairs_by_task: dict[str, list[ProbePair]],
    layers: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    model_name: str,
    max_new_tokens: int = VISION_MAX_NEW_TOKENS,
    batch_size: int = 32,
    system: str | None = None,
    seed_compatible: bool = False,
    progress: bool = True,
    meta: dict | None = None,
    skipped: Sequence[dict] = (),
) -> dict:
    """Run (or resume) the swap sweep, write ``units.jsonl`` + ``vision_localization.json``; return the results.

    ``seed_compatible``: the reference's decode-step re-append in every swap (pick the pairs with
    :func:`select_pairs`); recorded in the results and the store header (a store of the other setting is refused).
    ``skipped``: the selected pairs left out as broken (:func:`select_probe_sets`), recorded in the results.
    Default mode: a pair of unequal visual-token counts (:func:`unequal_pairs`, from the image sizes, before any
    model work) is refused on its own -- recorded in the store (:func:`refusal_key`, never a result) and under
    ``refused`` in the results -- and the other pairs run (a generator without a ``processor`` is not checked).
    """
    out = Path(claim_for("localize-vision", out_dir, inputs=local_inputs(("model", model_name))))
    n_layers = generator.model.config.get_text_config().num_hidden_layers
    check_layers(layers, n_layers)
    store = RunStore(out / UNITS_FILE, header={"analysis": "vision_localization", "model": model_name,
                                               "max_new_tokens": max_new_tokens, "system": system,
                                               "seed_compatible": bool(seed_compatible)},
                     required={"response": str},
                     inputs={"model": model_input(generator, model_name),
                             "probe data": {"content": probe_fingerprint(pairs_by_task)}})
    processor = getattr(generator, "processor", None)
    refused = [] if seed_compatible or processor is None else unequal_pairs(processor, pairs_by_task)
    for r in refused:  # recorded once; a resume refuses the pair again from the sizes, before any model work
        record = {"kind": "refused", "task": r["task"], "pair": r["id"], "target_tokens": r["target_tokens"],
                  "source_tokens": r["source_tokens"], "reason": r["reason"], "response": ""}  # no answer
        if store.get(refusal_key(r["task"], r["id"])) != record:
            store.append(refusal_key(r["task"], r["id"]), record)
    out_ids = {(r["task"], r["id"]) for r in refused}
    pairs_by_task = {task: [p for p in pairs if (task, p.id) not in out_ids] for task, pairs in pairs_by_task.items()}
    units, keys = vision_units(pairs_by_task, layers, system, seed_compatible=seed_compatible)
    todo = len(store.missing(u.key for u in units))
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo, desc="swap sweep", unit="gen")
    try:
        execute = make_executor(generator, max_new_tokens=max_new_tokens, system=system,
                                seed_compatible=seed_compatible)
        run_units(units, execute, store, batch_size=batch_size, progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    results = summarize_vision(store.records(), pairs_by_task, keys, layers, refused=refused)
    results.update({"model": model_name, "max_new_tokens": max_new_tokens, "system": system, **(meta or {}),
                    "seed_compatible": bool(seed_compatible), "skipped": list(skipped)})
    write_json_atomic(out / RESULTS_FILE, results, indent=1, ensure_ascii=False, newline=False)
    return results


def summarize_vision(records: dict[str, dict], pairs_by_task: dict[str, list[ProbePair]], keys: dict,
                     layers: Sequence[int], *, refused: Sequence[dict] = (), n_resamples: int = PEAK_RESAMPLES,
                     seed: int = PEAK_SEED) -> dict:
    """Per task and layer metrics from finished unit records (see the module docstring), over the pairs that ran
    (``pairs_by_task``); ``refused``: the pairs refused as unequal (:func:`unequal_pairs`), counted and listed.
    Each task's ``peak``: :func:`~frankeneval.localization.common.peak_rise` of the per-pair change flags
    (``n_resamples`` bootstrap resamples of the pairs, ``seed``)."""
    tasks_out: dict[str, Any] = {}
    pairs_out = []
    for task, pairs in pairs_by_task.items():
        per_layer: dict[int, dict[str, list]] = {L: {"chg": [], "tchg": [], "follow": [], "follow_inf": [],
                                                     "truth": []} for L in layers}
        tgt_ok, src_ok, n_inf = [], [], 0
        for pair in pairs:
            k = keys[(task, pair.id)]
            orig = records[k["original"]]["response"]
            src = records[k["source_own"]]["response"]
            iou = float(pair.meta.get("iou_threshold", 0.5))
            tgt_ok.append(probe_correct(task, orig, pair.meta, "target"))
            src_ok.append(probe_correct(task, src, pair.meta, "source"))
            informative = task_changed(task, orig, src, iou_threshold=iou)
            n_inf += informative
            swapped = {}
            for L in layers:
                sw = records[k["swapped"][L]]["response"]
                swapped[str(L)] = sw
                acc = per_layer[L]
                acc["chg"].append(answer_changed(orig, sw))
                acc["tchg"].append(task_changed(task, orig, sw, iou_threshold=iou))
                follow = source_follows(task, sw, src, iou_threshold=iou)
                acc["follow"].append(follow)
                if informative:
                    acc["follow_inf"].append(follow)
                acc["truth"].append(probe_correct(task, sw, pair.meta, "source"))
            pairs_out.append({"task": task, "id": pair.id, "original": orig, "source_own": src, "swapped": swapped})
        tasks_out[task] = {
            "n_pairs": len(pairs),
            "n_refused": sum(r["task"] == task for r in refused),
            "target_accuracy": rate(tgt_ok),
            "source_accuracy": rate(src_ok),
            "n_informative": n_inf,
            "layers": [
                {"layer": L, "decoder_layer": L - 1, "n": len(per_layer[L]["chg"]),
                 "change_rate": rate(per_layer[L]["chg"]), "task_change_rate": rate(per_layer[L]["tchg"]),
                 "source_follow_rate": rate(per_layer[L]["follow"]),
                 "source_follow_rate_informative": rate(per_layer[L]["follow_inf"]),
                 "source_truth_rate": rate(per_layer[L]["truth"])}
                for L in layers
            ],
            "peak": {metric: peak_rise([list(f) for f in zip(*(per_layer[L][flag] for L in layers))], layers,
                                       n_resamples=n_resamples, seed=seed)
                     for metric, flag in (("change_rate", "chg"), ("task_change_rate", "tchg"))},
        }
    return {"analysis": "vision_localization", "layers": list(layers), "tasks": tasks_out, "pairs": pairs_out,
            "n_refused": len(refused), "refused": [dict(r) for r in refused]}


def format_vision_table(results: dict) -> str:
    """A terminal table: one row per layer, change / task-change / source-follow per task."""
    tasks = list(results["tasks"])
    head = f"{'layer':>5} | " + " | ".join(f"{t[:11]:^23}" for t in tasks)
    sub = f"{'':>5} | " + " | ".join(f"{'chg':>7}{'task':>8}{'follow':>8}" for _ in tasks)
    lines = [head, sub, "-" * len(sub)]

    def f(x):
        return "   -   " if x is None else f"{x:7.2f}"

    for i, L in enumerate(results["layers"]):
        cells = []
        for t in tasks:
            row = results["tasks"][t]["layers"][i]
            cells.append(f"{f(row['change_rate'])} {f(row['task_change_rate'])} {f(row['source_follow_rate'])}")
        lines.append(f"{L:>5} | " + " | ".join(cells))
    acc = "  ".join(f"{t}: target acc {f(results['tasks'][t]['target_accuracy']).strip()}, "
                    f"informative {results['tasks'][t]['n_informative']}/{results['tasks'][t]['n_pairs']}"
                    for t in tasks)
    lines.append(acc)
    lines += format_peaks(results)
    if results.get("seed_compatible"):
        lines.append("seed-compatible: the reference's decode-step re-append; " + results.get("pair_selection", ""))
    return "\n".join(lines + format_refused(results.get("refused")) + format_skipped(results.get("skipped")))


def format_peak(peak: dict | None) -> str:
    """One peak (:func:`~frankeneval.localization.common.peak_rise`) in words: ``layer 14 (rise +0.42 vs layer 15;
    95% CI layer 12-16, rise +0.20..+0.60; the peak in 81% of resamples)``."""
    if not peak:
        return "-"
    if peak["layer"] is None:
        return "none (the rate never rises)"
    text = f"layer {peak['layer']} (rise {peak['rise']:+.2f} vs layer {peak['next_layer']}"
    if peak.get("layer_ci") and peak.get("rise_ci"):
        lo, hi = peak["layer_ci"]
        rlo, rhi = peak["rise_ci"]
        text += (f"; {round(100 * peak['level'])}% CI layer {lo if lo == hi else f'{lo}-{hi}'}, rise {rlo:+.2f}.."
                 f"{rhi:+.2f}; the peak in {100 * peak['agreement']:.0f}% of resamples")
    return text + ")"


def format_peaks(results: dict) -> list[str]:
    """Report lines: per task, the layer where the change rate rises most (the method's rule, then task-aware)."""
    tasks = {t: r.get("peak") for t, r in results["tasks"].items() if r.get("peak")}
    if not tasks:
        return []
    first = next((p for peaks in tasks.values() for p in peaks.values() if p), None)
    how = f" ({first['n_resamples']} bootstrap resamples of the pairs, seed {first['seed']})" if first else ""
    lines = ["peak: the swap-start layer L where the change rate rises most, rate(L) - rate(L'), L' the next swept "
             "layer" + how]
    width = max(len(t) for t in tasks)
    for t, peaks in tasks.items():
        lines.append(f"  {t:<{width}}  method:     {format_peak(peaks.get('change_rate'))}")
        lines.append(f"  {'':<{width}}  task-aware: {format_peak(peaks.get('task_change_rate'))}")
    return lines


def format_refused(refused: Sequence[dict] | None, limit: int = 20) -> list[str]:
    """Report lines for the pairs refused as unequal (none when nothing was refused)."""
    if not refused:
        return []
    n = len(refused)
    lines = [f"refused {n} pair{'s' if n != 1 else ''} of unequal visual-token counts (not in the figures above; "
             "--seed-compatible interpolates them, as the reference):"]
    lines += [f"  {r['task']}/{r['id']}: target {r['target_tokens']}, source {r['source_tokens']} visual tokens"
              for r in refused[:limit]]
    if n > limit:
        lines.append(f"  ... and {n - limit} more (see the output's 'refused' record)")
    return lines
