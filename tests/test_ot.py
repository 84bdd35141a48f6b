"""Tests for dfa.ot (method.md §5)."""
import math

import numpy as np
import pytest
import torch

from dfa.ot import column_marginal, ot_refine, scoring_matrix, sinkhorn

ot = pytest.importorskip("ot")


def _problem(b=3, n=12, c=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(b, n, c, generator=g, dtype=dtype)
    a = torch.rand(b, n, generator=g, dtype=dtype) + 0.2
    a = a / a.sum(-1, keepdim=True)
    v = torch.rand(b, c, generator=g, dtype=dtype) + 0.2
    v = v / v.sum(-1, keepdim=True)
    return cost, a, v


def _marginal_err(t, a, b):
    return ((t.sum(-1) - a).abs().sum(-1) + (t.sum(-2) - b).abs().sum(-1)).max().item()


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.float64, 1e-6)])
@pytest.mark.parametrize("log_domain", [False, True])
def test_marginals_met(dtype, bound, log_domain):
    cost, a, b = _problem(4, 50, 6, dtype)
    t, info = sinkhorn(cost, a, b, 0.1, max_iters=500, tol=1e-6, log_domain=log_domain,
                       return_info=True)
    assert t.dtype == dtype and t.shape == cost.shape and (t >= 0).all()
    assert info["err"] < bound and _marginal_err(t, a, b) < bound
    assert info["iters"] < 500 and info["log_domain"] == log_domain


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.5])
def test_agrees_with_pot(eps):
    cost, a, b = _problem(3, 15, 5, torch.float64, seed=1)
    t = sinkhorn(cost, a, b, eps, max_iters=5000, tol=1e-13)
    for i in range(3):
        ref = ot.sinkhorn(a[i].numpy(), b[i].numpy(), cost[i].numpy(), eps,
                          numItermax=100000, stopThr=1e-14)
        np.testing.assert_allclose(t[i].numpy(), ref, atol=1e-10, rtol=0)


def test_log_and_plain_agree_and_fp32_close_to_fp64():
    cost, a, b = _problem(2, 30, 5, torch.float64, seed=2)
    plain = sinkhorn(cost, a, b, 0.1, max_iters=2000, tol=1e-13)
    logd = sinkhorn(cost, a, b, 0.1, max_iters=2000, tol=1e-13, log_domain=True)
    torch.testing.assert_close(plain, logd, atol=1e-12, rtol=0)
    f32 = sinkhorn(cost.float(), a.float(), b.float(), 0.1, max_iters=300, tol=1e-6)
    torch.testing.assert_close(f32.double(), plain, atol=1e-6, rtol=0)


def _entropic_objective(t, cost, eps):
    t = t.clamp_min(1e-300)
    return (t * cost).sum() + eps * (t * t.log()).sum()


def test_brute_force_2x2():
    """2×2: T = [[t, a1−t], [b1−t, a2−b1+t]]; the optimum solves a monotone equation."""
    cost = torch.tensor([[0.1, 0.7], [0.4, 0.2]], dtype=torch.float64)
    a = torch.tensor([0.3, 0.7], dtype=torch.float64)
    b = torch.tensor([0.6, 0.4], dtype=torch.float64)
    eps = 0.2
    dc = cost[0, 0] - cost[0, 1] - cost[1, 0] + cost[1, 1]
    lo, hi = max(0.0, float(b[0] - a[1])), min(float(a[0]), float(b[0]))

    def grad(t):
        return float(dc + eps * (math.log(t) - math.log(a[0] - t) - math.log(b[0] - t)
                                 + math.log(a[1] - b[0] + t)))

    lo, hi = lo + 1e-15, hi - 1e-15
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if grad(mid) < 0 else (lo, mid)
    t = 0.5 * (lo + hi)
    exact = torch.tensor([[t, a[0] - t], [b[0] - t, a[1] - b[0] + t]], dtype=torch.float64)
    plan = sinkhorn(cost, a, b, eps, max_iters=10000, tol=1e-14)
    torch.testing.assert_close(plan, exact, atol=1e-12, rtol=0)


def test_brute_force_2x3_grid():
    """2×3: two free entries; a dense grid of feasible plans cannot beat Sinkhorn."""
    cost = torch.tensor([[0.0, 0.5, 1.0], [0.8, 0.3, 0.1]], dtype=torch.float64)
    a = torch.tensor([0.45, 0.55], dtype=torch.float64)
    b = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    eps = 0.1
    plan = sinkhorn(cost, a, b, eps, max_iters=10000, tol=1e-14)
    best = _entropic_objective(plan, cost, eps)
    grid = torch.linspace(1e-6, 0.45 - 1e-6, 400, dtype=torch.float64)
    t11, t12 = torch.meshgrid(grid, grid, indexing="ij")
    t13 = a[0] - t11 - t12
    rows = torch.stack([t11, t12, t13], -1)                        # (G, G, 3)
    full = torch.stack([rows, b - rows], -2)                       # (G, G, 2, 3)
    ok = (full > 0).all(-1).all(-1)
    safe = full.clamp_min(1e-300)
    obj = (full * cost).sum((-1, -2)) + eps * (safe * safe.log()).sum((-1, -2))
    obj = obj[ok]
    assert best <= obj.min() + 1e-12
    arg = full[ok][obj.argmin()]
    torch.testing.assert_close(plan, arg, atol=2e-3, rtol=0)       # within the grid step


def test_kkt_certificate():
    """The plan is diag(u) exp(−C/ε) diag(v): log T + C/ε has rank-one additive form."""
    cost, a, b = _problem(2, 9, 4, torch.float64, seed=3)
    eps = 0.05
    t = sinkhorn(cost, a, b, eps, max_iters=5000, tol=1e-13)
    z = t.log() + cost / eps
    f = z[..., :, :1]
    g = z[..., :1, :] - z[..., :1, :1]
    torch.testing.assert_close(z, f + g, atol=1e-9, rtol=0)


def test_batch_equals_per_item():
    cost, a, b = _problem(5, 40, 6, torch.float32, seed=4)
    batched = sinkhorn(cost, a, b, 0.1, max_iters=30, tol=0)
    for i in range(5):
        single = sinkhorn(cost[i], a[i], b[i], 0.1, max_iters=30, tol=0)
        torch.testing.assert_close(batched[i], single, atol=1e-7, rtol=1e-6)
    # extra leading dims
    nested = sinkhorn(cost.view(1, 5, 40, 6), a.view(1, 5, 40), b.view(1, 5, 6), 0.1,
                      max_iters=30, tol=0)
    torch.testing.assert_close(nested[0], batched)


@pytest.mark.parametrize("log_domain", [False, True])
def test_zero_padded_columns(log_domain):
    cost, a, b = _problem(3, 20, 5, torch.float64, seed=5)
    b[0, 3:] = 0
    b[1, 0] = 0
    b = b / b.sum(-1, keepdim=True)
    t = sinkhorn(cost, a, b, 0.1, max_iters=1000, tol=1e-10, log_domain=log_domain)
    assert torch.isfinite(t).all()
    assert (t[0, :, 3:] == 0).all() and (t[1, :, 0] == 0).all()
    assert _marginal_err(t, a, b) < 1e-9
    # the padded problem equals the unpadded one
    small = sinkhorn(cost[0, :, :3], a[0], b[0, :3], 0.1, max_iters=1000, tol=1e-10)
    torch.testing.assert_close(t[0, :, :3], small, atol=1e-9, rtol=0)


def test_all_equal_cost_gives_independent_coupling():
    _, a, b = _problem(2, 10, 3, torch.float64, seed=6)
    cost = torch.full((2, 10, 3), 0.37, dtype=torch.float64)
    t, info = sinkhorn(cost, a, b, 0.1, return_info=True)
    torch.testing.assert_close(t, a[..., :, None] * b[..., None, :])
    assert info["iters"] == 1


def test_invalid_inputs():
    cost, a, b = _problem(2, 6, 3)
    with pytest.raises(ValueError, match="sums to 0"):
        sinkhorn(cost, torch.zeros_like(a), b, 0.1)
    bad = b.clone()
    bad[1] = 0
    with pytest.raises(ValueError, match="sums to 0"):
        sinkhorn(cost, a, bad, 0.1)
    bad = a.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sinkhorn(cost, bad, b, 0.1)
    with pytest.raises(ValueError, match="shapes"):
        sinkhorn(cost, a[:, :5], b, 0.1)
    with pytest.raises(ValueError, match="shapes"):
        sinkhorn(cost, a, b[:1], 0.1)
    with pytest.raises(ValueError, match="mass"):
        sinkhorn(cost, a, 2 * b, 0.1)
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(cost, a, b, 0.0)
    with pytest.raises(ValueError, match="negative"):
        sinkhorn(cost, a - 0.5, b, 0.1)


def test_small_epsilon_stable():
    g = torch.Generator().manual_seed(7)
    cost = torch.rand(4, 100, 6, generator=g)
    a = torch.full((4, 100), 0.01)
    b = torch.softmax(torch.randn(4, 6, generator=g), -1)
    t, info = sinkhorn(cost, a, b, 0.01, max_iters=3000, tol=1e-6, return_info=True)
    assert info["log_domain"]                                      # switched automatically
    assert torch.isfinite(t).all()
    assert info["err"] < 1e-6 and _marginal_err(t, a, b) < 1e-5
    # a large cost scale with a moderate ε also goes to the log domain and stays finite
    # (cost range / ε = 1000 is nearly unregularised OT, which converges slowly: check
    # finiteness and the exact column marginal only)
    t2, info2 = sinkhorn(cost * 100, a, b, 0.1, max_iters=200, tol=1e-6, return_info=True)
    assert info2["log_domain"] and torch.isfinite(t2).all()
    torch.testing.assert_close(t2.sum(-2), b)


def test_row_constant_does_not_change_plan():
    """Why ``ot.score: literal`` is a no-op: a per-row constant is absorbed by u."""
    cost, a, b = _problem(2, 20, 4, torch.float64, seed=8)
    shift = torch.rand(2, 20, 1, dtype=torch.float64)
    t0 = sinkhorn(cost, a, b, 0.1, max_iters=3000, tol=1e-13)
    t1 = sinkhorn(cost + shift, a, b, 0.1, max_iters=3000, tol=1e-13)
    torch.testing.assert_close(t0, t1, atol=1e-12, rtol=0)


# --- scoring, marginals, refinement --------------------------------------------------------

def _affinities(b=2, n=25, c=4, seed=9):
    g = torch.Generator().manual_seed(seed)
    a_la = torch.softmax(torch.randn(b, n, n, generator=g), -1)
    a_ha = torch.sigmoid(torch.randn(b, n, n, generator=g) * 3)
    s = torch.rand(b, n, c, generator=g)
    return a_la, a_ha, s


def test_scoring_matrix_forms():
    a_la, a_ha, s = _affinities()
    fixed = scoring_matrix(a_la, a_ha, s, "fixed", 1.0, 0.1)
    rn = a_ha / a_ha.sum(-1, keepdim=True)
    torch.testing.assert_close(fixed, a_la @ s + 0.1 * rn @ s)
    lit = scoring_matrix(a_la, a_ha, s, "literal", 1.0, 0.1)
    diff = lit - scoring_matrix(a_la, a_ha, s, "literal", 1.0, 0.0)
    torch.testing.assert_close(diff, diff[..., :1].expand_as(diff))   # no class index
    with pytest.raises(ValueError):
        scoring_matrix(a_la, a_ha, s, "other")


def test_literal_score_leaves_plan_unchanged_fixed_changes_it():
    a_la, a_ha, s = _affinities()
    v = column_marginal(s)
    plans = {}
    for mode in ("literal", "fixed"):
        for lam in (0.0, 0.1):
            plans[mode, lam] = ot_refine(scoring_matrix(a_la, a_ha, s, mode, 1.0, lam), v)
    torch.testing.assert_close(plans["literal", 0.0], plans["literal", 0.1], atol=1e-5, rtol=0)
    assert (plans["fixed", 0.0] - plans["fixed", 0.1]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["tempered", "literal", "area"])
def test_column_marginal_sums_to_one_over_valid(mode):
    g = torch.Generator().manual_seed(10)
    s = torch.rand(3, 50, 5, generator=g)
    valid = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]], dtype=torch.bool)
    v = column_marginal(s, mode, tau=0.1, valid=valid)
    assert v.shape == (3, 5) and (v >= 0).all()
    torch.testing.assert_close(v.sum(-1), torch.ones(3))
    assert (v[~valid] == 0).all()
    if mode == "tempered":
        x = s.mean(1) / 0.1
        torch.testing.assert_close(v[1], torch.softmax(x[1], -1))
    if mode == "area":
        x = s.sum(1)
        torch.testing.assert_close(v[1], x[1] / x[1].sum())


def test_literal_marginal_is_nearly_one_hot():
    s = torch.rand(1, 400, 3)
    s[..., 0] += 0.1
    assert column_marginal(s, "literal").max() > 0.99
    assert column_marginal(s, "tempered").max() < 0.9


def test_ot_refine_output():
    a_la, a_ha, s = _affinities(2, 30, 5)
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)
    v = column_marginal(s, valid=valid)
    score = scoring_matrix(a_la, a_ha, s)
    m, info = ot_refine(score.double(), v, return_info=True)
    assert m.dtype == torch.float32 and m.shape == (2, 30, 5)
    assert (m >= 0).all() and (m <= 1).all()
    assert (m[~valid[:, None, :].expand_as(m)] == 0).all()
    torch.testing.assert_close(m.amax(1)[valid], torch.ones(int(valid.sum())))
    assert info["err"] < 1e-6
    # half-precision input and grad-requiring input are fine
    score_req = score.clone().requires_grad_(True)
    m2 = ot_refine(score_req.to(torch.bfloat16), v)
    assert m2.dtype == torch.float32 and not m2.requires_grad


def test_rounding_mass_gap_is_absorbed_and_check_every():
    cost, a, b = _problem(2, 30, 5, torch.float32, seed=11)
    b64 = b.double() * (1 + 3e-7)                                  # fp32-level mass gap
    t, info = sinkhorn(cost.double(), a.double(), b64, 0.1, max_iters=500, tol=1e-9,
                       return_info=True)
    assert info["err"] < 1e-9
    t5, info5 = sinkhorn(cost, a, b, 0.1, max_iters=500, tol=1e-6, return_info=True,
                         check_every=5)
    assert info5["iters"] % 5 == 0 and info5["err"] < 1e-6
