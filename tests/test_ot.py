"""Tests for dfa.ot (method.md §5)."""
import math

import numpy as np
import pytest
import torch

from dfa.ot import normalize_scores, prior, readout, reweight_scores, scoring_matrix, sinkhorn, transport

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


# --- v2: scoring, scaling, priors, formulations, read-outs (method.md §5) ------------------

def _affinities(b=2, n=25, c=4, seed=9):
    g = torch.Generator().manual_seed(seed)
    a_la = torch.softmax(torch.randn(b, n, n, generator=g), -1)
    a_ha = torch.sigmoid(torch.randn(b, n, n, generator=g) * 3)
    s = torch.rand(b, n, c, generator=g)
    return a_la, a_ha, s


def _all_valid(b, c):
    return torch.ones(b, c, dtype=torch.bool)


def test_literal_score_has_no_class_index_and_leaves_the_plan_unchanged():
    a_la, a_ha, s = _affinities()
    lit = scoring_matrix(a_la, a_ha, s, "literal", 1.0, 0.1)
    diff = lit - scoring_matrix(a_la, a_ha, s, "literal", 1.0, 0.0)
    torch.testing.assert_close(diff, diff[..., :1].expand_as(diff))   # the λ_h term is a per-row constant
    valid = _all_valid(2, 4)
    b = prior("uniform", s, valid)
    plans = {}
    for mode in ("literal", "fixed"):
        for lam in (0.0, 0.1):
            o = normalize_scores(scoring_matrix(a_la, a_ha, s, mode, 1.0, lam), valid, "image")
            plans[mode, lam] = transport(o, b, valid, "balanced", 0.1, max_iters=2000, tol=1e-9)
    torch.testing.assert_close(plans["literal", 0.0], plans["literal", 0.1], atol=1e-5, rtol=0)
    assert (plans["fixed", 0.0] - plans["fixed", 0.1]).abs().max() > 1e-4
    with pytest.raises(ValueError):
        scoring_matrix(a_la, a_ha, s, "other")


def test_normalize_scores_per_class_and_per_image():
    g = torch.Generator().manual_seed(3)
    o = torch.rand(2, 30, 4, generator=g) * torch.tensor([1.0, 0.01, 5.0, 2.0])
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    per_class = normalize_scores(o, valid, "class")
    for b in range(2):
        for c in range(4):
            col = per_class[b, :, c]
            if valid[b, c]:
                assert col.min() == 0 and col.max() == 1
            else:
                assert (col == 0).all()
    per_image = normalize_scores(o, valid, "image")
    v = per_image[0][:, valid[0]]
    assert v.min() == 0 and v.max() == 1 and per_image[0, :, 1].max() < 0.01   # the small column stays flat


def test_priors_sum_to_one_over_valid_columns_and_cam_area_counts_the_argmax():
    g = torch.Generator().manual_seed(4)
    s = torch.rand(2, 40, 5, generator=g)
    valid = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    areas = torch.rand(2, 5, generator=g)
    for kind in ("cam_area", "cam_area_scaled", "softmax_sum", "tempered", "uniform", "decoder", "refined", "oracle"):
        b = prior(kind, s, valid, 0.2, 0.1, areas)
        torch.testing.assert_close(b.sum(-1), torch.ones(2))
        assert (b[~valid] == 0).all() and (b[valid] > 0).all()
    counts = torch.zeros(5)
    for i in range(40):                                       # independent count of the argmax
        row = s[0, i].clone()
        row[~valid[0]] = -1
        counts[int(row.argmax())] += 1
    expect = (counts / 40).clamp_min(1 / 40) * valid[0]
    torch.testing.assert_close(prior("cam_area", s, valid, 0.0)[0], expect / expect.sum())
    torch.testing.assert_close(prior("cam_area", s, valid, 1.0), prior("uniform", s, valid))
    # refined reads its areas as the decoder's are read (floored at 1/N, mixed); both need them
    torch.testing.assert_close(prior("refined", s, valid, 0.3, areas=areas), prior("decoder", s, valid, 0.3, areas=areas))
    with pytest.raises(ValueError, match="needs areas"):
        prior("refined", s, valid)
    assert prior("softmax_sum", s * 0 + torch.linspace(0, 1, 5), valid)[1].max() > 0.99   # the paper's: one-hot at N = 40


def _hand_built_cam(seed=5, b=3, n=48, c=4):
    """Ŝ = [s_bg | S] built so that its argmax y is known by construction and every valid
    column spans [0, 1], as §1's per-class min-max makes S (and s_bg = 1 − max S does when a
    token has no class). Label columns score 0.55–0.95, the others 0.05–0.45; then one token of
    each column's own label is set to 1 and one token of another label to 0 (neither changes y)."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)[:b]
    y = torch.zeros(b, n, dtype=torch.long)
    s_hat = torch.zeros(b, n, c)
    for i in range(b):
        cols = torch.nonzero(valid[i]).flatten()
        y[i] = cols[torch.cat([torch.arange(len(cols)), torch.randint(len(cols), (n - len(cols),), generator=g)])]
        low = 0.05 + 0.4 * torch.rand(n, len(cols), generator=g)
        s_hat[i][:, cols] = low
        s_hat[i, torch.arange(n), y[i]] = 0.55 + 0.4 * torch.rand(n, generator=g)
        for col in cols.tolist():
            s_hat[i, int(torch.nonzero(y[i] == col)[0]), col] = 1.0
            s_hat[i, int(torch.nonzero(y[i] != col)[0]), col] = 0.0
    return s_hat, valid, y


def test_identity_affinity_balanced_ot_reproduces_the_raw_cam_argmax():
    """§5 property: identity affinity, prior cam_area, prior_mix 0, ε → 0: balanced OT returns
    the unrefined CAM's argmax labels exactly. The expectation is the label each token was built
    with, not anything computed by dfa (normalize_scores must leave these columns as they are)."""
    s_hat, valid, y = _hand_built_cam()
    b, n, c = s_hat.shape
    eye = torch.eye(n).expand(b, n, n)
    o_hat = normalize_scores(scoring_matrix(eye, eye, s_hat, "fixed", 1.0, 0.1), valid, "class")
    b_prior = prior("cam_area", s_hat, valid, 0.0)
    counts = torch.stack([torch.bincount(y[i], minlength=c) for i in range(b)]).float() / n
    torch.testing.assert_close(b_prior, counts)                    # cam_area counts the raw CAM's labels
    plan = transport(o_hat, b_prior, valid, "balanced", epsilon=0.002, max_iters=20000, tol=1e-9)
    assert torch.equal(readout(plan, valid, "posterior").argmax(-1), y)


def _minmax_per_class_numpy(s: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """method.md §5 ``ot.normalize: class`` from its words: each valid column min-maxed over the
    image's tokens to [0, 1]; absent columns 0. s (B, N, C), valid (B, C)."""
    out = np.zeros_like(s)
    for i in range(s.shape[0]):
        for c in np.flatnonzero(valid[i]):
            col = s[i, :, c]
            out[i, :, c] = (col - col.min()) / (col.max() - col.min())
    return out


def test_balanced_ot_follows_the_per_class_scaled_argmax():
    """With columns of unequal ranges, the identity affinity, ``normalize: class`` and the
    ``cam_area_scaled`` prior, balanced OT at ε → 0 returns the argmax of the per-class
    min-maxed scores (the pre-issue-17 reading of the §5 property), built here in numpy."""
    g = torch.Generator().manual_seed(11)
    b, n, c = 3, 48, 4
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    lo, span = torch.tensor([0.0, 0.3, 0.1, 0.5]), torch.tensor([0.35, 0.6, 0.9, 0.25])
    s_hat = (lo + span * torch.rand(b, n, c, generator=g)) * valid[:, None, :]
    scaled = _minmax_per_class_numpy(s_hat.numpy().astype(np.float64), valid.numpy())
    want = np.where(valid.numpy()[:, None, :], scaled, -1.0).argmax(-1)
    raw = np.where(valid.numpy()[:, None, :], s_hat.numpy(), -1.0).argmax(-1)
    assert (want != raw).sum() >= 10                               # the scaling matters on this input
    counts = np.stack([np.bincount(want[i], minlength=c) for i in range(b)])
    assert (counts[valid.numpy()] > 0).all()                       # no 1/N floor: capacities are the counts
    b_prior = prior("cam_area_scaled", s_hat, valid, 0.0, normalize="class")
    torch.testing.assert_close(b_prior, torch.from_numpy(counts / n).float())
    eye = torch.eye(n).expand(b, n, n)
    o_hat = normalize_scores(scoring_matrix(eye, eye, s_hat, "fixed", 1.0, 0.1), valid, "class")
    plan = transport(o_hat, b_prior, valid, "balanced", epsilon=0.002, max_iters=20000, tol=1e-9)
    assert np.array_equal(readout(plan, valid, "posterior").argmax(-1).numpy(), want)


@pytest.mark.parametrize("background", ["residual", "prompts"])
def test_raw_cam_row_and_cam_area_prior_use_one_label_rule(background):
    """The raw-CAM row (no affinity, background power 1, no PAR, read at token resolution)
    labels every token cam_labels(Ŝ), and the cam_area prior counts exactly those labels;
    the pre-issue-17 count on O-scaled scores (cam_area_scaled) differs on these inputs."""
    from dfa.cam import cam_labels
    from dfa.config import load_config
    from dfa.model import DFA

    cfg = load_config(None, ["clip.last_k=2", "decoder.width=16", "decoder.layers=1", "decoder.heads=2",
                             "refine.par_iters=0", f"cam.background={background}"])
    model = DFA(cfg, num_blocks=2, in_dim=12, num_classes=4).eval()
    g = torch.Generator().manual_seed(13)
    grid, b = (6, 6), 4
    n = grid[0] * grid[1]
    cos = 0.2 + 0.02 * torch.randn(b, n, 3, generator=g)       # a few logits apart: s_bg is not 0 or 1
    cos_bg = 0.2 + 0.02 * torch.randn(b, n, 5, generator=g)
    present = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    s_hat, valid = model.class_scores(cos, cos_bg, present, 100.0)
    tok = model.token_scores(None, s_hat, valid)
    image = torch.zeros(b, 3, *grid)
    labels = model.refine(None, s_hat, valid, image, grid, tokens=tok, bg_power=1.0).labels.flatten(1)
    rule = cam_labels(s_hat, valid)
    assert torch.equal(labels, rule)
    want = torch.stack([torch.bincount(rule[i], minlength=4) for i in range(b)]).float() / n
    want = want.clamp_min(1 / n) * valid
    torch.testing.assert_close(prior("cam_area", s_hat, valid, 0.0), want / want.sum(-1, keepdim=True))
    assert not torch.equal(prior("cam_area_scaled", s_hat, valid, 0.0), prior("cam_area", s_hat, valid, 0.0))


def test_ot_reports_non_convergence_per_image():
    """A problem that cannot converge within the cap says so (converged False, row error above
    the tolerance, all iterations used) while an easy one in the same batch reports its own,
    smaller iteration count; the columns are met either way, so column sums cannot show it."""
    g = torch.Generator().manual_seed(21)
    n, c = 40, 3
    hard = torch.rand(n, c, generator=g)
    easy = torch.full((n, c), 0.5)                                 # constant scores: one iteration
    o_hat = torch.stack([hard, easy])
    valid = _all_valid(2, c)
    b = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    tol = 1e-6
    plan, info = transport(o_hat, b, valid, "balanced", epsilon=0.01, max_iters=5, tol=tol, return_info=True)
    assert info["converged"].tolist() == [False, True]
    assert info["problem_iters"].tolist() == [5, 1]
    assert float(info["row_err"][0]) > tol and float(info["problem_err"][0]) > tol
    assert float(info["row_err"][1]) < 1e-5
    torch.testing.assert_close(info["column_sums"], b, atol=1e-6, rtol=0)   # b by construction
    assert float(info["col_err"].max()) < 1e-4
    _, done = transport(o_hat, b, valid, "balanced", epsilon=0.01, max_iters=5000, tol=tol, return_info=True)
    assert bool(done["converged"].all()) and 5 < int(done["problem_iters"][0]) < 5000


def test_ot_flags_a_present_class_that_wins_no_token():
    """A prior that gives a present class almost no mass: its column still sums to b (balanced
    OT hides it), but no token's posterior argmax is that class: the image is flagged."""
    g = torch.Generator().manual_seed(22)
    y = torch.arange(30) % 3                                       # every class owns 10 tokens
    o_hat = (0.6 * torch.nn.functional.one_hot(y, 3) + 0.3 * torch.rand(30, 3, generator=g))[None]
    valid = _all_valid(1, 3)
    fair = torch.tensor([[1 / 3, 1 / 3, 1 / 3]])
    starved = torch.tensor([[0.5, 0.5 - 1e-4, 1e-4]])
    _, ok = transport(o_hat, fair, valid, "balanced", 0.1, max_iters=1000, return_info=True)
    _, bad = transport(o_hat, starved, valid, "balanced", 0.1, max_iters=1000, return_info=True)
    assert not bool(ok["empty"].any()) and float((ok["argmax_area"] - fair).abs().max()) < 0.05
    torch.testing.assert_close(bad["column_sums"], starved, atol=1e-6, rtol=0)
    assert bad["empty"][0].tolist() == [False, False, True]
    assert float(bad["argmax_area"][0, 2]) == 0.0


@pytest.mark.parametrize("tau_m", [0.05, 0.3, 2.0])
def test_relaxed_matches_pots_sinkhorn_unbalanced(tau_m):
    """§5 property: rows exact, columns KL-penalised — POT's sinkhorn_unbalanced with
    reg_m = (inf, τ_m) and the plain entropy regulariser."""
    cost, a, b = _problem(3, 20, 5, torch.float64, seed=12)
    phi = torch.full((3, 5), tau_m / (tau_m + 0.1), dtype=torch.float64)
    t = sinkhorn(cost, a, b, 0.1, max_iters=20000, tol=1e-14, col_exponent=phi)
    for i in range(3):
        with pytest.warns(UserWarning):  # POT warns that reg_type="entropy" ignores c
            ref = ot.unbalanced.sinkhorn_unbalanced(a[i].numpy(), b[i].numpy(), cost[i].numpy(), 0.1,
                                                    reg_m=(float("inf"), tau_m), reg_type="entropy",
                                                    numItermax=100000, stopThr=1e-15)
        np.testing.assert_allclose(t[i].numpy(), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(t.sum(-1), a)                   # rows stay exact


def test_relaxed_limits_softmax_and_balanced():
    """§5 property: τ_m → 0 gives the row softmax of Ô/ε; τ_m → ∞ gives balanced OT; a
    dustbin with balanced class columns is balanced OT (fixing one scaling is a gauge)."""
    g = torch.Generator().manual_seed(6)
    o_hat = torch.rand(2, 30, 4, generator=g)
    valid = _all_valid(2, 4)
    b = torch.softmax(torch.rand(2, 4, generator=g), -1)
    soft = transport(o_hat, b, valid, "relaxed", epsilon=0.1, reg_m=1e-9, max_iters=50, tol=1e-9)
    torch.testing.assert_close(readout(soft, valid), torch.softmax(o_hat / 0.1, -1), atol=1e-6, rtol=0)
    bal = transport(o_hat, b, valid, "balanced", 0.1, max_iters=5000, tol=1e-9)
    hard = transport(o_hat, b, valid, "relaxed", 0.1, reg_m=1e6, max_iters=5000, tol=1e-9)
    torch.testing.assert_close(hard, bal, atol=1e-5, rtol=0)
    dust = transport(o_hat, b, valid, "dustbin", 0.1, reg_m=float("inf"), max_iters=5000, tol=1e-9)
    torch.testing.assert_close(dust, bal, atol=1e-6, rtol=0)
    free = transport(o_hat, b, valid, "dustbin", 0.1, reg_m=0.3, max_iters=5000, tol=1e-9)
    torch.testing.assert_close(free.sum(-1), torch.full((2, 30), 1 / 30))   # rows exact, the bin takes the rest


def _label_grid(seed, b=3, h=8, w=8, c=3):
    """Ground-truth token labels: a background with one or two rectangles per image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(b, h, w, dtype=torch.long)
    for i in range(b):
        for k in range(1, 1 + int(torch.randint(1, c, (1,), generator=g))):
            r0, c0 = torch.randint(0, h - 3, (2,), generator=g).tolist()
            y[i, r0:r0 + 3 + k % 2, c0:c0 + 3] = k
    return y.flatten(1), g


def _miou(pred, y, c):
    from dfa.metrics import confusion_matrix, miou
    return miou(confusion_matrix(pred, y, c))[0]


@pytest.mark.parametrize("affinity", ["identity", "smooth", "random"])
def test_ground_truth_areas_with_class_scaling_do_not_collapse(affinity):
    """§5 property: with ground-truth areas and per-column scaling, seeds do not collapse for
    any affinity: at least the raw CAM's mIoU."""
    y, g = _label_grid(7)
    b, n = y.shape
    c = 3
    onehot = torch.nn.functional.one_hot(y, c).float()
    s_hat = (0.6 * onehot + 0.6 * torch.rand(b, n, c, generator=g)).clamp(0, 1)   # a noisy CAM
    s_hat[..., 0] = 1 - s_hat[..., 1:].amax(-1)                                     # residual background
    valid = onehot.amax(1) > 0
    coords = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1).reshape(-1, 2)
    if affinity == "identity":
        aff = torch.eye(n).expand(b, n, n)
    elif affinity == "smooth":
        aff = torch.softmax(-torch.cdist(coords, coords) ** 2 / 4, -1).expand(b, n, n)
    else:
        aff = torch.softmax(torch.randn(b, n, n, generator=g), -1)
    raw = _miou(s_hat.masked_fill(~valid[:, None, :], -1).argmax(-1), y, c)
    areas = onehot.mean(1)
    o_hat = normalize_scores(scoring_matrix(aff @ aff, torch.eye(n).expand(b, n, n), s_hat), valid, "class")
    plan = transport(o_hat, prior("oracle", o_hat, valid, areas=areas), valid, "balanced", 0.1)
    assert _miou(readout(plan, valid).argmax(-1), y, c) >= raw - 1e-9


def test_readouts_and_reweight():
    g = torch.Generator().manual_seed(8)
    o_hat = torch.rand(3, 20, 4, generator=g)
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    plan, info = transport(o_hat, prior("uniform", o_hat, valid), valid, "balanced", 0.1, return_info=True)
    post = readout(plan, valid, "posterior")
    torch.testing.assert_close(post.sum(-1), torch.ones(3, 20), atol=1e-5, rtol=0)
    colmax = readout(plan, valid, "colmax")
    torch.testing.assert_close(colmax.amax(1)[valid], torch.ones(int(valid.sum())))
    assert (colmax[~valid[:, None, :].expand_as(colmax)] == 0).all()
    torch.testing.assert_close(info["column_sums"], prior("uniform", o_hat, valid), atol=1e-5, rtol=0)
    rw = reweight_scores(o_hat, valid)
    torch.testing.assert_close(rw[1], o_hat[1, :, 1:] * valid[1, 1:])        # one class: unchanged
    assert (rw[0] <= o_hat[0, :, 1:] + 1e-6).all() and (rw[:, :, 2] == 0)[0].all()
    with pytest.raises(ValueError):
        readout(plan, valid, "other")
