"""Pure metric functions of weight updates: energy, singular-value spectra, subspace overlap.

Every function takes tensors (on any device) and returns tensors or Python numbers; nothing here reads
files. Definitions follow docs/method.md §5:

* deltas are float32 (``ΔIN = IN - Base``, ``ΔRL = RL - IN``), conv weights flattened to ``(out, rest)``;
* ``stable_rank = ‖Δ‖_F² / σ₁²``; ``effective_rank = exp(-Σ pᵢ log pᵢ)`` with ``pᵢ = σᵢ / Σσ`` over
  ``σᵢ > 1e-12``; ``condition_number = σ₁ / (σ_min + 1e-12)``;
  ``log_spectral_volume = Σ_{i ≤ 50} log(σᵢ + 1e-12)``; the top-50 σ are kept.

Singular values: method ``"gram"`` (the default, ``"auto"``) forms the Gram matrix of the *smaller* side
in float64 (``AᵀA`` for a tall A, ``AAᵀ`` for a wide one, accumulated over row chunks so a float64 copy
of the whole matrix is never made) and takes ``eigvalsh``; ``σ = sqrt(max(λ, 0))``. For an (m, n)
matrix with m ≥ n this costs one float64 GEMM (2mn² flops, on tensor cores on an H100) plus a
symmetric eigensolve of size n, which is several times faster than ``svdvals`` (bidiagonalisation of
the full m × n matrix) on both CPU LAPACK and cuSOLVER. Accuracy: the float64 Gram loses nothing the
float32 input had: σᵢ is exact to ~1e-7 relative for σᵢ ≥ 1e-4·σ₁, and below about 1e-8·σ₁ (the
numerical null space of a float32 matrix) both methods return round-off. ``"svd"`` uses
``torch.linalg.svdvals`` / ``svd`` in float64 and is kept as the reference / fallback.
"""

from __future__ import annotations

import math
from typing import Any

import torch

EPS = 1e-12  # docs/method.md's guard in effective rank, condition number and log spectral volume
SVD_METHODS = ("auto", "gram", "svd")
_GRAM_CHUNK_ELEMS = 1 << 26  # rows per float64 chunk * n <= 64 Mi elements (512 MB in float64)


# -- shapes ------------------------------------------------------------------------------------------
def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """A weight as a matrix: 2-D unchanged, conv / N-D weights flattened to ``(out, rest)``."""
    if t.dim() < 2:
        raise ValueError(f"a weight matrix needs >= 2 dimensions, got shape {tuple(t.shape)}")
    return t if t.dim() == 2 else t.reshape(t.shape[0], -1)


def delta(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """``after - before`` in float32 (docs/method.md: the reference subtracts in fp16; we do not unless seed-compatible:
    :func:`frankeneval.characterization.reference.fp16_delta`)."""
    return after.to(torch.float32) - before.to(torch.float32)


def choose_method(shape: tuple[int, ...] | torch.Size, device: torch.device | str | None = None) -> str:
    """The singular-value method ``"auto"`` resolves to.

    ``"gram"`` for every shape on both CPU and CUDA: the float64 Gram + ``eigvalsh`` is faster than
    ``svdvals`` everywhere we measured (bench/bench_characterize.py prints a per-shape comparison) and as
    accurate as the float32 data allows. Kept as a function so a shape/device rule can be changed in one
    place.
    """
    return "gram"


# -- non-finite values --------------------------------------------------------------------------------
def non_finite_counts(t: torch.Tensor) -> tuple[int, int]:
    """``(NaN count, ±Inf count)`` of ``t`` ((0, 0) for a finite tensor)."""
    if not t.is_floating_point() or bool(torch.isfinite(t).all()):
        return 0, 0
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())


def non_finite_report(weights: dict[str, torch.Tensor]) -> str:
    """Which of ``weights`` (label -> tensor) hold NaN / Inf and how many: ``"rl: 1 NaN, 2 Inf"``; empty when none."""
    parts = []
    for label, w in weights.items():
        nan, inf = non_finite_counts(w)
        counts = [f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else ""]
        if nan or inf:
            parts.append(f"{label}: " + ", ".join(c for c in counts if c))
    return "; ".join(parts)


def first_non_finite(value: Any, where: str = "") -> str | None:
    """The first field of a (nested) record whose number is NaN or ±Inf, as ``delta_rl.spectral_norm``; None when
    every number is finite (what JSON can hold)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (where or "value")
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return None
    for k, v in items:
        found = first_non_finite(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


# -- energy --------------------------------------------------------------------------------------------
def frobenius_norm(t: torch.Tensor) -> torch.Tensor:
    """‖t‖_F, accumulated in float64 (0-d float64 tensor, on t's device)."""
    return torch.linalg.vector_norm(t.reshape(-1), dtype=torch.float64)


def dot64(a: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 24) -> torch.Tensor:
    """⟨a, b⟩ of two same-size tensors seen as vectors, accumulated in float64 over chunks (0-d tensor)."""
    a, b = a.reshape(-1), b.reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for s in range(0, a.numel(), chunk):
        total += torch.dot(a[s : s + chunk].to(torch.float64), b[s : s + chunk].to(torch.float64))
    return total


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Cosine of two updates seen as vectors; None when either is zero."""
    na, nb, dot = torch.stack([frobenius_norm(a), frobenius_norm(b), dot64(a, b)]).tolist()
    if na == 0.0 or nb == 0.0:
        return None
    return dot / (na * nb)


# -- singular values -----------------------------------------------------------------------------------
def gram(m: torch.Tensor) -> torch.Tensor:
    """Float64 Gram matrix of the smaller side of ``m`` (n × n with n = min(rows, cols)).

    Accumulated over row chunks of the tall orientation, so at most ``_GRAM_CHUNK_ELEMS`` float64
    elements of the input exist at once.
    """
    m = as_matrix(m)
    a = m if m.shape[0] >= m.shape[1] else m.T  # tall: Gram = aᵀa
    rows, n = a.shape
    g = torch.zeros((n, n), dtype=torch.float64, device=a.device)
    step = max(1, _GRAM_CHUNK_ELEMS // max(n, 1))
    for s in range(0, rows, step):
        c = a[s : s + step].to(torch.float64)
        g.addmm_(c.T, c)
    return g


def _sigma_from_eigvals(ev: torch.Tensor) -> torch.Tensor:
    """Singular values (descending) from ascending Gram eigenvalues."""
    return ev.flip(-1).clamp_min(0).sqrt()


def singular_values(m: torch.Tensor, *, method: str = "auto") -> torch.Tensor:
    """All min(rows, cols) singular values of ``m`` (flattened to a matrix), descending, float64."""
    m = as_matrix(m)
    method = choose_method(m.shape, m.device) if method == "auto" else method
    if method == "gram":
        return _sigma_from_eigvals(torch.linalg.eigvalsh(gram(m)))
    if method == "svd":
        return torch.linalg.svdvals(m.to(torch.float64))
    raise ValueError(f"unknown singular-value method {method!r}; choose one of {SVD_METHODS}")


def singular_values_batch(mats: list[torch.Tensor], *, method: str = "auto") -> list[torch.Tensor]:
    """Singular values of several matrices; same-shape matrices share one batched eigensolve."""
    mats = [as_matrix(m) for m in mats]
    if not mats:
        return []
    method = choose_method(mats[0].shape, mats[0].device) if method == "auto" else method
    if method != "gram" or len({tuple(m.shape) for m in mats}) != 1:
        return [singular_values(m, method=method) for m in mats]
    ev = torch.linalg.eigvalsh(torch.stack([gram(m) for m in mats]))
    return list(_sigma_from_eigvals(ev).unbind(0))


def top_singular_subspaces(
    m: torch.Tensor, r: int, *, method: str = "auto", g: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sigma, U_r, V_r)``: all singular values (descending, float64) and orthonormal bases of the
    top-r left (rows × r) and right (cols × r) singular subspaces, float64.

    ``"gram"``: σ from ``eigvalsh`` of the smaller-side Gram (``g`` if given); the top-r eigenvectors of
    the Gram by :func:`top_eigenvectors` give one side, the other is ``A·v`` re-orthonormalised (QR).
    """
    m = as_matrix(m)
    rows, cols = m.shape
    r = max(0, min(r, rows, cols))
    method = choose_method(m.shape, m.device) if method == "auto" else method
    if method == "svd":
        u, s, vh = torch.linalg.svd(m.to(torch.float64), full_matrices=False)
        return s, u[:, :r], vh[:r].T
    if method != "gram":
        raise ValueError(f"unknown singular-value method {method!r}; choose one of {SVD_METHODS}")
    g = gram(m) if g is None else g
    sigma = _sigma_from_eigvals(torch.linalg.eigvalsh(g))
    u, v = subspaces_from_gram(m, g, r)
    return sigma, u, v


def subspaces_from_gram(m: torch.Tensor, g: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-r left and right singular subspaces of ``m`` from its smaller-side Gram ``g``."""
    m = as_matrix(m)
    rows, cols = m.shape
    r = max(0, min(r, rows, cols))
    if r == 0:
        z = torch.zeros
        return z((rows, 0), dtype=torch.float64, device=m.device), z((cols, 0), dtype=torch.float64, device=m.device)
    small = top_eigenvectors(g, r)
    if rows >= cols:  # Gram = AᵀA: right vectors; left = A v
        return _orthonormal(_chunked_matmul(m, small)), small
    return small, _orthonormal(_chunked_matmul(m.T, small))  # Gram = AAᵀ: left vectors; right = Aᵀ u


EXACT_EIGH_MAX_N = 512


def top_eigenvectors(
    g: torch.Tensor, r: int, *, oversample: int = 8, max_iter: int = 60, tol: float = 1e-9, seed: int = 0
) -> torch.Tensor:
    """Orthonormal top-r eigenvectors (n × r, largest first) of the symmetric PSD matrix ``g``.

    For n <= ``EXACT_EIGH_MAX_N``: full ``eigh``. Larger: block subspace iteration with r + oversample
    vectors and Rayleigh-Ritz, until the residual ‖G q - λ q‖ ≤ tol·λ₁ for the top r (checked every 4
    steps) or ``max_iter`` -- O(n²r) per step instead of the O(n³) eigenvector back-transformation, so
    the overlap costs little next to ``eigvalsh``. Without a spectral gap at r the top-r subspace is
    ill-defined and any method returns an arbitrary basis of the near-degenerate span.
    """
    n = g.shape[0]
    k = min(n, r + oversample)
    if n <= EXACT_EIGH_MAX_N or 2 * k >= n:
        _, vec = torch.linalg.eigh(g)
        return vec.flip(-1)[:, :r]
    gen = torch.Generator(device=g.device).manual_seed(seed)
    q = _orthonormal(torch.randn((n, k), generator=gen, device=g.device, dtype=torch.float64))
    for it in range(1, max_iter + 1):
        q = _orthonormal(g @ q)
        if it % 4 == 0 or it == max_iter:
            gq = g @ q
            w, s = torch.linalg.eigh(q.T @ gq)  # Rayleigh-Ritz
            w, s = w.flip(-1), s.flip(-1)
            q, gq = q @ s, gq @ s
            resid = torch.linalg.vector_norm(gq[:, :r] - q[:, :r] * w[:r], dim=0).max() / w[0].clamp_min(1e-300)
            if float(resid) <= tol:
                break
    return q[:, :r]


def _chunked_matmul(a: torch.Tensor, b64: torch.Tensor) -> torch.Tensor:
    """``a @ b64`` in float64 without a float64 copy of all of ``a``."""
    step = max(1, _GRAM_CHUNK_ELEMS // max(a.shape[1], 1))
    return torch.cat([a[s : s + step].to(torch.float64) @ b64 for s in range(0, a.shape[0], step)])


def _orthonormal(x: torch.Tensor) -> torch.Tensor:
    q, _ = torch.linalg.qr(x)
    return q


# -- spectral metrics ----------------------------------------------------------------------------------
def spectral_metrics(
    sigma: torch.Tensor,
    *,
    fro_sq: float | None = None,
    top_k: int = 50,
    volume_k: int = 50,
) -> dict[str, Any]:
    """docs/method.md's per-matrix spectral metrics from the full singular-value vector (descending).

    ``fro_sq`` (‖Δ‖_F², measured on the data) defaults to Σσ². Metrics undefined for a zero matrix
    (stable and effective rank) are None.

    The two diversity metrics are the reference's (github.com/xirui-li/Frankenstein
    ``scripts/characterisation_diversity.py``, ``compute_svd_metrics``, commit 8377f06): ``spectral_norm = σ₁``
    (L131 ``spectral_norm = S[0].item()``, S from ``torch.linalg.svdvals``, descending) and
    ``log_spectral_volume = Σ_{i ≤ volume_k} log(σᵢ + 1e-12)`` (L151 ``torch.log(S[:topk] + 1e-12).sum()``, with
    ``--topk`` 50 by default: the *top* 50 σ, every σ counted, zeros included, each guarded by ``+ 1e-12``, so a
    zero σ adds log(1e-12) ≈ -27.63; a matrix with fewer than 50 σ sums all of them). Here σ and the sum are
    float64 (the reference: float32).
    """
    s = sigma.to(torch.float64)
    if fro_sq is None:
        fro_sq = float(s.square().sum())
    sig1 = s[0] if s.numel() else torch.zeros((), dtype=torch.float64, device=s.device)
    nuclear = s.sum()
    pos = s[s > EPS]
    p = pos / pos.sum() if pos.numel() else pos
    entropy = -(p * p.log()).sum()
    sig_min = s[-1] if s.numel() else sig1
    logvol = (s[:volume_k] + EPS).log().sum()
    n_pos = torch.tensor(pos.numel(), dtype=torch.float64, device=s.device)
    vals = torch.stack([sig1, nuclear, entropy, sig_min, logvol, n_pos]).tolist()
    sig1_f, nuclear_f, entropy_f, sig_min_f, logvol_f, n_pos_f = vals
    return {
        "spectral_norm": sig1_f,
        "nuclear_norm": nuclear_f,
        "stable_rank": fro_sq / sig1_f**2 if sig1_f > EPS else None,
        "effective_rank": math.exp(entropy_f) if n_pos_f > 0 else None,
        "condition_number": sig1_f / (sig_min_f + EPS),
        "log_spectral_volume": logvol_f,
        "sigma_min": sig_min_f,
        "n_sigma": int(s.numel()),
        "sigma_top": s[:top_k].tolist(),
    }


# -- subspaces -----------------------------------------------------------------------------------------
def principal_angle_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the column spans of orthonormal bases ``a`` and ``b``
    (descending, clamped to [0, 1])."""
    if a.shape[1] == 0 or b.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64, device=a.device)
    return torch.linalg.svdvals(a.to(torch.float64).T @ b.to(torch.float64)).clamp(0.0, 1.0)


def subspace_overlap(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Mean squared cosine of the principal angles, ``‖aᵀb‖_F² / r`` (1 = same subspace; a random
    r-dim subspace of R^d gives r/d on average). None for empty bases."""
    r = min(a.shape[1], b.shape[1])
    if r == 0:
        return None
    return float(principal_angle_cosines(a, b).square().sum()) / r


def overlap_report(ua: torch.Tensor, va: torch.Tensor, ub: torch.Tensor, vb: torch.Tensor) -> dict[str, Any]:
    """Left and right subspace overlap of two updates' top-r singular subspaces, with the chance level."""
    cl, cr = principal_angle_cosines(ua, ub), principal_angle_cosines(va, vb)
    r = min(ua.shape[1], ub.shape[1])
    return {
        "r": r,
        "left": float(cl.square().sum()) / r if r else None,
        "right": float(cr.square().sum()) / r if r else None,
        "left_cosines": cl.tolist(),
        "right_cosines": cr.tolist(),
        "chance_left": r / ua.shape[0] if r else None,
        "chance_right": r / va.shape[0] if r else None,
    }
