"""Training losses: LFAA alignment (§3), HFAR rectification (§4), balanced seg loss (§6).

All references are to method.md. params.yaml options named in the docstrings:
``lfaa.alpha_momentum`` (0.9), ``lfaa.alpha0`` (0.5), ``lfaa.kl_form`` (``printed`` |
``generalized``), ``hfar.radius`` (8), ``hfar.window`` (9), ``hfar.hist_cos`` (0.5),
``hfar.include_self`` (True).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "update_alpha",
    "alignment_loss",
    "radius_mask",
    "hfar_pairs",
    "rectification_loss",
    "balanced_seg_loss",
]


# ---------------------------------------------------------------------------------------
# LFAA (method.md §3)
# ---------------------------------------------------------------------------------------

def _minmax_per_image(a: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Rescale each (N, N) matrix of a (..., N, N) stack to [0, 1] over all its entries."""
    lo = a.amin(dim=(-2, -1), keepdim=True)
    hi = a.amax(dim=(-2, -1), keepdim=True)
    return (a - lo) / (hi - lo).clamp_min(eps)


@torch.no_grad()
def update_alpha(alpha: Union[float, torch.Tensor], s_l: torch.Tensor, a_s: torch.Tensor,
                 momentum: float = 0.9) -> torch.Tensor:
    """Running quality threshold α of the selective mask. method.md §3.

    ``α_t = m·α_{t−1} + (1 − m)·mean|S_l − minmax(A_s)|``, minmax per image over all N²
    entries, the mean over every entry of the batch. α_0 = 0.5 (params.yaml
    ``lfaa.alpha0``), m = ``lfaa.alpha_momentum``.

    Returns a detached 0-d float32 tensor on s_l's device (no host sync on a GPU; use
    ``float(alpha)`` to log it). ``alpha`` may be a python float or a 0-d tensor.

    Args:
        alpha: previous α.
        s_l: (B, N, N) low-frequency relation S_l.
        a_s: (B, N, N) attention-path affinity A_s.
    """
    gap = (s_l.detach().float() - _minmax_per_image(a_s.detach().float())).abs().mean()
    prev = torch.as_tensor(alpha, dtype=torch.float32, device=gap.device)
    return (momentum * prev + (1.0 - momentum) * gap).detach()


def alignment_loss(s_l: torch.Tensor, a_s: torch.Tensor, alpha: Union[float, torch.Tensor],
                   eps: float = 1e-8, form: str = "printed") -> torch.Tensor:
    """LFAA masked KL alignment L_a. method.md §3.

    ``M = [S_l > α]``; ``S̃_l``, ``Ã_s`` are the row-normalised matrices (each row divided by
    its sum, floor ``eps``); S_l is the teacher and is detached, so gradients reach a_s only.

    * ``printed`` (default): ``L_a = Σ M·S̃_l·log(S̃_l/Ã_s) / max(ΣM, 1)``, sums over the whole
      batch. Sign caveat: a full-row KL is ≥ 0, but its terms restricted to the masked
      entries can be negative, so this value can be (slightly) negative when the mask drops
      entries where S̃_l < Ã_s. It is 0 when S̃_l = Ã_s and 0 when the mask is empty.
    * ``generalized``: adds ``− S̃_l + Ã_s`` to each term (the Bregman divergence of
      x log x). Summed over full rows it equals the KL (both rows sum to 1), and each term
      is ≥ 0, so the masked loss is ≥ 0 (params.yaml ``lfaa.kl_form``).

    Args:
        s_l: (B, N, N) teacher relation (any ≥ 0 values; detached here).
        a_s: (B, N, N) student affinity, > 0.
        alpha: threshold of the mask (float or 0-d tensor).
    Returns:
        0-d tensor.
    """
    s = s_l.detach()
    mask = (s > alpha).to(a_s.dtype)
    s_t = s / s.sum(dim=-1, keepdim=True).clamp_min(eps)
    a_t = a_s / a_s.sum(dim=-1, keepdim=True).clamp_min(eps)
    term = s_t * (s_t.clamp_min(eps).log() - a_t.clamp_min(eps).log())
    if form == "generalized":
        term = term - s_t + a_t
    elif form != "printed":
        raise ValueError(f"alignment_loss form must be 'printed' or 'generalized', got {form!r}")
    return (mask * term).sum() / mask.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------------------
# HFAR (method.md §4)
# ---------------------------------------------------------------------------------------

def radius_mask(h: int, w: int, radius: int = 8, device=None,
                include_self: bool = True) -> torch.Tensor:
    """Token pairs within a Chebyshev radius on the h×w grid. method.md §4 (WeCLIP).

    ``True`` where ``max(|r_i − r_j|, |c_i − c_j|) ≤ radius``. The diagonal is included by
    default as in WeCLIP's ``get_mask_by_radius`` (params.yaml ``hfar.include_self``).

    Returns:
        (N, N) bool, N = h*w, row-major token order.
    """
    r = torch.arange(h, device=device).repeat_interleave(w)
    c = torch.arange(w, device=device).repeat(h)
    cheb = torch.maximum((r[:, None] - r[None, :]).abs(), (c[:, None] - c[None, :]).abs())
    mask = cheb <= radius
    if not include_self:
        mask.fill_diagonal_(False)
    return mask


def _box_sum(x: torch.Tensor, dim: int, window: int) -> torch.Tensor:
    """Sum over a window of side ``window`` centred at each index along ``dim``, clipped at
    the borders (cumulative-sum differences; O(n) per line)."""
    n = x.shape[dim]
    before, after = (window - 1) // 2, window // 2
    csum = torch.cumsum(x, dim=dim)
    zero = torch.zeros_like(csum.narrow(dim, 0, 1))
    csum = torch.cat([zero, csum], dim=dim)                          # length n + 1
    idx = torch.arange(n, device=x.device)
    upper = (idx + after + 1).clamp(max=n)
    lower = (idx - before).clamp(min=0)
    return csum.index_select(dim, upper) - csum.index_select(dim, lower)


def _box_count(n: int, window: int, device) -> torch.Tensor:
    """Number of in-grid indices in each clipped window along an axis of length n."""
    idx = torch.arange(n, device=device)
    upper = (idx + window // 2 + 1).clamp(max=n)
    lower = (idx - (window - 1) // 2).clamp(min=0)
    return (upper - lower).to(torch.float64)


@torch.no_grad()
def hfar_pairs(s_h: torch.Tensor, labels: torch.Tensor, grid: Tuple[int, int], radius: int = 8,
               window: int = 9, ignore_index: int = 255, hist_cos: float = 0.5,
               num_classes: Optional[int] = None,
               include_self: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Positive / negative token pairs for HFAR. method.md §4.

    With ``S̄_h`` the mean of S_h over all N² pairs of the image:

    * positive: ``S_h > S̄_h`` and ``Y_i = Y_j``; negative: ``S_h ≤ S̄_h`` and ``Y_i ≠ Y_j``;
    * ambiguous (the two signals disagree): the windows W(i), W(j) of side ``window``
      centred at i and j (clipped at the borders) decide. ``hist`` = cosine of the two
      windows' label histograms (ignore tokens not counted), ``s̄`` = mean of S_h over
      W(i) × W(j) (all tokens). Positive if ``hist > hist_cos`` and ``s̄ > S̄_h``; negative if
      ``hist ≤ hist_cos`` and ``s̄ ≤ S̄_h``; otherwise ignored;
    * pairs with an ignore token, and pairs beyond ``radius`` (:func:`radius_mask`), are
      dropped.

    Vectorised: histograms by a one-hot box filter over the grid; the window means by a
    separable 4-D box filter (cumulative sums) over S_h viewed as (B, h, w, h, w).

    Args:
        s_h: (B, N, N) high-frequency relation.
        labels: (B, N) long token pseudo-labels in 0..C−1 or ``ignore_index``.
        grid: (h, w) with h*w = N.
        num_classes: C; inferred from the largest non-ignore label when None.
    Returns:
        (pos, neg): (B, N, N) bool, disjoint.
    """
    h, w = int(grid[0]), int(grid[1])
    b, n, n2 = s_h.shape
    if n != n2 or n != h * w:
        raise ValueError(f"s_h {tuple(s_h.shape)} does not match grid {grid}")
    if labels.shape != (b, n):
        raise ValueError(f"labels must be (B, N) = {(b, n)}, got {tuple(labels.shape)}")
    labels = labels.long()
    valid = labels != ignore_index
    if num_classes is None:
        num_classes = int(labels[valid].max().item()) + 1 if bool(valid.any()) else 1

    s = s_h.detach().to(torch.float64)
    s_bar = s.mean(dim=(-2, -1), keepdim=True)                       # (B, 1, 1)
    high = s > s_bar
    same = labels[:, :, None] == labels[:, None, :]
    pos = high & same
    neg = ~high & ~same
    amb = high ^ same

    # Label histograms of the windows around every token: (B, N, C), ignore not counted.
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).to(torch.float64)
    onehot = onehot * valid[..., None]
    hist = onehot.view(b, h, w, num_classes)
    hist = _box_sum(_box_sum(hist, 1, window), 2, window).reshape(b, n, num_classes)
    hist = F.normalize(hist, dim=-1)
    hist_sim = hist @ hist.transpose(-1, -2)                          # (B, N, N)

    # Mean S_h between the windows W(i) × W(j): 4-D separable box filter.
    s4 = s.view(b, h, w, h, w)
    for dim in (1, 2, 3, 4):
        s4 = _box_sum(s4, dim, window)
    count = torch.outer(_box_count(h, window, s.device),
                        _box_count(w, window, s.device)).reshape(n)  # |W(i)|
    s_win = s4.reshape(b, n, n) / (count[:, None] * count[None, :])

    hist_ok = hist_sim > hist_cos
    s_ok = s_win > s_bar
    pos = pos | (amb & hist_ok & s_ok)
    neg = neg | (amb & ~hist_ok & ~s_ok)

    keep = valid[:, :, None] & valid[:, None, :]
    keep = keep & radius_mask(h, w, radius, device=s.device, include_self=include_self)
    return pos & keep, neg & keep


def rectification_loss(a: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """HFAR rectification L_r. method.md §4.

    ``L_r = mean_{pos}(1 − A) + mean_{neg} A`` over all pairs of the batch; each mean is 0
    when it has no pairs. ``a`` is the symmetrised sigmoid output of the inverse path before
    Sinkhorn, entries in [0, 1]. Range [0, 2]: 0 for a perfect affinity, 2 for an inverted
    one with both kinds of pairs present (1 per kind).

    Args:
        a: (B, N, N) in [0, 1].
        pos, neg: (B, N, N) bool masks from :func:`hfar_pairs`.
    Returns:
        0-d tensor.
    """
    pos = pos.to(a.dtype)
    neg = neg.to(a.dtype)
    pos_term = (pos * (1.0 - a)).sum() / pos.sum().clamp_min(1.0)
    neg_term = (neg * a).sum() / neg.sum().clamp_min(1.0)
    return pos_term + neg_term


# ---------------------------------------------------------------------------------------
# Segmentation (method.md §6)
# ---------------------------------------------------------------------------------------

def balanced_seg_loss(logits: torch.Tensor, labels: torch.Tensor,
                      ignore_index: int = 255) -> torch.Tensor:
    """Background/foreground balanced cross-entropy L_seg. method.md §6 (WeCLIP get_seg_loss).

    ``½ (CE over pixels labelled 0 + CE over pixels labelled > 0 and ≠ ignore)``, each CE a
    mean over its pixels; a part with no pixels contributes 0 (WeCLIP would give NaN).

    Args:
        logits: (B, C, H, W) — upsample to the label size before calling.
        labels: (B, H, W) long, 0 = background, ``ignore_index`` ignored.
    Returns:
        0-d tensor.
    """
    if logits.shape[0] != labels.shape[0] or logits.shape[2:] != labels.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} "
                         "must share batch and spatial size (upsample the logits first)")
    labels = labels.long()
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    bg = (labels == 0).to(ce.dtype)
    fg = ((labels > 0) & (labels != ignore_index)).to(ce.dtype)
    bg_loss = (ce * bg).sum() / bg.sum().clamp_min(1.0)
    fg_loss = (ce * fg).sum() / fg.sum().clamp_min(1.0)
    return 0.5 * (bg_loss + fg_loss)
