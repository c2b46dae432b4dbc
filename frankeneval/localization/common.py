"""Shared pieces of the localization sweeps: layer selection, answer-change metrics, batched unit execution.

Layer indices: every sweep speaks the unified axis -- LLM layers 1 … n (decoder layer ``j`` is unified ``j + 1``), as
the interventions take them. ``--layers`` is parsed by :func:`frankeneval.weights.layermap.parse_layers` (``1-28``,
``1,5,9``, ``late``, ``all``).

Answer-change metrics (vision localization, :mod:`frankeneval.localization.vision`):

* :func:`answer_changed` -- the method's rule (seed-compatible with the reference): both answers lower-cased,
  stripped, trailing ``.,!?;:`` removed; if both are shorter than 20 characters they *changed* when they differ;
  otherwise (either one 20 characters or longer) they are *unchanged* when one contains the other, changed if not.
* :func:`task_answer` / :func:`task_equal` -- frankeneval's task-aware reading of a probe response: counting ->
  the integer (digits or number words), OCR -> the word (case, spaces and punctuation ignored), grounding -> the
  ``xyxy`` box (equal when IoU >= 0.5), recognition -> yes / no. Responses are first reduced to their
  ``<answer>`` / ``\\boxed{}`` content when they have one. When neither response parses, they are compared as
  normalized strings; when only one parses, they differ.
* task-aware changed = not :func:`task_equal` (swapped, original); source-follow = :func:`task_equal` (swapped,
  the model's own answer on the source image).

Peak layer (:func:`peak_rise`, the vision sweep's summary): the swap from layer L on replaces the visual K/V at every
layer >= L, so a smaller L swaps more layers and the change rate falls as L grows. The *rise* at swept layer L is
``rate(L) - rate(L')``, L' the next swept layer above L: how much the change rate grows when the swap's start moves
down from L' to L, i.e. when layers L … L' - 1 join it. The peak is the L with the largest rise (the paper's reading
of the plot: where the answer starts to follow the swapped image), with a percentile bootstrap over pairs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from frankeneval.errors import FrankenevalError
from frankeneval.evaluation.scoring import (
    box_iou,
    parse_box,
    parse_count,
    parse_yes_no,
    short_answer,
)
from frankeneval.weights.layermap import decoder_index
from frankeneval.weights.layermap import parse_layers as _parse_layers

__all__ = [
    "CHANGE_MIN_CONTAINMENT_LEN",
    "PEAK_LEVEL",
    "PEAK_RESAMPLES",
    "PEAK_SEED",
    "MATH_INSTRUCTION",
    "Unit",
    "answer_changed",
    "normalize_answer",
    "parse_layers",
    "peak_rise",
    "rate",
    "run_units",
    "source_follows",
    "task_answer",
    "task_changed",
    "task_equal",
]

CHANGE_MIN_CONTAINMENT_LEN = 20
PEAK_RESAMPLES = 2000  # bootstrap resamples of the peak layer
PEAK_SEED = 0
PEAK_LEVEL = 0.95

# --------------------------------------------------------------------------- prompts (docs/method.md)

MATH_INSTRUCTION = 'Please solve the problem step by step and put your answer in one "\\boxed{}".'
# the system prompt: frankeneval.evaluation.prompts (docs/method.md §3; one resolver for every analysis)
_TRAILING = ".,!?;:"


# --------------------------------------------------------------------------- answer-change metrics


def normalize_answer(text: Any) -> str:
    """The reference's normalization, exactly: ``lower().strip().rstrip(".,!?;:")`` -- one strip, so a space left
    before the removed punctuation stays ("3 ." -> "3 ", which differs from "3")."""
    return str(text if text is not None else "").lower().strip().rstrip(_TRAILING)


def answer_changed(original: Any, swapped: Any) -> bool:
    """The method's change rule: exact for short answers (< 20 chars), containment for longer ones."""
    a, b = normalize_answer(original), normalize_answer(swapped)
    if len(a) < CHANGE_MIN_CONTAINMENT_LEN and len(b) < CHANGE_MIN_CONTAINMENT_LEN:
        return a != b
    return not (a in b or b in a)


def _word(text: str) -> str | None:
    w = re.sub(r"[^\w]", "", text.lower())
    return w or None


def task_answer(task: str, response: Any) -> Any:
    """The task-aware reading of a probe response (int / word / box / "yes"|"no"), or None if it has none."""
    text = short_answer(str(response if response is not None else ""))
    if task == "counting":
        return parse_count(text)
    if task == "ocr":
        return _word(text)
    if task == "grounding":
        return parse_box(text)
    if task == "recognition":
        return parse_yes_no(text)
    raise FrankenevalError(f"unknown probe task {task!r}")


def task_equal(task: str, a: Any, b: Any, *, iou_threshold: float = 0.5) -> bool:
    """Whether two responses give the same task answer (boxes: IoU >= ``iou_threshold``)."""
    pa, pb = task_answer(task, a), task_answer(task, b)
    if pa is None and pb is None:
        return normalize_answer(a) == normalize_answer(b)
    if pa is None or pb is None:
        return False
    if task == "grounding":
        return box_iou(pa, pb) >= iou_threshold
    return pa == pb


def task_changed(task: str, original: Any, swapped: Any, *, iou_threshold: float = 0.5) -> bool:
    """Task-aware change: the swapped answer is not the same task answer as the original."""
    return not task_equal(task, original, swapped, iou_threshold=iou_threshold)


def source_follows(task: str, swapped: Any, source_own: Any, *, iou_threshold: float = 0.5) -> bool:
    """Source-follow: the swapped answer equals the model's own answer on the source image (task-aware)."""
    return task_equal(task, swapped, source_own, iou_threshold=iou_threshold)


def rate(flags: Iterable[bool]) -> float | None:
    """Mean of booleans (None when empty)."""
    flags = list(flags)
    return sum(bool(f) for f in flags) / len(flags) if flags else None


def peak_rise(flags: Sequence[Sequence[bool]], layers: Sequence[int], *, n_resamples: int = PEAK_RESAMPLES,
              seed: int = PEAK_SEED, level: float = PEAK_LEVEL) -> dict | None:
    """The layer where a swap-from-L rate rises most, with a percentile bootstrap over pairs.

    ``flags[i][j]``: whether pair ``i`` changed with the swap starting at ``layers[j]`` (unified). The rate at L is
    the share of pairs flagged; the rise at L is ``rate(L) - rate(L')``, L' the next swept layer above L (the
    direction: swapping from L on covers every layer >= L, so moving the start down from L' to L adds layers
    L … L' - 1 to the swap, and the rise is what they add). The deepest swept layer has no L' and no rise. The peak
    is the L of the largest rise (ties: the lowest L); when no rise is positive there is no peak (``layer`` None).

    Bootstrap: ``n_resamples`` resamples of the pairs with replacement (``numpy.random.default_rng(seed)``), the
    peak recomputed on each. ``layer_ci``: the ``level`` percentile interval of the resampled peak layers (resamples
    where nothing rises are left out; the bounds are swept layers, numpy's ``inverted_cdf`` quantiles);
    ``rise_ci``: the percentile interval of the rise at the point peak (the same span L … L' - 1) in the resamples;
    ``agreement``: the share of resamples whose peak is the point peak.

    Returns ``{"layer", "decoder_layer", "next_layer", "rise", "rate", "next_rate", "layer_ci", "rise_ci",
    "agreement", "n", "n_resamples", "seed", "level"}``, or None with fewer than two layers or no pairs.
    """
    import numpy as np

    order = sorted(range(len(layers)), key=lambda j: layers[j])
    x = np.asarray(flags, dtype=np.int64).reshape(len(flags), len(layers))[:, order] if len(flags) else None
    ls = [int(layers[j]) for j in order]
    if x is None or len(ls) < 2:
        return None
    n = x.shape[0]

    def peaks(counts):  # counts: (..., k) changed pairs per layer; integer rises, so ties are exact
        rises = counts[..., :-1] - counts[..., 1:]
        best = rises.argmax(axis=-1)  # the first maximum: the lowest layer
        return best, np.take_along_axis(rises, best[..., None], axis=-1)[..., 0], rises

    counts = x.sum(axis=0)
    best, top, _ = peaks(counts)
    point = int(best) if top > 0 else None
    out = {"layer": ls[point] if point is not None else None,
           "decoder_layer": ls[point] - 1 if point is not None else None,
           "next_layer": ls[point + 1] if point is not None else None,
           "rise": float(top) / n,
           "rate": float(counts[point]) / n if point is not None else None,
           "next_rate": float(counts[point + 1]) / n if point is not None else None,
           "layer_ci": None, "rise_ci": None, "agreement": None,
           "n": n, "n_resamples": int(n_resamples), "seed": int(seed), "level": float(level)}
    if point is None or n_resamples <= 0:
        return out
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    weights = np.bincount((idx + n * np.arange(n_resamples)[:, None]).ravel(),
                          minlength=n_resamples * n).reshape(n_resamples, n)
    b_best, b_top, b_rises = peaks(weights @ x)  # (resamples, k) changed counts
    have = b_top > 0
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    if have.any():
        lo, hi = np.quantile(np.asarray(ls[:-1])[b_best[have]], q, method="inverted_cdf")
        out["layer_ci"] = [int(lo), int(hi)]
    lo, hi = np.quantile(b_rises[:, point] / n, q)
    out["rise_ci"] = [float(lo), float(hi)]
    out["agreement"] = float(np.mean(have & (b_best == point)))
    return out


# --------------------------------------------------------------------------- layers


# one grammar for every --layers flag: frankeneval.weights.layermap.parse_layers (LLM layers only, None = all)
parse_layers = _parse_layers


# --------------------------------------------------------------------------- batched unit execution


@dataclass
class Unit:
    """One generation of a sweep: a store key, a request, its intervention list, and what to record with it."""

    key: str
    request: Any
    interventions: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    group: Any = None  # units of one group share setup (e.g. a probe pair's source KV); kept together in batches


def run_units(
    units: Sequence[Unit],
    execute: Callable[[list[Unit]], list[dict]],
    store,
    *,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Run the units the store does not hold yet, ``batch_size`` at a time; append each result as it finishes.

    ``execute(batch) -> [record per unit]`` runs one batched generate call. Units are taken in order, so callers
    order them to keep shared work (one pair's units, one prompt's layers) inside the same batch. Returns the
    number of units run.
    """
    todo = [u for u in units if not store.done(u.key)]
    ran = 0
    for i in range(0, len(todo), max(1, batch_size)):
        batch = todo[i : i + batch_size]
        records = execute(batch)
        if len(records) != len(batch):
            raise RuntimeError(f"executor returned {len(records)} records for {len(batch)} units")
        for u, rec in zip(batch, records):
            store.append(u.key, {**u.info, **rec})
        ran += len(batch)
        if progress is not None:
            progress(len(batch))
    return ran


def model_input(generator, model_name: str) -> dict[str, str | None]:
    """The run-store input of the model a sweep runs: ``{"weights": <content fingerprint>}`` of the checkpoint the
    generator was loaded from (its ``name_or_path``, else ``model_name``; :func:`frankeneval.weights.fingerprint.
    model_fingerprint`, every byte, cached per file), and ``"decode": "compiled"`` when the generator decodes with
    its compiled step (fused kernels round differently in bfloat16: such answers are never mixed with the others)."""
    from frankeneval.weights.fingerprint import model_fingerprint

    ref = getattr(getattr(generator, "model", None), "name_or_path", None) or model_name
    compiled = getattr(generator, "decode", None) == "compiled"
    return {"weights": model_fingerprint(ref), **({"decode": "compiled"} if compiled else {})}


def check_layers(layers, n_layers: int) -> None:
    """Raise a clear error unless every unified LLM layer index is in 1 … n_layers."""
    for L in layers:
        decoder_index(L, n_layers)
