"""Per-matrix measurement: energy and spectra of ΔIN = IN - Base and ΔRL = RL - IN of one weight matrix
(the metric part of a ``matrices.jsonl`` record), and the settings that say what is measured. With
``seed_compatible`` the reference scripts' arithmetic (:mod:`~frankeneval.characterization.reference`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from frankeneval.characterization import reference
from frankeneval.characterization.spectra import (
    EPS,
    SVD_METHODS,
    as_matrix,
    choose_method,
    delta,
    dot64,
    first_non_finite,
    frobenius_norm,
    gram,
    non_finite_report,
    overlap_report,
    singular_values_batch,
    spectral_metrics,
    subspaces_from_gram,
    top_singular_subspaces,
)
from frankeneval.errors import NonFiniteWeights, SpecError

SPECTRAL_METRICS = (
    "spectral_norm",
    "nuclear_norm",
    "stable_rank",
    "effective_rank",
    "condition_number",
    "log_spectral_volume",
)
DELTA_METRICS = ("fro", "rel_fro", *SPECTRAL_METRICS)


@dataclass(frozen=True)
class CharacterizeSettings:
    """What is measured. Two runs with equal settings (and weights) may share an output directory."""

    top_k: int = 50  # singular values kept per matrix
    volume_k: int = 50  # singular values in the log spectral volume (docs/method.md: 50)
    rank_r: int = 8  # top-r singular subspaces for the ΔIN/ΔRL overlap (0: skip)
    spectra: bool = True  # False: energy only (Frobenius norms, cosines)
    svd_method: str = "auto"
    sections: tuple[str, ...] | None = None  # None: every section
    seed_compatible: bool = False  # True: the reference scripts' arithmetic and selection (characterization.reference)
    weight_filter: str | None = None  # only matrices whose name holds this substring (the reference's --weight-filter)
    llm_only: bool = False  # only the LLM decoder layers (unified layers > 0)

    def __post_init__(self) -> None:
        if self.svd_method not in SVD_METHODS:
            raise SpecError(f"svd_method must be one of {SVD_METHODS}, got {self.svd_method!r}")
        if self.seed_compatible and self.svd_method != "auto":
            raise SpecError("seed_compatible uses the reference's fp32 torch.linalg.svdvals; leave svd_method at auto")
        if self.top_k < 1 or self.volume_k < 1 or self.rank_r < 0:
            raise SpecError("top_k and volume_k must be >= 1 and rank_r >= 0")
        if self.weight_filter is not None and (not isinstance(self.weight_filter, str) or not self.weight_filter):
            raise SpecError("weight_filter (--weight-filter) must be a non-empty substring of a weight's name")
        if self.llm_only and self.sections is not None and "llm" not in self.sections:
            raise SpecError(f"--llm-only keeps the LLM layers, but --sections {' '.join(self.sections)} leaves "
                            "none of them: nothing would be measured")


def measure_update(
    w_base: torch.Tensor, w_in: torch.Tensor, w_rl: torch.Tensor, settings: CharacterizeSettings
) -> dict[str, Any]:
    """Energy (and spectra) of ΔIN and ΔRL of one matrix: the metric part of a matrices.jsonl record.

    :class:`NonFiniteWeights` (saying which of Base / IN / RL hold how many NaN / Inf) when a weight is not finite
    -- seen from its Frobenius norm, so a finite matrix costs no extra pass -- or a measurement is not (JSON holds
    no NaN / Inf); nothing is measured then."""
    if settings.seed_compatible:
        rec = _measure_reference(w_base, w_in, w_rl, settings)
    else:
        rec = _measure(w_base, w_in, w_rl, settings)
    bad = first_non_finite(rec)
    if bad:
        found = non_finite_report({"base": w_base, "in": w_in, "rl": w_rl})
        raise NonFiniteWeights(found or f"its {bad} is not finite" + (" (the reference's fp16 arithmetic overflows)"
                                                                        if settings.seed_compatible else ""))
    return rec


def _check_finite(weights: dict[str, torch.Tensor], norms: list[float]) -> None:
    """:class:`NonFiniteWeights` before any spectrum when a weight's norm (float64) is NaN / Inf: then the weight
    holds NaN or Inf (``eigvalsh`` would fail on it, JSON cannot hold the result)."""
    if not all(math.isfinite(n) for n in norms):
        raise NonFiniteWeights(non_finite_report(weights) or "a norm is not finite")


def _measure(w_base: torch.Tensor, w_in: torch.Tensor, w_rl: torch.Tensor,
             settings: CharacterizeSettings) -> dict[str, Any]:
    """:func:`measure_update` with docs/method.md's definitions."""
    d_in = as_matrix(delta(w_base, w_in))
    d_rl = as_matrix(delta(w_in, w_rl))
    norms = torch.stack(
        [
            frobenius_norm(w_base), frobenius_norm(w_in), frobenius_norm(w_rl),
            frobenius_norm(d_in), frobenius_norm(d_rl), dot64(d_in, d_rl),
        ]
    ).tolist()
    n_base, n_in, n_rl, f_in, f_rl, dot = norms
    _check_finite({"base": w_base, "in": w_in, "rl": w_rl}, norms[:3])
    rec = _energy(n_base, n_in, n_rl, f_in, f_rl, dot, rel=lambda f: f / n_in if n_in > 0 else None)
    rec["seed_compatible"] = False
    if not settings.spectra:
        return rec
    method = choose_method(d_in.shape, d_in.device) if settings.svd_method == "auto" else settings.svd_method
    rec["svd_method"] = method
    if method == "gram":  # one Gram per delta, one batched eigvalsh for both
        grams = [gram(d_in), gram(d_rl)]
        s_in, s_rl = (ev.flip(-1).clamp_min(0).sqrt() for ev in torch.linalg.eigvalsh(torch.stack(grams)).unbind(0))
    else:
        grams = None
        s_in, s_rl = singular_values_batch([d_in, d_rl], method=method)
    if settings.rank_r > 0:
        rec["overlap_in_rl"] = _overlap(d_in, d_rl, f_in, f_rl, settings.rank_r, method, grams)
    kw = {"top_k": settings.top_k, "volume_k": settings.volume_k}
    rec["delta_in"].update(spectral_metrics(s_in, fro_sq=f_in**2, **kw))
    rec["delta_rl"].update(spectral_metrics(s_rl, fro_sq=f_rl**2, **kw))
    return rec


def _energy(n_base: float, n_in: float, n_rl: float, f_in: float, f_rl: float, dot: float, *, rel) -> dict[str, Any]:
    return {
        "norm_base": n_base,
        "norm_in": n_in,
        "norm_rl": n_rl,
        "cos_in_rl": dot / (f_in * f_rl) if f_in > 0 and f_rl > 0 else None,
        "delta_in": {"fro": f_in, "rel_fro": rel(f_in)},
        "delta_rl": {"fro": f_rl, "rel_fro": rel(f_rl)},
    }


def _overlap(d_in, d_rl, f_in: float, f_rl: float, r: int, method: str, grams=None) -> dict[str, Any] | None:
    """Top-r singular-subspace overlap of ΔIN and ΔRL (None if either is zero)."""
    if not (f_in > EPS and f_rl > EPS):
        return None
    if method == "gram":
        grams = grams or [gram(d_in), gram(d_rl)]
        u_in, v_in = subspaces_from_gram(d_in, grams[0], r)
        u_rl, v_rl = subspaces_from_gram(d_rl, grams[1], r)
    else:
        _, u_in, v_in = top_singular_subspaces(d_in, r, method=method)
        _, u_rl, v_rl = top_singular_subspaces(d_rl, r, method=method)
    return overlap_report(u_in, v_in, u_rl, v_rl)


def _measure_reference(
    w_base: torch.Tensor, w_in: torch.Tensor, w_rl: torch.Tensor, settings: CharacterizeSettings
) -> dict[str, Any]:
    """:func:`measure_update` with the reference scripts' arithmetic: fp16 deltas, float32 norms and svdvals, no
    spectra for 1-D weights or matrices over the reference's element limit (``spectra_skipped`` says why)."""
    found = non_finite_report({"base": w_base, "in": w_in, "rl": w_rl})  # before fp16 can hide where they are
    if found:
        raise NonFiniteWeights(found)
    d_in, d_rl = reference.fp16_delta(w_base, w_in), reference.fp16_delta(w_in, w_rl)
    n_base, n_in, n_rl = (reference.norm32(reference.fp16_weight(w)) for w in (w_base, w_in, w_rl))
    f_in, f_rl = reference.norm32(d_in), reference.norm32(d_rl)
    _check_finite({"base": w_base, "in": w_in, "rl": w_rl}, [n_base, n_in, n_rl, f_in, f_rl])
    rec = _energy(n_base, n_in, n_rl, f_in, f_rl, float(dot64(d_in, d_rl)), rel=lambda f: reference.relative(f, n_in))
    rec["seed_compatible"] = True
    if not settings.spectra:
        return rec
    skip = reference.spectra_skip_reason(d_in)
    if skip:
        rec["spectra_skipped"] = skip
        return rec
    rec["svd_method"] = reference.SVD_METHOD
    kw = {"top_k": settings.top_k, "volume_k": settings.volume_k}
    rec["delta_in"].update(reference.spectral_metrics(reference.singular_values(d_in), f_in, **kw))
    rec["delta_rl"].update(reference.spectral_metrics(reference.singular_values(d_rl), f_rl, **kw))
    if settings.rank_r > 0:  # not in the reference: frankeneval's overlap, on the fp16 deltas
        rec["overlap_in_rl"] = _overlap(as_matrix(d_in), as_matrix(d_rl), f_in, f_rl, settings.rank_r, "gram")
    return rec
