"""CAM refinement: affinity propagation E(⊙) (§7), PAR and pseudo-labels (§5).

params.yaml options: ``affinity.square`` (square before propagation),
``affinity.sinkhorn_rounds`` (3), ``refine.par_dilations``, ``refine.par_iters``,
``refine.par_scale``, ``refine.bg_power`` (exponent of the background channel, 1).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .affinity import sinkhorn_normalize
from .cam import minmax_tokens

__all__ = ["product_affinity", "product_refine", "PAR"]


def product_affinity(affinities: Sequence[torch.Tensor], rounds: int = 3, square: bool = True) -> torch.Tensor:
    """The anchors' propagation affinity of E(⊙). method.md §2, §7.

    ``A = Norm(⊙_k A_k)`` (Sinkhorn normalisation with symmetrisation), then ``A ← A @ A``
    when ``square`` (params.yaml ``affinity.square``).

    Args:
        affinities: non-empty sequence of (B, N, N) tensors ≥ 0.
    Returns:
        (B, N, N) symmetric.
    """
    if len(affinities) == 0:
        raise ValueError("product_refine needs at least one affinity")
    prod = affinities[0]
    for aff in affinities[1:]:
        prod = prod * aff
    aff = sinkhorn_normalize(prod, rounds=rounds)
    return aff @ aff if square else aff


def product_refine(affinities: Sequence[torch.Tensor], cam: torch.Tensor, rounds: int = 3,
                   square: bool = True) -> torch.Tensor:
    """The anchors' element-wise refinement E(⊙). method.md §7 (ablation rows 0–3).

    ``cam_ref = A @ cam`` with A from :func:`product_affinity`, then each class min-max
    normalised over the tokens to [0, 1] (a constant class becomes 0).

    Args:
        affinities: non-empty sequence of (B, N, N) tensors ≥ 0.
        cam: (B, N, C) token CAM.
    Returns:
        (B, N, C) in [0, 1].
    """
    return minmax_tokens(product_affinity(affinities, rounds, square) @ cam)


# 8-neighbour offsets (row, col) of a 3×3 kernel, in the anchors' order; the diagonal ones
# lie √2 away.
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


class PAR(nn.Module):
    """Pixel-adaptive refinement (AFA / WeCLIP / ExCEL ``PAR``). method.md §5.

    For each dilation d and each of the 8 neighbours q of a pixel p at offset d·(dy, dx)
    (replicate padding at the borders), with K = 8·len(dilations) neighbours in all:

    * RGB term: ``−(|I_p − I_q| / (std_q(I_q) + 1e-8) / w_rgb)²`` averaged over the colour
      channels, ``std_q`` the unbiased std over the K neighbours of p per channel; softmax
      over the K neighbours;
    * positional term: the same form on the neighbour distances d or d√2 (a constant
      vector), softmax over K, weighted by ``w_pos``;
    * masks are replaced ``iters`` times by the affinity-weighted sum of their K neighbours.

    Difference from the anchors (params.yaml ``par.renormalize``, default True): the anchors'
    weights sum to 1 + w_pos, so every iteration scales the masks by 1.01 (×1.22 after 20
    iterations). That does not change an argmax over channels, but makes PAR not preserve a
    constant mask; by default the weights are divided by 1 + w_pos.

    The neighbours are views into one replicate-padded tensor (pad by the largest
    dilation: replicate padding clamps indices, so any pad width gives the same values),
    accumulated one offset at a time, so memory stays O(B·C·H·W).

    Shape:
        forward(image (B, 3, H, W) float, masks (B, C, H', W')) → (B, C, H, W); masks of
        another size are first resized bilinearly (``align_corners=True``, as the anchors).
    """

    def __init__(self, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), iters: int = 20,
                 w_rgb: float = 0.3, w_pos: float = 0.01, renormalize: bool = True):
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.iters = int(iters)
        self.w_rgb = float(w_rgb)
        self.w_pos = float(w_pos)
        self.renormalize = bool(renormalize)
        self.offsets = [(d * dy, d * dx) for d in self.dilations for dy, dx in _OFFSETS]
        dist = torch.tensor([d * (math.sqrt(2.0) if dy and dx else 1.0)
                             for d in self.dilations for dy, dx in _OFFSETS])
        pos_logit = -(dist / (dist.std() + 1e-8) / self.w_rgb) ** 2
        self.register_buffer("pos_weight", torch.softmax(pos_logit, dim=0), persistent=False)

    def _neighbours(self, x: torch.Tensor):
        """Yield the K shifted copies (views) of x (B, C, H, W), replicate-padded."""
        pad = max(self.dilations)
        h, w = x.shape[-2:]
        xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        for dy, dx in self.offsets:
            yield xp[..., pad + dy: pad + dy + h, pad + dx: pad + dx + w]

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """Neighbour weights (B, K, H, W), summing to 1 (or 1 + w_pos) over K."""
        k = len(self.offsets)
        total = torch.zeros_like(image)
        total_sq = torch.zeros_like(image)
        for q in self._neighbours(image):
            total = total + q
            total_sq = total_sq + q * q
        var = (total_sq - total * total / k) / (k - 1)                # unbiased, per channel
        std = var.clamp_min(0).sqrt()
        logits = torch.stack(
            [(-((image - q).abs() / (std + 1e-8) / self.w_rgb) ** 2).mean(dim=1)
             for q in self._neighbours(image)], dim=1)              # (B, K, H, W)
        weight = torch.softmax(logits, dim=1)
        weight = weight + self.w_pos * self.pos_weight.to(weight)[None, :, None, None]
        if self.renormalize:
            weight = weight / (1.0 + self.w_pos)
        return weight

    def forward(self, image: torch.Tensor, masks: torch.Tensor,
                weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """PAR of ``masks`` guided by ``image``; ``weight`` = :meth:`affinity` of that image,
        when already computed (it depends on the image only; PAR is linear in the masks,
        so the same weights serve any number of channels and calls)."""
        if image.dim() != 4 or masks.dim() != 4 or image.shape[0] != masks.shape[0]:
            raise ValueError(f"PAR expects image (B, 3, H, W) and masks (B, C, H, W), got "
                             f"{tuple(image.shape)} and {tuple(masks.shape)}")
        if masks.shape[-2:] != image.shape[-2:]:
            masks = F.interpolate(masks, size=image.shape[-2:], mode="bilinear",
                                  align_corners=True)
        if weight is None:
            weight = self.affinity(image.to(masks.dtype if masks.is_floating_point() else torch.float32))
        for _ in range(self.iters):
            out = torch.zeros_like(masks)
            for j, q in enumerate(self._neighbours(masks)):
                out.addcmul_(weight[:, j:j + 1], q)
            masks = out
        return masks
