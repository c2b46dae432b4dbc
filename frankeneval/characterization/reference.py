"""The paper's reference scripts, where they deviate from docs/method.md: the rules behind ``seed_compatible``.

Source: github.com/xirui-li/Frankenstein, ``scripts/characterisation_energy.py`` (Frobenius norms) and
``scripts/characterisation_diversity.py`` (singular values), run on all weights (``--weight-filter`` unset).
Both load every member with ``torch_dtype=torch.float16`` and subtract the fp16 state dicts. In one place:

* deltas: ``(fp16(after) - fp16(before))`` computed in fp16, then ``.float()``; norms in float32
  (``torch.norm``), weight norms of the fp16 weights;
* relative norm ``‖Δ‖_F / (‖W_IN‖_F + 1e-8)``;
* singular values: ``torch.linalg.svdvals`` of the float32 delta; stable rank ``‖Δ‖_F² / (σ₁² + 1e-12)``
  (0 for Δ = 0), effective rank 0 when no σ > 1e-12, condition number 1 for a single σ;
* the diversity script drops matrices with more than 1e8 elements and tensors with fewer than 2 dims (its
  whole entry, so they are not in the spectral means); the energy script has neither limit;
* tensor selection (both scripts): ``'weight' in name``, ``'norm' not in name.lower()``, on the unified axis.
  That admits the 1-D ``visual.merger.ln_q.weight`` (an RMSNorm whose name lacks "norm") into the energy
  means of the projector (layer 0); the diversity script then drops it (1-D), so it has no spectra.

Selection options of the diversity script that frankeneval offers for every run (seed-compatible or not):
``--weight-filter`` (``_should_analyze``, L214-216: ``if self.weight_filter not in name``, a substring test; its
class default ``"down_proj"`` is overridden by the command line's default None, so runs/characterisation_diversity.sh
analyses every weight) is :func:`frankeneval.characterization.plan.matches_weight_filter`; the script's ``--llm``
(load a text-only LLM, whose tensors are all decoder layers on the unified axis) is ``--llm-only``, which keeps the
LLM decoder layers of any checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from frankeneval.errors import FrankenevalError
from frankeneval.weights.layermap import TensorRole

SOURCE = "github.com/xirui-li/Frankenstein scripts/characterisation_energy.py + characterisation_diversity.py"
DTYPE = torch.float16  # every member is loaded and subtracted in this dtype
REFERENCE_MAX_ELEMENTS = 100_000_000  # characterisation_diversity.py skips larger matrices (read at call time)
REL_NORM_EPS = 1e-8  # relative_norm = ‖Δ‖ / (‖W_IN‖ + 1e-8)
RANK_EPS = 1e-12  # stable rank denominator, effective-rank cut, condition number and log-volume guard
SVD_METHOD = "svdvals_fp32"

SKIP_OVER_LIMIT = "reference rule: more than 1e8 elements (characterisation_diversity.py skips the matrix)"
SKIP_VECTOR = (
    "1-D weight: energy only (characterisation_energy.py counts it; characterisation_diversity.py drops < 2-D tensors)"
)

DEVIATIONS = (
    "seed-compatible (the reference scripts, " + SOURCE + "): members cast to fp16 and subtracted in fp16; "
    "norms in float32; relative norm ‖Δ‖/(‖W_IN‖+1e-8); σ from fp32 torch.linalg.svdvals; stable rank "
    "‖Δ‖²/(σ₁²+1e-12), effective rank 0 for Δ = 0; no spectra for matrices with more than 1e8 elements "
    "(skipped_by_reference_rule) nor for 1-D weights; the 1-D visual.merger.ln_q.weight counted in the energy "
    "of the projector (layer 0); patch_embed, embed_tokens and lm_head (off the unified axis) not measured; "
    "the energy plot averages per-matrix ratios"
)
DEFAULT_DEVIATIONS = (
    "deltas in float32 (the reference subtracts in fp16); matrices with more than 1e8 elements are "
    "measured (the reference skips them: over_reference_limit); the 1-D visual.merger.ln_q.weight is a norm and "
    "not measured (the reference counts it in the projector's energy); embeddings and lm_head are measured, off "
    "the unified axis"
)


def over_limit(numel: int) -> bool:
    """More elements than the reference's diversity script analyses."""
    return numel > REFERENCE_MAX_ELEMENTS


def is_energy_extra(role: TensorRole, shape: Sequence[int]) -> bool:
    """A tensor the reference's energy script counts that docs/method.md does not analyse
    (``visual.merger.ln_q.weight``)."""
    if role.is_analysed_matrix(shape) or role.layer is None or role.param != "weight":
        return False
    return "norm" not in role.canonical.lower() and "norm" not in role.name.lower()


def fp16_delta(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """``after - before`` as the reference computes it: both cast to fp16, subtracted in fp16, then float32."""
    d = (after.to(DTYPE) - before.to(DTYPE)).to(torch.float32)
    if not bool(torch.isfinite(d).all()):
        from frankeneval.characterization.spectra import non_finite_report
        from frankeneval.errors import NonFiniteWeights

        found = non_finite_report({"before": before, "after": after})
        if found:  # NaN / Inf in the weights themselves, not an fp16 overflow
            raise NonFiniteWeights(found)
        raise FrankenevalError("a weight overflows float16: the reference (fp16) computation is undefined for it")
    return d


def fp16_weight(w: torch.Tensor) -> torch.Tensor:
    """The weight as the reference holds it (fp16), as float32 for its norm."""
    return w.to(DTYPE).to(torch.float32)


def norm32(t: torch.Tensor) -> float:
    """‖t‖ in float32, as ``torch.norm(t.float())``."""
    return float(torch.linalg.vector_norm(t.reshape(-1).to(torch.float32)))


def spectra_skip_reason(d: torch.Tensor) -> str | None:
    """Why the reference has no spectra for this delta (None: it has)."""
    if d.dim() < 2:
        return SKIP_VECTOR
    if over_limit(d.numel()):
        return SKIP_OVER_LIMIT
    return None


def singular_values(d: torch.Tensor) -> torch.Tensor:
    """σ (descending, float32) of the float32 delta flattened to ``(out, rest)``: ``torch.linalg.svdvals``."""
    return torch.linalg.svdvals(d.to(torch.float32).flatten(1) if d.dim() > 2 else d.to(torch.float32))


def spectral_metrics(s: torch.Tensor, fro: float, *, top_k: int = 50, volume_k: int = 50) -> dict[str, Any]:
    """The reference's per-matrix metrics from its float32 σ (same keys as
    :func:`frankeneval.characterization.spectra.spectral_metrics`): ``characterisation_diversity.py``,
    ``compute_svd_metrics`` (L108-165 at commit 8377f06; spectral norm L131 ``S[0]``, log volume L151
    ``torch.log(S[:topk] + 1e-12).sum()``, both in float32)."""
    spectral = s[0].item()
    pos = s[s > RANK_EPS]
    if len(pos) > 0:
        p = pos / pos.sum()
        effective = float(np.exp(-(p * torch.log(p)).sum().item()))
    else:
        effective = 0.0
    return {
        "spectral_norm": spectral,
        "nuclear_norm": s.sum().item(),
        "stable_rank": fro**2 / (spectral**2 + RANK_EPS),
        "effective_rank": effective,
        "condition_number": (s[0] / (s[-1] + RANK_EPS)).item() if len(s) > 1 else 1.0,
        "log_spectral_volume": torch.log(s[:volume_k] + RANK_EPS).sum().item(),
        "sigma_min": s[-1].item(),
        "n_sigma": int(s.numel()),
        "sigma_top": [float(x) for x in s[:top_k].tolist()],
    }


def relative(fro: float, norm_in: float) -> float:
    """The reference's relative norm."""
    return fro / (norm_in + REL_NORM_EPS)

