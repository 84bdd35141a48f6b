"""Training losses: LFAA alignment (§3), HFAR rectification (§4), balanced seg loss (§6).

All references are to method.md. params.yaml options named in the docstrings:
``loss.align_mask`` (``alpha`` | ``alpha_v1`` | ``topk``), ``loss.align_keep`` (0.25),
``loss.alpha_init`` (0.5), ``loss.alpha_momentum`` (0.9), ``loss.align_form``
(``renormalized`` | ``row`` | ``printed`` | ``generalized``), ``loss.radius`` / ``loss.window``
(``auto`` = the §10 rule on the grid, or tokens), ``loss.hist_cos`` (0.5),
``loss.token_labels`` (``majority`` | ``nearest``), ``loss.label_margin`` (0.1).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "grid_radius",
    "grid_window",
    "update_alpha",
    "selective_mask",
    "alignment_loss",
    "token_labels",
    "radius_mask",
    "hfar_pairs",
    "rectification_loss",
    "balanced_seg_loss",
]

Pair = Union[int, Tuple[int, int]]


def _pair(v: Pair) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


# ---------------------------------------------------------------------------------------
# Sizes in grid units (method.md §10)
# ---------------------------------------------------------------------------------------

def grid_radius(n: int) -> int:
    """HFAR pair radius on an axis of ``n`` tokens: ``round(0.4·n)`` (8 at 20, 6 at 16, 3 at 8). method.md §10."""
    return max(1, round(0.4 * n))


def grid_window(n: int) -> int:
    """HFAR shifted-window side on an axis of ``n`` tokens: the odd number nearest 0.45·n, at
    least 3 (9 at 20, 7 at 16, 3 at 8). method.md §10."""
    x = 0.45 * n
    odd = 2 * int((x - 1) // 2) + 1               # largest odd number <= x
    nearest = odd if x - odd <= odd + 2 - x else odd + 2
    return max(3, nearest)


# ---------------------------------------------------------------------------------------
# LFAA (method.md §3)
# ---------------------------------------------------------------------------------------

def _minmax_per_image(a: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Rescale each (N, N) matrix of a (..., N, N) stack to [0, 1] over all its entries."""
    lo = a.amin(dim=(-2, -1), keepdim=True)
    hi = a.amax(dim=(-2, -1), keepdim=True)
    return (a - lo) / (hi - lo).clamp_min(eps)


def _minmax_rows_offdiag(a: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each row of (..., N, N) min-maxed to [0, 1] over its off-diagonal entries; diagonal 0."""
    n = a.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=a.device)
    big = torch.finfo(a.dtype).max
    lo = torch.where(eye, big, a).amin(dim=-1, keepdim=True)
    hi = torch.where(eye, -big, a).amax(dim=-1, keepdim=True)
    return ((a - lo) / (hi - lo).clamp_min(eps)).masked_fill(eye, 0.0)


@torch.no_grad()
def update_alpha(alpha: Union[float, torch.Tensor], s_l: torch.Tensor, a_s: torch.Tensor,
                 momentum: float = 0.9, mode: str = "alpha") -> torch.Tensor:
    """Running quality threshold α of the selective mask. method.md §3.

    ``α_t = m·α_{t−1} + (1 − m)·gap`` with

    * ``alpha`` (v2): ``gap = mean_{i≠j} |Ŝ_l − Â_s|``, Ŝ_l and Â_s each min-maxed per row
      over its off-diagonal entries;
    * ``alpha_v1``: ``gap = mean |S_l − minmax(A_s)|`` over all N² entries, A_s min-maxed per
      image (the diagonal dominates, so α ≈ mean S_l).

    Returns a detached 0-d float32 tensor on s_l's device (no host sync on a GPU).

    Args:
        alpha: previous α (float or 0-d tensor); α_0 = ``loss.alpha_init``.
        s_l: (B, N, N) low-frequency relation S_l.
        a_s: (B, N, N) attention-path affinity A_s.
    """
    s, a = s_l.detach().float(), a_s.detach().float()
    if mode == "alpha_v1":
        gap = (s - _minmax_per_image(a)).abs().mean()
    elif mode == "alpha":
        n = s.shape[-1]
        off = ~torch.eye(n, dtype=torch.bool, device=s.device)
        gap = (_minmax_rows_offdiag(s) - _minmax_rows_offdiag(a)).abs()[..., off].mean()
    else:
        raise ValueError(f"update_alpha mode must be 'alpha' or 'alpha_v1', got {mode!r}")
    prev = torch.as_tensor(alpha, dtype=torch.float32, device=gap.device)
    return (momentum * prev + (1.0 - momentum) * gap).detach()


@torch.no_grad()
def selective_mask(s_l: torch.Tensor, alpha: Union[float, torch.Tensor], mode: str = "alpha",
                   keep: float = 0.25) -> torch.Tensor:
    """LFAA's selective mask M_d (B, N, N) bool. method.md §3 (``loss.align_mask``).

    * ``alpha`` (v2): ``[Ŝ_l > α]`` off the diagonal, Ŝ_l min-maxed per row off the diagonal.
      Its fraction follows the teacher: a sharp row keeps few entries, a flat one many.
    * ``topk``: each row's top ``keep`` fraction (at least one entry) of Ŝ_l, off the diagonal.
    * ``alpha_v1``: ``[S_l > α]`` on the raw relation, diagonal included.
    """
    s = s_l.detach().float()
    n = s.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    if mode == "alpha_v1":
        return s > alpha
    hat = _minmax_rows_offdiag(s)
    if mode == "alpha":
        return (hat > alpha) & ~eye
    if mode == "topk":
        k = max(1, min(n - 1, round(keep * (n - 1))))
        idx = hat.masked_fill(eye, -1.0).topk(k, dim=-1).indices
        return torch.zeros_like(eye.expand_as(s)).scatter(-1, idx, True)
    raise ValueError(f"align_mask must be 'alpha', 'alpha_v1' or 'topk', got {mode!r}")


def alignment_loss(s_l: torch.Tensor, a_s: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8,
                   form: str = "renormalized") -> torch.Tensor:
    """LFAA masked KL alignment L_a. method.md §3 (``loss.align_form``).

    S_l is the teacher and is detached, so gradients reach ``a_s`` only.

    * ``renormalized`` (v2 default): for each row i with a non-empty mask, both rows are
      restricted to the masked entries and renormalised over them, then
      ``KL(S̃_l,i ‖ Ã_s,i)``; the loss is the mean over those rows of the batch. It is ≥ 0
      and 0 exactly when Ã_s equals the teacher on the mask (up to a per-row scale).
      The mean (not the sum) over rows keeps λ₁'s meaning on any grid. Only the masked
      entries of A_s enter: nothing pushes A_s down off the mask, and with a sharp teacher the
      mask holds only the teacher's positives (a binary teacher, the §11 ``teacher`` ceiling:
      exactly its same-class pairs), so the loss can only flatten A_s among them.
    * ``row`` (not in the spec): the teacher as in ``renormalized``, the student normalised over
      its whole row off the diagonal: ``KL(S̃_l,i ‖ A_s,i / Σ_{j≠i} A_s,ij)``, mean over rows with
      a non-empty mask. Still ≥ 0 (a KL between two distributions on the row), and its minimiser
      is the teacher on the mask and 0 off it, so it also pulls A_s down where the teacher
      does not point.
    * ``printed`` (v1): ``Σ M·S̃_l·log(S̃_l/Ã_s) / max(ΣM, 1)`` with S̃_l, Ã_s row-normalised over
      all entries. Its masked terms can be negative and its minimiser within a row is flat.
    * ``generalized``: the printed terms plus ``− S̃_l + Ã_s`` (Bregman divergence of x log x),
      each term ≥ 0.

    Args:
        s_l: (B, N, N) teacher relation (≥ 0; detached here).
        a_s: (B, N, N) student affinity, > 0.
        mask: (B, N, N) bool, from :func:`selective_mask`.
    Returns:
        0-d tensor (0 for an empty mask).
    """
    s = s_l.detach().to(a_s.dtype)
    m = mask.to(a_s.dtype)
    if form in ("renormalized", "row"):
        s_m = s * m
        if form == "row":
            a_m = a_s * (1.0 - torch.eye(a_s.shape[-1], dtype=a_s.dtype, device=a_s.device))
        else:
            a_m = a_s * m
        s_t = s_m / s_m.sum(dim=-1, keepdim=True).clamp_min(eps)
        a_t = a_m / a_m.sum(dim=-1, keepdim=True).clamp_min(eps)
        term = m * s_t * (s_t.clamp_min(eps).log() - a_t.clamp_min(eps).log())
        rows = (m.sum(dim=-1) > 0).to(a_s.dtype)                     # (B, N)
        return term.sum(dim=-1).sum() / rows.sum().clamp_min(1.0)
    s_t = s / s.sum(dim=-1, keepdim=True).clamp_min(eps)
    a_t = a_s / a_s.sum(dim=-1, keepdim=True).clamp_min(eps)
    term = s_t * (s_t.clamp_min(eps).log() - a_t.clamp_min(eps).log())
    if form == "generalized":
        term = term - s_t + a_t
    elif form != "printed":
        raise ValueError(f"alignment_loss form must be 'renormalized', 'row', 'printed' or 'generalized', "
                         f"got {form!r}")
    return (m * term).sum() / m.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------------------
# Token labels Y (method.md §4)
# ---------------------------------------------------------------------------------------

@torch.no_grad()
def token_labels(labels: torch.Tensor, grid: Tuple[int, int], num_classes: int, mode: str = "majority",
                 scores: Optional[torch.Tensor] = None, margin: float = 0.0,
                 ignore_index: int = 255, min_share: float = 0.5) -> torch.Tensor:
    """Pixel labels → one label per token, with an uncertain band. method.md §4.

    * ``majority`` (v2): the most frequent label among the pixels a token covers (adaptive
      average pooling of the one-hot map, so any size works); a token whose most frequent
      label covers no more than ``min_share`` (half) of its pixels (mixed, or mostly
      ignore) is ``ignore_index``; ``min_share`` 0 keeps the plurality label of every token
      with a labelled pixel (the ``grid`` ceiling). With ``scores`` and ``margin`` > 0, a token whose refined score
      margin (top-1 minus top-2 of its mean per-pixel score distribution) is below
      ``margin`` is ``ignore_index`` too (``loss.label_margin``).
    * ``nearest`` (v1): nearest-neighbour downsampling (each token's top-left-most pixel).

    Args:
        labels: (B, H, W) long, 0..num_classes−1 or ``ignore_index``.
        grid: (h, w) token grid.
        num_classes: classes including background.
        scores: optional (B, num_classes, H, W) refined scores; negative entries (absent
            classes) count as 0; each pixel's scores are normalised to sum 1.
    Returns:
        (B, h*w) long.
    """
    h, w = int(grid[0]), int(grid[1])
    if mode == "nearest":
        y = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        return y.flatten(1)
    if mode != "majority":
        raise ValueError(f"token_labels mode must be 'majority' or 'nearest', got {mode!r}")
    onehot = F.one_hot(labels.long().clamp(0, num_classes), num_classes + 1)[..., :num_classes]
    onehot = onehot * (labels != ignore_index)[..., None]
    share = F.adaptive_avg_pool2d(onehot.permute(0, 3, 1, 2).float(), (h, w))  # (B, C, h, w)
    top, y = share.max(dim=1)
    y = y.masked_fill(top <= min_share, ignore_index)
    if scores is not None and margin > 0:
        p = scores.float().clamp_min(0)
        p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-8)
        p = F.adaptive_avg_pool2d(p, (h, w))
        top2 = p.topk(2, dim=1).values if p.shape[1] > 1 else torch.cat([p, torch.zeros_like(p)], 1)
        y = y.masked_fill((top2[:, 0] - top2[:, 1]) < margin, ignore_index)
    return y.flatten(1)


# ---------------------------------------------------------------------------------------
# HFAR (method.md §4)
# ---------------------------------------------------------------------------------------

def radius_mask(h: int, w: int, radius: Pair = 8, device=None,
                include_self: bool = True) -> torch.Tensor:
    """Token pairs within a radius on the h×w grid. method.md §4, §10 (WeCLIP).

    ``True`` where ``|r_i − r_j| ≤ radius_y`` and ``|c_i − c_j| ≤ radius_x`` (a Chebyshev
    ball for one radius; ``radius`` may be ``(ry, rx)`` for the per-axis §10 sizes of a
    non-square grid). The diagonal is included unless ``include_self`` is False (v2 drops it).

    Returns:
        (N, N) bool, N = h*w, row-major token order.
    """
    ry, rx = _pair(radius)
    r = torch.arange(h, device=device).repeat_interleave(w)
    c = torch.arange(w, device=device).repeat(h)
    mask = ((r[:, None] - r[None, :]).abs() <= ry) & ((c[:, None] - c[None, :]).abs() <= rx)
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
def hfar_pairs(s_h: torch.Tensor, labels: torch.Tensor, grid: Tuple[int, int], radius: Pair = 8,
               window: Pair = 9, ignore_index: int = 255, hist_cos: float = 0.5,
               num_classes: Optional[int] = None,
               include_self: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Positive / negative token pairs for HFAR. method.md §4.

    With ``S̄_h`` the mean of S_h over the image's pairs (all N² with ``include_self``, v1;
    the off-diagonal ones without, v2, which also drops the diagonal pairs):

    * positive: ``S_h > S̄_h`` and ``Y_i = Y_j``; negative: ``S_h ≤ S̄_h`` and ``Y_i ≠ Y_j``;
    * ambiguous (the two signals disagree): the windows W(i), W(j) of side ``window``
      centred at i and j (clipped at the borders) decide. ``hist`` = cosine of the two
      windows' label histograms (ignore tokens not counted), ``s̄`` = mean of S_h over
      W(i) × W(j) (all tokens). Positive if ``hist > hist_cos`` and ``s̄ > S̄_h``; negative if
      ``hist ≤ hist_cos`` and ``s̄ ≤ S̄_h``; otherwise ignored;
    * pairs with an ignore token, and pairs beyond ``radius`` (:func:`radius_mask`), are
      dropped. ``radius`` and ``window`` may be per-axis pairs (§10).

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
    wy, wx = _pair(window)
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
    if include_self:
        s_bar = s.mean(dim=(-2, -1), keepdim=True)                   # (B, 1, 1)
    else:
        diag = s.diagonal(dim1=-2, dim2=-1).sum(-1)
        s_bar = ((s.sum(dim=(-2, -1)) - diag) / max(1, n * n - n))[:, None, None]
    high = s > s_bar
    same = labels[:, :, None] == labels[:, None, :]
    pos = high & same
    neg = ~high & ~same
    amb = high ^ same

    # Label histograms of the windows around every token: (B, N, C), ignore not counted.
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).to(torch.float64)
    onehot = onehot * valid[..., None]
    hist = onehot.view(b, h, w, num_classes)
    hist = _box_sum(_box_sum(hist, 1, wy), 2, wx).reshape(b, n, num_classes)
    hist = F.normalize(hist, dim=-1)
    hist_sim = hist @ hist.transpose(-1, -2)                          # (B, N, N)

    # Mean S_h between the windows W(i) × W(j): 4-D separable box filter.
    s4 = s.view(b, h, w, h, w)
    for dim, win in zip((1, 2, 3, 4), (wy, wx, wy, wx)):
        s4 = _box_sum(s4, dim, win)
    count = torch.outer(_box_count(h, wy, s.device),
                        _box_count(w, wx, s.device)).reshape(n)      # |W(i)|
    s_win = s4.reshape(b, n, n) / (count[:, None] * count[None, :])

    hist_ok = hist_sim > hist_cos
    s_ok = s_win > s_bar
    pos = pos | (amb & hist_ok & s_ok)
    neg = neg | (amb & ~hist_ok & ~s_ok)

    keep = valid[:, :, None] & valid[:, None, :]
    keep = keep & radius_mask(h, w, radius, device=s.device, include_self=include_self)
    return pos & keep, neg & keep


def rectification_loss(a: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                       labels: Optional[torch.Tensor] = None, balance: str = "pairs") -> torch.Tensor:
    """HFAR rectification L_r. method.md §4.

    ``balance="pairs"`` (the spec): ``L_r = mean_{pos}(1 − A) + mean_{neg} A`` over all pairs
    of the batch. ``balance="fg_bg"`` [anchor: AffinityNet's bg/4 + fg/4 + neg/2, scaled ×2]:
    the positives are split into background pairs (both tokens labelled 0) and object pairs
    (both the same class), each averaged on its own, ``½ mean_{pos,bg}(1 − A) + ½ mean_{pos,fg}(1 − A)
    + mean_{neg} A``; positives whose labels differ (decided by the window) are left out, as
    AffinityNet has none: with ~80 % background the spec's positive mean is mostly background
    pairs, and an object's own pairs hardly count (issue 17). Each mean is 0 when it has no
    pairs. ``a`` is the symmetrised sigmoid output of the inverse path before Sinkhorn, in
    [0, 1]. Range [0, 2]: 0 for a perfect affinity, 2 for an inverted one with every kind of
    pair present.

    Args:
        a: (B, N, N) in [0, 1].
        pos, neg: (B, N, N) bool masks from :func:`hfar_pairs`.
        labels: (B, N) token labels (0 = background), needed by ``fg_bg``.
    Returns:
        0-d tensor.
    """
    def mean(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mask = mask.to(a.dtype)
        return (mask * x).sum() / mask.sum().clamp_min(1.0)

    neg_term = mean(neg, a)
    if balance == "pairs":
        return mean(pos, 1.0 - a) + neg_term
    if balance != "fg_bg":
        raise ValueError(f"balance must be 'pairs' or 'fg_bg', got {balance!r}")
    if labels is None or labels.shape != a.shape[:2]:
        raise ValueError("balance='fg_bg' needs labels (B, N) matching a")
    same = labels[:, :, None] == labels[:, None, :]
    is_bg = (labels == 0)[:, :, None]
    pos_bg = pos & same & is_bg
    pos_fg = pos & same & ~is_bg
    # positives across labels (§4's shifted window can decide them) are in neither half: AffinityNet's
    # positives are same-label pairs only
    return 0.5 * mean(pos_bg, 1.0 - a) + 0.5 * mean(pos_fg, 1.0 - a) + neg_term


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
