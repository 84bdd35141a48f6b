"""Dual-path affinity from frozen CLIP attention. method.md §2.

W (head-averaged patch attention of the last K blocks) gives two paths:

* the attention path A_s: learnable head over the K maps → Sinkhorn normalisation;
* the inverse (high-pass) path A_inv: the same on W_inv = F⁻¹(𝕀 − F(W)).

params.yaml options: ``affinity.inverse`` (``spatial`` | ``operator``), ``affinity.renorm_rows``
(renormalise attention rows after dropping CLS), ``affinity.head_init`` (``mean`` |
``attention`` | ``random``), ``affinity.square`` (square the symmetrised affinity before
propagation, default on), ``frequency.ratio`` / ``frequency.box_rule`` / ``frequency.box``
(the low-frequency box of the ``spatial`` inverse, §3, §10), ``affinity.head``
(``pointwise`` as §2 | ``bilinear``: one more input channel, a learned token relation),
``affinity.channels`` (``layers``: the K layer maps | ``heads``: every head, K·H maps, §2 v3;
:func:`renormalize_heads`). :func:`head_shift` is §6 v3's measure of how far a head moved.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .frequency import low_pass

__all__ = [
    "renormalize_rows",
    "renormalize_heads",
    "head_shift",
    "inverse_attention",
    "spectral_inverse_literal",
    "AffinityHead",
    "TokenRelation",
    "sinkhorn_normalize",
    "symmetrize",
    "square",
    "propagate",
    "feature_affinity",
]


def _eye_like(w: torch.Tensor) -> torch.Tensor:
    n = w.shape[-1]
    return torch.eye(n, dtype=w.dtype, device=w.device)


def renormalize_rows(w: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of patch-to-patch attention rescaled to sum 1 after the CLS column was dropped. method.md §1 (v2).

    Args:
        w: (..., N, N) attention without the CLS row and column.
    Returns:
        (..., N, N), each row summing to 1.
    """
    return w / w.sum(dim=-1, keepdim=True).clamp_min(eps)


def renormalize_heads(heads: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-head attention rescaled by its layer's row sum, so the head mean is the §1 layer map. method.md §1, §2 (v3).

    ``affinity.channels: heads`` feeds every head as a channel. §1 renormalises each layer's
    head-mean map to rows of sum 1 after the CLS column is dropped. Dividing every head of a
    layer by that layer's row sums (not by its own) keeps this: the mean over a layer's heads
    is exactly :func:`renormalize_rows` of the head mean, so a head that averages its
    channels sees what the ``layers`` head sees, and the heads keep their relative mass.

    Args:
        heads: (..., K, H, N, N) per-head attention without the CLS row and column.
    Returns:
        (..., K, H, N, N); the mean over H has rows summing to 1.
    """
    return heads / heads.mean(dim=-3, keepdim=True).sum(dim=-1, keepdim=True).clamp_min(eps)


def inverse_attention(w: torch.Tensor, mode: str = "spatial", ratio: float = 0.25,
                      grid: Optional[Tuple[int, int]] = None, rule: str = "odd",
                      width: Optional[int] = None) -> torch.Tensor:
    """Inverse (high-pass) attention W_inv. method.md §2.

    * ``spatial`` (v2 default): each query's attention over the keys is a map on the token
      grid (h, w); keep what lies outside the low-frequency box of §3/§10 (odd and
      symmetric): ``row − real(ifft2(mask · fft2(row)))``. It keeps where attention changes
      across the grid (boundaries) and removes the smooth part. Applied per layer.
    * ``operator`` (v1): ``W_inv = F⁻¹(𝕀 − F(W)) = I − W``. The all-pass response is the
      identity operator, so by linearity of the FFT the spectral inversion is I − W.
      Off the diagonal this is −W, so a per-entry head sees nothing A_s does not
      (kept as an ablation). :func:`spectral_inverse_literal` is the FFT route.

    Args:
        w: (..., N, N) attention (rows are queries).
        mode: ``spatial`` | ``operator`` (params.yaml ``affinity.inverse``).
        ratio, rule, width: the low-frequency box (``spatial`` only; see
            :func:`dfa.frequency.box_width`).
        grid: (h, w) with h*w = N (required for ``spatial``).
    Returns:
        (..., N, N) tensor of w's dtype.
    """
    if w.shape[-1] != w.shape[-2]:
        raise ValueError(f"attention must be square in its last two dims, got {tuple(w.shape)}")
    if mode == "operator":
        return _eye_like(w) - w
    if mode == "spatial":
        if grid is None:
            raise ValueError("inverse_attention(mode='spatial') needs grid=(h, w)")
        h, gw = int(grid[0]), int(grid[1])
        n = w.shape[-1]
        if h * gw != n:
            raise ValueError(f"grid {grid} has {h * gw} cells but the attention has N={n}")
        maps = w.reshape(*w.shape[:-1], h, gw)           # (..., N, h, w): one map per query
        return (maps - low_pass(maps, ratio, rule, width)).reshape(w.shape)
    raise ValueError(f"inverse_attention mode must be 'operator' or 'spatial', got {mode!r}")


def spectral_inverse_literal(w: torch.Tensor) -> torch.Tensor:
    """The literal ``real(ifft2(fft2(I) − fft2(W)))`` over the last two dims. method.md §2.

    Exists only so a test can show it equals ``I − W`` (linearity of the FFT); it costs
    about 800× more than the subtraction. Note ``fft2(I)`` here is the transform of the
    identity matrix, not ``ones``: ``ifft2(ones)`` would be a delta at (0, 0).

    Args:
        w: (..., N, N).
    Returns:
        (..., N, N) real tensor.
    """
    eye = _eye_like(w)
    return torch.fft.ifft2(torch.fft.fft2(eye) - torch.fft.fft2(w)).real.to(w.dtype)


class AffinityHead(nn.Module):
    """Learnable map from K stacked attention maps to one positive affinity. method.md §2.

    AFA-style per-entry MLP: 1×1 conv K→hidden, GELU, 1×1 conv hidden→1, sigmoid. One
    instance per path (A_s and A_inv).

    Args:
        in_layers: K, the number of stacked layer maps.
        hidden: width of the hidden layer (32).
    Shape:
        forward (B, K, N, N) → (B, N, N), entries in (0, 1).
    """

    def __init__(self, in_layers: int = 8, hidden: int = 32):
        super().__init__()
        self.in_layers = in_layers
        self.fc1 = nn.Conv2d(in_layers, hidden, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, 1, kernel_size=1)

    @torch.no_grad()
    def init_mean(self, scale: float = 1.0, bias: float = -4.0, channels: Optional[int] = None) -> "AffinityHead":
        """Start as ``sigmoid(scale · mean_k x_k + bias)``, a monotone map of the layer mean
        of the input (params.yaml ``affinity.head_init: mean``; ``attention`` is the same for
        the A_s head only, v1).

        Uses GELU(z) − GELU(−z) = z on two hidden units, so the map is exact; the other
        units start with small weights and zero output weight and learn from there.
        Fed with log-attention (scale 1, bias −4: sigmoid ≈ exp), the A_s head reproduces
        the geometric layer mean of the attention, not a near-constant map.
        """
        k = self.in_layers if channels is None else channels   # the mean is over the first ``channels``
        self.fc1.weight.mul_(0.1)
        self.fc1.weight[0].fill_(0.0)
        self.fc1.weight[1].fill_(0.0)
        self.fc1.weight[0, :k].fill_(scale / k)
        self.fc1.weight[1, :k].fill_(-scale / k)
        self.fc1.bias[:2] = 0.0
        self.fc2.weight.zero_()
        self.fc2.weight[0, 0] = 1.0
        self.fc2.weight[0, 1] = -1.0
        self.fc2.bias.fill_(bias)
        return self

    @torch.no_grad()
    def silence_channels(self, channels: slice) -> "AffinityHead":
        """Zero the first layer's weights from ``channels``: the head starts blind to them (the
        ``bilinear`` token channel starts silent, so the untrained head is the spec's)."""
        self.fc1.weight[:, channels] = 0.0
        return self

    def init_as_attention(self, bias: float = -4.0) -> "AffinityHead":
        """v1's name for :meth:`init_mean` with scale 1 (the A_s head on log-attention)."""
        return self.init_mean(1.0, bias)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if maps.dim() != 4 or maps.shape[1] != self.in_layers:
            raise ValueError(f"AffinityHead expects (B, {self.in_layers}, N, N), "
                             f"got {tuple(maps.shape)}")
        # The 1×1 convs run as linear layers on the channels-last view (same parameters,
        # same result): 2–3× faster than Conv2d on CPU for (B, 8, 400, 400), fwd and bwd.
        x = maps.permute(0, 2, 3, 1)                                     # (B, N, N, K)
        x = self.act(F.linear(x, self.fc1.weight.flatten(1), self.fc1.bias))
        x = F.linear(x, self.fc2.weight.flatten(1), self.fc2.bias)        # (B, N, N, 1)
        return torch.sigmoid(x).squeeze(-1)


class TokenRelation(nn.Module):
    """A learned relation between tokens: cosine of a low-rank projection. ``affinity.head: bilinear``.

    Not in the paper. method.md §2's head is per entry: A_ij is a function of the K attention
    values at (i, j), so a better teacher (§11 ``teacher``) or better labels (``labels``) can
    reweight the layers but not add a relation the attention lacks (measured: those ceilings sit
    +1.0/+1.8 over row 0). This channel, ``cos(P x_i, P x_j)`` on the frozen last-block tokens
    x (P: D → rank), is what the head may learn new relations through; it is stacked after the
    K attention maps and starts silent (:meth:`AffinityHead.silence_channels`).

    Args:
        dim: D, the token width.
        rank: the projection's width.
    Shape:
        forward (B, N, D) → (B, 1, N, N), entries in [−1, 1].
    """

    def __init__(self, dim: int, rank: int = 64):
        super().__init__()
        self.proj = nn.Linear(dim, rank, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.proj(tokens.float()), dim=-1)
        return (z @ z.transpose(-1, -2))[:, None]


def symmetrize(a: torch.Tensor) -> torch.Tensor:
    """``(A + Aᵀ) / 2`` over the last two dims. method.md §2."""
    return 0.5 * (a + a.transpose(-1, -2))


def square(a: torch.Tensor) -> torch.Tensor:
    """``A @ A`` (the anchors' one squaring before propagation). method.md §2, §7."""
    return a @ a


def sinkhorn_normalize(a: torch.Tensor, rounds: int = 3, eps: float = 1e-8) -> torch.Tensor:
    """The anchors' Sinkhorn normalisation ``Norm`` then symmetrisation. method.md §2.

    ``rounds`` times: divide by column sums, then by row sums; finally ``(T + Tᵀ)/2``.
    Three rounds leave the matrix only roughly doubly stochastic (row sums are exactly 1
    before the symmetrisation; column sums are within a few % for attention-like input).

    Args:
        a: (..., N, N), entries ≥ 0.
        rounds: number of (column, row) rounds (3 in the anchors).
        eps: floor on the sums (an all-zero column or row stays zero).
    Returns:
        (..., N, N) symmetric tensor.
    """
    t = a
    for _ in range(rounds):
        t = t / t.sum(dim=-2, keepdim=True).clamp_min(eps)   # columns
        t = t / t.sum(dim=-1, keepdim=True).clamp_min(eps)   # rows
    return symmetrize(t)


def propagate(aff: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """Propagate token scores with an affinity: ``aff @ cam``. method.md §7.

    Args:
        aff: (B, N, N).
        cam: (B, N, C).
    Returns:
        (B, N, C).
    """
    return aff @ cam


def feature_affinity(tokens: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Affinity from token features: the ``features`` reference row of the ablation (issue 10).

    Cosine matrix of the L2-normalised tokens, centred by subtracting its mean over all N²
    entries, then a row softmax at ``temperature``. Feed it to
    :func:`dfa.refine.product_affinity` (Sinkhorn, squared) to propagate a CAM.

    Args:
        tokens: (B, N, D) patch tokens (e.g. the frozen CLIP's last block).
    Returns:
        (B, N, N) rows summing to 1.
    """
    t = F.normalize(tokens.float(), dim=-1)
    cos = t @ t.transpose(-1, -2)
    cos = cos - cos.mean(dim=(-2, -1), keepdim=True)
    return torch.softmax(cos / temperature, dim=-1)


def head_shift(trained: torch.Tensor, untrained: torch.Tensor) -> torch.Tensor:
    """How far a learned affinity moved from its untrained version, per image. method.md §6 (v3, ``head_shift``).

    ``mean_ij |A_trained − A_untrained| / mean_ij A_untrained`` over one image's N² entries,
    for the Sinkhorn-normalised affinity a row uses (A_la for row 2, Norm(A_la ⊙ A_ha) for
    row 3, A_la and A_ha for row 4), with the same heads at their initialisation as
    ``untrained``. A split's value is the mean over its images. ≈ 0: the row measures the
    untrained attention, whatever its label says.

    Args:
        trained, untrained: (B, N, N).
    Returns:
        (B,) ≥ 0.
    """
    if trained.shape != untrained.shape:
        raise ValueError(f"head_shift needs two affinities of one shape, got {tuple(trained.shape)} "
                         f"and {tuple(untrained.shape)}")
    dims = (-2, -1)
    return (trained - untrained).abs().mean(dims) / untrained.mean(dims).clamp_min(1e-12)
