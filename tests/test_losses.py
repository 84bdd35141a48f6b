"""Tests for dfa.losses (method.md §3, §4, §6)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from dfa.losses import (alignment_loss, balanced_seg_loss, hfar_pairs, radius_mask,
                        rectification_loss, update_alpha)


# --- LFAA ------------------------------------------------------------------------------

def test_update_alpha():
    s_l = torch.rand(2, 6, 6)
    a_s = torch.rand(2, 6, 6) * 3 + 1
    mm = (a_s - a_s.amin((1, 2), keepdim=True)) / (a_s.amax((1, 2), keepdim=True)
                                                   - a_s.amin((1, 2), keepdim=True))
    expected = 0.9 * 0.5 + 0.1 * (s_l - mm).abs().mean()
    alpha = update_alpha(0.5, s_l, a_s)
    assert alpha.dim() == 0 and not alpha.requires_grad
    torch.testing.assert_close(alpha, expected)
    assert torch.isclose(update_alpha(alpha, s_l, a_s), 0.9 * alpha + 0.1 * (s_l - mm).abs().mean())


def test_alignment_zero_when_matching():
    a = torch.rand(2, 10, 10) + 0.1
    assert alignment_loss(a, 3 * a, alpha=0.0).abs() < 1e-6        # same row distributions
    assert alignment_loss(a, a, alpha=0.0, form="generalized").abs() < 1e-6


def test_alignment_positive_on_mismatch_and_empty_mask():
    torch.manual_seed(0)
    s_l = torch.rand(2, 10, 10)
    a_s = torch.rand(2, 10, 10)
    full = alignment_loss(s_l, a_s, alpha=-1.0)                     # every entry masked
    assert full > 0.01
    s_t = s_l / s_l.sum(-1, keepdim=True)
    a_t = a_s / a_s.sum(-1, keepdim=True)
    torch.testing.assert_close(full, (s_t * (s_t / a_t).log()).sum() / 200)
    assert alignment_loss(s_l, a_s, alpha=0.5, form="generalized") > 0
    assert alignment_loss(s_l, a_s, alpha=2.0) == 0                 # empty mask


def test_alignment_gradient_only_to_student():
    s_l = torch.rand(2, 8, 8, requires_grad=True)
    a_s = torch.rand(2, 8, 8, requires_grad=True)
    alignment_loss(s_l, a_s, alpha=0.3).backward()
    assert s_l.grad is None
    assert a_s.grad is not None and a_s.grad.abs().sum() > 0


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


def _reference_pairs(s_h, y, h, w, radius, window, ignore, hist_cos, num_classes):
    """Loop implementation of method.md §4 for one image."""
    n = h * w
    s_bar = s_h.mean()
    lo, hi = (window - 1) // 2, window // 2
    win = []
    for t in range(n):
        r, c = divmod(t, w)
        win.append([rr * w + cc for rr in range(max(0, r - lo), min(h, r + hi + 1))
                    for cc in range(max(0, c - lo), min(w, c + hi + 1))])
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
        if y[i] == ignore or y[j] == ignore or max(abs(ri - rj), abs(ci - cj)) > radius:
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
        rp, rn = _reference_pairs(s_h[b], y[b], h, w, 2, 3, 255, 0.5, 3)
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
