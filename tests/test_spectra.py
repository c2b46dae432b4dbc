"""frankeneval.characterization.spectra against an independent computation: numpy's full SVD in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from frankeneval.characterization.spectra import (
    as_matrix,
    cosine_similarity,
    delta,
    principal_angle_cosines,
    singular_values,
    singular_values_batch,
    spectral_metrics,
    subspace_overlap,
    top_singular_subspaces,
)

RTOL = 1e-5


def numpy_metrics(m: np.ndarray, top_k: int = 50, volume_k: int = 50) -> dict:
    """docs/method.md's definitions, written independently on numpy's float64 SVD."""
    m = m.reshape(m.shape[0], -1).astype(np.float64)
    s = np.linalg.svd(m, compute_uv=False)
    fro2 = float((m**2).sum())
    pos = s[s > 1e-12]
    p = pos / pos.sum()
    return {
        "sigma": s,
        "spectral_norm": s[0],
        "nuclear_norm": s.sum(),
        "stable_rank": fro2 / s[0] ** 2,
        "effective_rank": math.exp(-(p * np.log(p)).sum()),
        "condition_number": s[0] / (s[-1] + 1e-12),
        "log_spectral_volume": np.log(s[:volume_k] + 1e-12).sum(),
        "sigma_top": s[:top_k],
    }


def random_matrix(shape, seed, rank=None):
    g = torch.Generator().manual_seed(seed)
    if rank is None:
        return torch.randn(shape, generator=g)
    rows, rest = shape[0], math.prod(shape[1:])
    return (torch.randn(rows, rank, generator=g) @ torch.randn(rank, rest, generator=g)).reshape(shape)


FULL_RANK_SHAPES = [(40, 40), (200, 30), (30, 200), (1000, 64), (64, 700), (16, 3, 2, 4, 4)]


@pytest.mark.parametrize("method", ["gram", "svd", "auto"])
@pytest.mark.parametrize("shape", FULL_RANK_SHAPES)
def test_metrics_match_numpy_svd(shape, method):
    t = random_matrix(shape, seed=sum(shape))
    ref = numpy_metrics(t.numpy())
    sigma = singular_values(t, method=method)
    assert sigma.dtype == torch.float64 and sigma.numel() == min(shape[0], math.prod(shape[1:]))
    np.testing.assert_allclose(sigma.numpy(), ref["sigma"], rtol=RTOL)
    got = spectral_metrics(sigma, fro_sq=float(t.double().square().sum()))
    for key in ("spectral_norm", "nuclear_norm", "stable_rank", "effective_rank", "condition_number",
                "log_spectral_volume"):
        assert got[key] == pytest.approx(ref[key], rel=RTOL), key
    np.testing.assert_allclose(got["sigma_top"], ref["sigma_top"], rtol=RTOL)


@pytest.mark.parametrize("shape,rank", [((120, 50), 5), ((50, 120), 3), ((8, 3, 2, 5, 5), 4)])
def test_rank_deficient_matrices(shape, rank):
    """The numerical null space is round-off for any method, so compare what is well defined there:
    the non-zero σ, norms, stable rank, effective rank (tiny σ contribute ~0 entropy)."""
    t = random_matrix(shape, seed=7, rank=rank)
    ref = numpy_metrics(t.numpy())
    sigma = singular_values(t)
    np.testing.assert_allclose(sigma[:rank].numpy(), ref["sigma"][:rank], rtol=RTOL)
    assert float(sigma[rank:].max()) < 1e-5 * float(sigma[0])  # the null space is (numerically) zero
    got = spectral_metrics(sigma, fro_sq=float(t.double().square().sum()))
    for key in ("spectral_norm", "nuclear_norm", "stable_rank", "effective_rank"):
        assert got[key] == pytest.approx(ref[key], rel=RTOL), key
    assert got["stable_rank"] <= rank + 1e-9


def test_exact_equal_singular_values_give_stable_and_effective_rank_r():
    q1, _ = torch.linalg.qr(torch.randn(60, 4, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(30, 4, dtype=torch.float64))
    m = (3.0 * q1 @ q2.T).float()
    got = spectral_metrics(singular_values(m))
    assert got["stable_rank"] == pytest.approx(4.0, rel=1e-5)
    assert got["effective_rank"] == pytest.approx(4.0, rel=1e-5)


def test_zero_matrix_metrics_are_defined_or_null():
    got = spectral_metrics(singular_values(torch.zeros(10, 6)), fro_sq=0.0)
    assert got["spectral_norm"] == 0.0 and got["nuclear_norm"] == 0.0
    assert got["stable_rank"] is None and got["effective_rank"] is None
    assert got["condition_number"] == 0.0
    assert got["log_spectral_volume"] == pytest.approx(6 * math.log(1e-12))


def test_batch_equals_single():
    a, b = random_matrix((70, 20), 1), random_matrix((70, 20), 2)
    sa, sb = singular_values_batch([a, b])
    torch.testing.assert_close(sa, singular_values(a), rtol=1e-10, atol=0)
    torch.testing.assert_close(sb, singular_values(b), rtol=1e-10, atol=0)


def test_conv_weights_flatten_to_out_by_rest():
    t = torch.randn(16, 3, 2, 4, 4)
    assert as_matrix(t).shape == (16, 96)
    assert torch.equal(as_matrix(t)[5], t[5].reshape(-1))


def test_delta_is_float32_of_bf16_inputs():
    a = torch.randn(8, 8).bfloat16()
    b = (a.float() + 1e-3).bfloat16()
    d = delta(a, b)
    assert d.dtype == torch.float32
    assert torch.equal(d, b.float() - a.float())


@pytest.mark.parametrize("shape", [(90, 40), (40, 90)])
@pytest.mark.parametrize("method", ["gram", "svd"])
def test_top_subspaces_match_numpy(shape, method):
    # distinct, well separated singular values so the top-r subspaces are well defined
    g = torch.Generator().manual_seed(3)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=g, dtype=torch.float64))
    s = torch.tensor([10.0 * 0.8**i for i in range(k)], dtype=torch.float64)
    m = ((u * s) @ v.T).float()
    r = 5
    sigma, ur, vr = top_singular_subspaces(m, r, method=method)
    un, sn, vhn = np.linalg.svd(m.numpy().astype(np.float64))
    np.testing.assert_allclose(sigma.numpy(), sn, rtol=RTOL)
    # same subspaces: principal angles all zero
    np.testing.assert_allclose(principal_angle_cosines(ur, torch.from_numpy(un[:, :r])).numpy(), np.ones(r), atol=1e-6)
    np.testing.assert_allclose(principal_angle_cosines(vr, torch.from_numpy(vhn[:r].T)).numpy(), np.ones(r), atol=1e-6)
    # orthonormal bases
    torch.testing.assert_close(ur.T @ ur, torch.eye(r, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(vr.T @ vr, torch.eye(r, dtype=torch.float64), atol=1e-8, rtol=0)


def test_principal_angles_against_numpy_definition():
    g = torch.Generator().manual_seed(5)
    a, _ = torch.linalg.qr(torch.randn(50, 4, generator=g, dtype=torch.float64))
    b, _ = torch.linalg.qr(torch.randn(50, 6, generator=g, dtype=torch.float64))
    ref = np.linalg.svd(a.numpy().T @ b.numpy(), compute_uv=False)
    np.testing.assert_allclose(principal_angle_cosines(a, b).numpy(), ref, rtol=1e-10)
    assert subspace_overlap(a, a) == pytest.approx(1.0)
    # a subspace and its orthogonal complement do not overlap
    q, _ = torch.linalg.qr(torch.randn(50, 8, generator=g, dtype=torch.float64))
    assert subspace_overlap(q[:, :4], q[:, 4:]) == pytest.approx(0.0, abs=1e-12)


def test_cosine_similarity():
    a, b = torch.randn(30, 20), torch.randn(30, 20)
    ref = float(np.dot(a.numpy().ravel().astype(np.float64), b.numpy().ravel())
                / (np.linalg.norm(a.numpy()) * np.linalg.norm(b.numpy())))
    assert cosine_similarity(a, b) == pytest.approx(ref, rel=1e-6)
    assert cosine_similarity(a, -2 * a) == pytest.approx(-1.0)
    assert cosine_similarity(a, torch.zeros_like(a)) is None


def test_subspace_iteration_matches_exact_eigenvectors_for_large_gram():
    """n > EXACT_EIGH_MAX_N takes the block subspace iteration; with a gap at r it finds the exact subspace."""
    from frankeneval.characterization.spectra import EXACT_EIGH_MAX_N, gram, top_eigenvectors

    n, r = EXACT_EIGH_MAX_N + 88, 6
    g = torch.Generator().manual_seed(11)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.cat([torch.tensor([100.0, 80, 60, 50, 40, 30], dtype=torch.float64),
                     torch.linspace(10, 0.01, n - r, dtype=torch.float64)])
    sym = (q * lam) @ q.T
    v = top_eigenvectors(sym, r)
    np.testing.assert_allclose(principal_angle_cosines(v, q[:, :r]).numpy(), np.ones(r), atol=1e-8)
    # and through a tall matrix whose Gram is that big
    m = (torch.randn(n + 40, n, generator=g, dtype=torch.float64) @ (q * lam.sqrt()) @ q.T).float()
    sigma, u_r, v_r = top_singular_subspaces(m, r)
    un, sn, vhn = np.linalg.svd(m.numpy().astype(np.float64))
    np.testing.assert_allclose(sigma.numpy()[:50], sn[:50], rtol=RTOL)
    assert subspace_overlap(v_r, torch.from_numpy(vhn[:r].T)) == pytest.approx(1.0, abs=1e-6)
    assert subspace_overlap(u_r, torch.from_numpy(un[:, :r])) == pytest.approx(1.0, abs=1e-6)
    assert gram(m).shape == (n, n)
