"""Tests for dfa.losses (method.md §3, §4, §6)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from dfa.losses import (alignment_loss, balanced_seg_loss, grid_radius, grid_window, hfar_pairs, radius_mask,
                        rectification_loss, selective_mask, token_labels, update_alpha)


# --- sizes in grid units (§10) ---------------------------------------------------------

@pytest.mark.parametrize("n,radius,window", [(8, 3, 3), (16, 6, 7), (20, 8, 9), (12, 5, 5), (4, 2, 3)])
def test_grid_rules_of_section_10(n, radius, window):
    assert grid_radius(n) == radius and grid_window(n) == window
    assert grid_window(n) % 2 == 1 and grid_window(n) >= 3


def test_sizes_resolve_per_axis_on_a_non_square_grid_and_tokens_win():
    from dfa.config import load_config
    from dfa.model import DFA
    cfg = load_config(None, ["decoder.width=8", "decoder.layers=1", "decoder.heads=2"])
    model = DFA(cfg, num_blocks=1, in_dim=4, num_classes=3)
    assert model.sizes((20, 20)) == {"radius": (8, 8), "window": (9, 9), "box": (5, 5)}
    assert model.sizes((8, 16)) == {"radius": (3, 6), "window": (3, 7), "box": (3, 5)}
    fixed = load_config(None, ["loss.radius=4", "loss.window=5", "frequency.box=3", "decoder.width=8",
                               "decoder.layers=1", "decoder.heads=2"])
    assert DFA(fixed, 1, 4, 3).sizes((20, 12)) == {"radius": (4, 4), "window": (5, 5), "box": (3, 3)}
    m = radius_mask(8, 16, (3, 6))
    i = 4 * 16 + 8                                                   # token (4, 8)
    assert m[i, 1 * 16 + 2] and not m[i, 0 * 16 + 8] and not m[i, 4 * 16 + 1]   # (1,2) in; (0,8), (4,1) out


# --- LFAA ------------------------------------------------------------------------------

def test_update_alpha_v1_and_v2():
    s_l = torch.rand(2, 6, 6)
    a_s = torch.rand(2, 6, 6) * 3 + 1
    mm = (a_s - a_s.amin((1, 2), keepdim=True)) / (a_s.amax((1, 2), keepdim=True)
                                                   - a_s.amin((1, 2), keepdim=True))
    alpha = update_alpha(0.5, s_l, a_s, mode="alpha_v1")
    assert alpha.dim() == 0 and not alpha.requires_grad
    torch.testing.assert_close(alpha, 0.9 * 0.5 + 0.1 * (s_l - mm).abs().mean())
    # v2: per-row min-max off the diagonal; identical rows up to scale and shift → no gap
    base = torch.rand(2, 6, 6)
    same = update_alpha(0.5, base, 5 * base + 2)
    torch.testing.assert_close(same, torch.tensor(0.45))
    assert update_alpha(0.5, s_l, a_s) > same


def test_selective_mask_follows_the_teacher():
    """v2's mask keeps few entries of a sharp teacher and many of a flat one (v1's kept
    about half whatever the teacher); topk keeps a fixed share; the diagonal is never kept."""
    n = 40
    g = torch.Generator().manual_seed(0)
    sharp = torch.softmax(torch.randn(1, n, n, generator=g) * 6, -1)
    flat = torch.softmax(torch.randn(1, n, n, generator=g) * 0.3, -1)
    frac = {k: selective_mask(t, 0.5, "alpha").float().mean().item() for k, t in (("sharp", sharp), ("flat", flat))}
    assert frac["sharp"] < 0.1 < 0.2 < frac["flat"]
    for t in (sharp, flat):
        m = selective_mask(t, 0.5, "topk", keep=0.25)
        assert not m[0].diagonal().any()
        torch.testing.assert_close(m.float().sum(-1), torch.full((1, n), float(round(0.25 * (n - 1)))))
        assert not selective_mask(t, 0.5, "alpha")[0].diagonal().any()


def test_renormalized_kl_is_nonnegative_and_zero_only_at_the_teacher():
    g = torch.Generator().manual_seed(1)
    s_l = torch.rand(3, 10, 10, generator=g)
    mask = torch.rand(3, 10, 10, generator=g) > 0.5
    for _ in range(5):
        a_s = torch.rand(3, 10, 10, generator=g) + 1e-3
        assert alignment_loss(s_l, a_s, mask) >= 0
    assert alignment_loss(s_l, 7 * s_l, mask).abs() < 1e-6            # per-row scale is free
    off_mask = torch.where(mask, s_l, torch.rand(3, 10, 10, generator=g))
    assert alignment_loss(s_l, off_mask, mask).abs() < 1e-6           # only masked entries count
    assert alignment_loss(s_l, torch.rand(3, 10, 10), torch.zeros_like(mask)) == 0   # empty mask
    # the printed (v1) form can go negative on a masked subset
    s2 = torch.tensor([[[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]])
    a2 = torch.tensor([[[0.4, 0.3, 0.3], [0.3, 0.4, 0.3], [0.3, 0.3, 0.4]]])
    m2 = torch.tensor([[[False, True, True], [True, False, True], [True, True, False]]])
    assert alignment_loss(s2, a2, m2, form="printed") < 0 <= alignment_loss(s2, a2, m2)


def test_renormalized_kl_minimiser_is_the_teacher_on_the_mask():
    """Gradient descent on the student from a uniform start reaches the teacher's
    renormalised masked rows (v1's printed form would flatten them instead)."""
    g = torch.Generator().manual_seed(2)
    s_l = torch.softmax(torch.randn(1, 8, 8, generator=g) * 3, -1)
    mask = selective_mask(s_l, 0.2, "alpha")
    logits = torch.zeros(1, 8, 8, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(600):
        opt.zero_grad()
        alignment_loss(s_l, torch.softmax(logits, -1), mask).backward()
        opt.step()
    a = torch.softmax(logits, -1).detach() * mask
    t = s_l * mask
    rows = mask.sum(-1) > 0
    torch.testing.assert_close((a / a.sum(-1, keepdim=True))[rows], (t / t.sum(-1, keepdim=True))[rows],
                               atol=2e-3, rtol=0)


def test_row_form_is_nonnegative_and_its_minimiser_is_the_teacher_with_zero_off_the_mask():
    """``loss.align_form: row``: a KL on the whole row (off the diagonal), so unlike ``renormalized``
    it pulls the student down off the mask; with a binary teacher (§11) ``renormalized`` cannot."""
    g = torch.Generator().manual_seed(3)
    s_l = torch.rand(2, 9, 9, generator=g)
    mask = selective_mask(s_l, 0.5, "alpha")
    for _ in range(5):
        assert alignment_loss(s_l, torch.rand(2, 9, 9, generator=g) + 1e-3, mask, form="row") >= 0
    eye = torch.eye(9, dtype=torch.bool)
    at_teacher = torch.where(mask, s_l, torch.zeros(())) + eye * 5.0          # the diagonal does not count
    assert alignment_loss(s_l, 3 * at_teacher + 1e-12, mask, form="row").abs() < 1e-5
    spilled = torch.where(mask | eye, at_teacher, torch.full((), 0.2))
    assert alignment_loss(s_l, spilled, mask, form="row") > 0.05
    assert alignment_loss(s_l, spilled, mask).abs() < 1e-5                     # renormalized: blind to it
    # binary teacher: the renormalized gradient off the mask is 0, the row form's is > 0 (raising it costs)
    same = (torch.arange(9)[:, None] // 3 == torch.arange(9)[None] // 3).float()[None]
    m = selective_mask(same, 0.5, "alpha")
    a = torch.full((1, 9, 9), 0.5, requires_grad=True)
    off = ~(m | eye)
    for form, positive in (("renormalized", False), ("row", True)):
        a.grad = None
        alignment_loss(same, a, m, form=form).backward()
        assert bool((a.grad[off] > 1e-4).all()) == positive
        assert float(a.grad[off].abs().max()) == 0.0 or positive


def test_row_form_minimiser_found_by_adam_is_the_teacher_on_the_mask_and_zero_off_it():
    """§3 v3 ``row``: optimising a free positive student from a flat start reaches, on every row with
    a non-empty mask, the teacher renormalised over the mask, with (almost) no mass off the mask;
    the loss there is ≈ 0, below every perturbed student, and ≥ 0 on random students and masks."""
    g = torch.Generator().manual_seed(7)
    n = 7
    s_l = torch.softmax(torch.randn(2, n, n, generator=g) * 2, -1)
    eye = torch.eye(n, dtype=torch.bool)
    mask = (torch.rand(2, n, n, generator=g) > 0.6) & ~eye                # §3 masks are off the diagonal
    mask[0, 3] = False                                                     # a row with an empty mask
    for _ in range(20):
        m = torch.rand(2, n, n, generator=g) > torch.rand(())
        assert alignment_loss(s_l, torch.rand(2, n, n, generator=g) + 1e-4, m, form="row") >= 0
    logits = torch.zeros(2, n, n, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(800):
        opt.zero_grad()
        alignment_loss(s_l, torch.exp(logits), mask, form="row").backward()
        opt.step()
    a = torch.exp(logits).detach().masked_fill(eye, 0)
    a = a / a.sum(-1, keepdim=True)                                        # the student's row, off the diagonal
    t = s_l * mask
    rows = mask.any(-1)
    torch.testing.assert_close(a[rows] * mask[rows], (t / t.sum(-1, keepdim=True).clamp_min(1e-12))[rows],
                               atol=1e-2, rtol=0)
    assert float((a * ~mask)[rows].sum(-1).max()) < 1e-2                  # ≈ 0 off the mask
    best = torch.where(mask, s_l, torch.zeros(())) + eye                  # the claimed minimiser
    at_best = alignment_loss(s_l, best + 1e-12, mask, form="row")
    assert at_best.abs() < 1e-5
    for _ in range(10):
        noise = torch.rand(2, n, n, generator=g)
        for student in (best * (1 + 0.3 * noise), best + 0.05 * noise * ~mask):   # reshaped; mass off the mask
            assert alignment_loss(s_l, student + 1e-12, mask, form="row") > at_best + 1e-4


def test_alignment_gradient_only_to_student():
    s_l = torch.rand(2, 8, 8, requires_grad=True)
    a_s = torch.rand(2, 8, 8, requires_grad=True)
    alignment_loss(s_l, a_s, s_l.detach() > 0.3).backward()
    assert s_l.grad is None
    assert a_s.grad is not None and a_s.grad.abs().sum() > 0


# --- token labels (§4) -----------------------------------------------------------------

def test_token_labels_majority_band_and_margin():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4, :4] = 1                              # token (0,0): all class 1
    labels[0, :4, 4:6] = 2                             # token (0,1): half 2, half 0 → no majority
    labels[0, 4, 0] = 2                                # token (1,0): top-left pixel 2, majority 0
    labels[0, 4:8, 4:8] = 255                          # token (1,1): ignore
    y = token_labels(labels, (2, 2), 3, "majority")
    assert y.tolist() == [[1, 255, 0, 255]]
    assert token_labels(labels, (2, 2), 3, "nearest").tolist() == [[1, 2, 2, 255]]
    assert token_labels(labels, (2, 2), 3, "majority", min_share=0.0).tolist() == [[1, 0, 0, 255]]
    scores = torch.zeros(1, 3, 8, 8)
    scores[:, 0] = 0.5
    scores[:, 1, :4, :4] = 0.55                        # token (0,0): margin about 0.05
    scores[:, 0, 4:, :4] = 1.0                         # token (1,0): confident background
    y = token_labels(labels, (2, 2), 3, "majority", scores=scores, margin=0.1)
    assert y.tolist() == [[255, 255, 0, 255]]


# --- HFAR ------------------------------------------------------------------------------

def test_radius_mask():
    m = radius_mask(5, 4, radius=1)
    assert m.shape == (20, 20) and m.dtype == torch.bool
    assert torch.equal(m, m.T) and m.diagonal().all()
    assert m[0, 5] and m[0, 1] and not m[0, 2] and not m[0, 8]       # (1,1) in, (2,0) out
    assert not radius_mask(5, 4, 1, include_self=False).diagonal().any()
    assert radius_mask(4, 4, 3).all()


def _two_regions(h=6, w=6):
    """Left half label 1, right half label 2; S_h high within a region, low across."""
    lab = torch.ones(h, w, dtype=torch.long)
    lab[:, w // 2:] = 2
    y = lab.flatten()
    same = y[:, None] == y[None, :]
    s_h = torch.where(same, 0.9, 0.1)
    return s_h[None].clone(), y[None].clone()


def test_hfar_two_regions_consistent_pairs():
    s_h, y = _two_regions()
    pos, neg = hfar_pairs(s_h, y, (6, 6), radius=8, window=3)
    same = y[0, :, None] == y[0, None, :]
    assert torch.equal(pos[0], same) and torch.equal(neg[0], ~same)
    assert not (pos & neg).any()


def test_hfar_radius_and_ignore():
    s_h, y = _two_regions()
    pos, neg = hfar_pairs(s_h, y, (6, 6), radius=1, window=3)
    assert torch.equal((pos | neg)[0], radius_mask(6, 6, 1))
    y[0, 7] = 255
    pos, neg = hfar_pairs(s_h, y, (6, 6), radius=8, window=3)
    assert not pos[0, 7].any() and not pos[0, :, 7].any()
    assert not neg[0, 7].any() and not neg[0, :, 7].any()
    assert pos[0, 0, 1] and neg[0, 0, 5]


def test_hfar_ambiguous_pairs_decided_by_windows():
    s_h, y = _two_regions(8, 8)
    i, j = 2 * 8 + 1, 5 * 8 + 1                        # both deep in the left region
    s_h[0, i, j] = s_h[0, j, i] = 0.0                  # same label, low S_h: ambiguous
    k, m = 2 * 8 + 1, 2 * 8 + 6                        # left / right region
    s_h[0, k, m] = s_h[0, m, k] = 1.0                  # different label, high S_h: ambiguous
    pos, neg = hfar_pairs(s_h, y, (8, 8), radius=8, window=3)
    assert pos[0, i, j] and not neg[0, i, j]           # windows agree and are similar
    assert neg[0, k, m] and not pos[0, k, m]           # windows disagree and are dissimilar


def _reference_pairs(s_h, y, h, w, radius, window, ignore, hist_cos, num_classes, include_self=True):
    """Loop implementation of method.md §4 for one image; radius/window are (y, x) pairs."""
    n = h * w
    off = ~torch.eye(n, dtype=torch.bool)
    s_bar = s_h.mean() if include_self else s_h[off].mean()
    (ry, rx), (wy, wx) = radius, window
    win = []
    for t in range(n):
        r, c = divmod(t, w)
        win.append([rr * w + cc for rr in range(max(0, r - (wy - 1) // 2), min(h, r + wy // 2 + 1))
                    for cc in range(max(0, c - (wx - 1) // 2), min(w, c + wx // 2 + 1))])
    hist = torch.zeros(n, num_classes, dtype=torch.float64)
    for t in range(n):
        for q in win[t]:
            if y[q] != ignore:
                hist[t, y[q]] += 1
    hist = F.normalize(hist, dim=1)
    pos = torch.zeros(n, n, dtype=torch.bool)
    neg = torch.zeros(n, n, dtype=torch.bool)
    for i, j in itertools.product(range(n), range(n)):
        ri, ci = divmod(i, w)
        rj, cj = divmod(j, w)
        if y[i] == ignore or y[j] == ignore or abs(ri - rj) > ry or abs(ci - cj) > rx:
            continue
        if i == j and not include_self:
            continue
        high, same = bool(s_h[i, j] > s_bar), bool(y[i] == y[j])
        if high and same:
            pos[i, j] = True
        elif not high and not same:
            neg[i, j] = True
        else:
            hs = float(hist[i] @ hist[j]) > hist_cos
            sm = bool(s_h[win[i]][:, win[j]].double().mean() > s_bar)
            pos[i, j] = hs and sm
            neg[i, j] = (not hs) and (not sm)
    return pos, neg


def test_hfar_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    h, w = 4, 5
    s_h = torch.rand(2, h * w, h * w, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2, h * w), generator=g)
    y[0, 3] = 255
    pos, neg = hfar_pairs(s_h, y, (h, w), radius=2, window=3, num_classes=3)
    for b in range(2):
        rp, rn = _reference_pairs(s_h[b], y[b], h, w, (2, 2), (3, 3), 255, 0.5, 3)
        assert torch.equal(pos[b], rp) and torch.equal(neg[b], rn)
    # v2: per-axis sizes, diagonal dropped, S̄_h over the off-diagonal pairs
    pos, neg = hfar_pairs(s_h, y, (h, w), radius=(1, 2), window=(3, 5), num_classes=3, include_self=False)
    assert not pos[0].diagonal().any() and not neg[0].diagonal().any()
    for b in range(2):
        rp, rn = _reference_pairs(s_h[b], y[b], h, w, (1, 2), (3, 5), 255, 0.5, 3, include_self=False)
        assert torch.equal(pos[b], rp) and torch.equal(neg[b], rn)


def test_rectification_loss():
    pos = torch.zeros(1, 4, 4, dtype=torch.bool)
    neg = torch.zeros_like(pos)
    pos[0, :2, :2] = True
    neg[0, :2, 2:] = True
    perfect = pos.float()
    assert rectification_loss(perfect, pos, neg) == 0
    assert rectification_loss(1 - perfect, pos, torch.zeros_like(neg)) == 1   # positives only
    assert rectification_loss(1 - perfect, pos, neg) == 2                     # 1 per kind
    half = torch.full((1, 4, 4), 0.5)
    assert rectification_loss(half, pos, neg) == 1
    assert rectification_loss(half, torch.zeros_like(pos), torch.zeros_like(neg)) == 0
    # signs: raising A on positives lowers the loss, raising it on negatives raises it
    a = torch.full((1, 4, 4), 0.5, requires_grad=True)
    rectification_loss(a, pos, neg).backward()
    assert (a.grad[pos] < 0).all() and (a.grad[neg] > 0).all()



def test_rectification_loss_fg_bg_balance():
    """``fg_bg``: background and foreground positives weigh ½ each whatever their counts, so
    an object's few pairs count as much as the background's many; ``pairs`` unchanged."""
    y = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1]])            # 6 background tokens, 2 object tokens
    same = y[:, :, None] == y[:, None, :]
    pos, neg = same.clone(), ~same
    a = same.float()
    a[0, 6:, 6:] = 0.0                                       # the object's own pairs all wrong
    spec = rectification_loss(a, pos, neg)
    bal = rectification_loss(a, pos, neg, y, "fg_bg")
    assert torch.isclose(spec, torch.tensor(4 / 40))          # 4 of the 40 positives wrong
    assert torch.isclose(bal, torch.tensor(0.5))              # ½ · mean over the 4 fg pairs (all 1)
    assert rectification_loss(same.float(), pos, neg, y, "fg_bg") == 0
    assert torch.equal(rectification_loss(a, pos, neg, y, "pairs"), spec)
    # a background-only image: the fg mean is empty (0), the bg mean weighs ½
    y0 = torch.zeros(1, 4, dtype=torch.long)
    p0 = torch.ones(1, 4, 4, dtype=torch.bool)
    assert torch.isclose(rectification_loss(torch.zeros(1, 4, 4), p0, ~p0, y0, "fg_bg"), torch.tensor(0.5))
    # gradient: an object pair is pushed harder than a background pair under fg_bg
    g = torch.full((1, 8, 8), 0.5, requires_grad=True)
    rectification_loss(g, pos, neg, y, "fg_bg").backward()
    assert g.grad[0, 6, 7] < g.grad[0, 0, 1] < 0
    # a positive across labels (a window-decided pair) is in neither half
    pos_x = pos.clone()
    pos_x[0, 0, 6] = pos_x[0, 6, 0] = True
    a_x = a.clone()
    a_x[0, 0, 6] = a_x[0, 6, 0] = 0.0
    assert torch.equal(rectification_loss(a_x, pos_x, neg & ~pos_x, y, "fg_bg"),
                       rectification_loss(a_x, pos, neg & ~pos_x, y, "fg_bg"))
    with pytest.raises(ValueError, match="labels"):
        rectification_loss(a, pos, neg, None, "fg_bg")
    with pytest.raises(ValueError, match="balance"):
        rectification_loss(a, pos, neg, y, "weighted")

# --- segmentation ----------------------------------------------------------------------

def test_balanced_seg_loss_manual():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5)
    labels = torch.randint(0, 4, (2, 3, 5))
    labels[0, 0, :3] = 255
    ce = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    bg, fg = labels == 0, (labels > 0) & (labels != 255)
    expected = 0.5 * (ce[bg].mean() + ce[fg].mean())
    torch.testing.assert_close(balanced_seg_loss(logits, labels), expected)


def test_balanced_seg_loss_missing_part():
    logits = torch.randn(1, 3, 2, 2)
    labels = torch.tensor([[[1, 2], [255, 1]]])                     # no background pixels
    ce = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    torch.testing.assert_close(balanced_seg_loss(logits, labels), 0.5 * ce[labels != 255].mean())
    assert balanced_seg_loss(logits, torch.full((1, 2, 2), 255)) == 0
    with pytest.raises(ValueError):
        balanced_seg_loss(logits, torch.zeros(1, 3, 3, dtype=torch.long))
