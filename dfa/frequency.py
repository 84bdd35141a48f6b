"""Frequency split of decoder features and the relation maps built on them.

method.md §3 (LFAA: low-pass features F_ld and S_l) and §4 (HFAR: high-pass features F_hd
and S_h). Also used by :func:`dfa.affinity.inverse_attention` (``spatial`` mode, §2) so the
low-frequency box has one definition in the whole package.

All functions are pure: tensors in, tensors out, batched over leading dimensions.

params.yaml options read by callers: ``frequency.ratio`` (ρ, default 0.25) and
``frequency.relation`` (``raw`` | ``centred``).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["low_pass_mask", "low_pass", "split_frequencies", "relation"]


def _box_side(n: int, ratio: float) -> int:
    """Side of the low-frequency box along an axis of length ``n``. method.md §3.

    ``max(1, round(ratio * n))`` with Python's ``round`` (ties to even: 2.5 → 2, 3.5 → 4),
    capped at ``n``.
    """
    return min(n, max(1, round(ratio * n)))


def _axis_mask(n: int, ratio: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """1-D box of :func:`_box_side` entries centred on DC, in unshifted FFT order."""
    side = _box_side(n, ratio)
    centre = n // 2                      # index of DC after fftshift (even and odd n)
    start = centre - side // 2
    shifted = torch.zeros(n, device=device, dtype=dtype)
    shifted[start:start + side] = 1
    return torch.fft.ifftshift(shifted)


def _check_ratio(ratio: float) -> None:
    if not (0.0 < float(ratio) <= 1.0):
        raise ValueError(f"frequency ratio must lie in (0, 1], got {ratio!r}")


def low_pass_mask(h: int, w: int, ratio: float, device=None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """0/1 low-frequency box in unshifted FFT order. method.md §3.

    The box is what one gets by ``fftshift``-ing the spectrum, keeping a centred
    ``max(1, round(ratio*h)) × max(1, round(ratio*w))`` box around DC, and mapping back
    with ``ifftshift``. For an even side the box cannot be symmetric about DC: it keeps
    frequencies ``-side/2 … side/2-1`` (the extra one on the negative side).

    Args:
        h, w: spatial size of the grid.
        ratio: fraction ρ ∈ (0, 1] of each frequency axis kept; ρ = 1 gives all ones.
    Returns:
        (h, w) tensor of 0/1 values, ``mask[0, 0]`` (DC) is always 1.
    """
    _check_ratio(ratio)
    return torch.outer(_axis_mask(h, ratio, device, dtype), _axis_mask(w, ratio, device, dtype))


def _real_half_mask(h: int, w: int, ratio: float, device=None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mask for ``rfft2`` spectra equivalent to ``real(ifft2(mask · fft2(x)))``.

    For real x, ``real(ifft2(M · X)) = ifft2(M_sym · X)`` with ``M_sym[k] = (M[k] + M[-k])/2``
    (Hermitian symmetry of X). ``M_sym`` is real and symmetric, so it can be applied to the
    half spectrum of ``rfft2`` and inverted with ``irfft2`` at about half the cost
    (perf-anchors §3). For odd box sides M is already symmetric and M_sym = M.

    Returns:
        (h, w // 2 + 1) tensor.
    """
    m = low_pass_mask(h, w, ratio, device=device, dtype=dtype)
    flipped = torch.roll(torch.flip(m, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))  # M[-k]
    return (0.5 * (m + flipped))[:, : w // 2 + 1]


def low_pass(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """``real(ifft2(mask_ρ · fft2(x)))`` over the last two dims. method.md §3.

    Computed as ``irfft2(rfft2(x) · M_half)`` (see :func:`_real_half_mask`), which is the
    same operator. Differentiable.

    Args:
        x: (..., h, w) real tensor (float32 or float64).
        ratio: ρ ∈ (0, 1].
    Returns:
        (..., h, w) tensor of x's dtype.
    """
    _check_ratio(ratio)
    h, w = x.shape[-2:]
    if _box_side(h, ratio) == h and _box_side(w, ratio) == w:
        return x.clone()                  # ρ = 1 (or a box covering everything): all low
    real_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    spec = torch.fft.rfft2(x.to(real_dtype))
    mask = _real_half_mask(h, w, ratio, device=x.device, dtype=real_dtype)
    return torch.fft.irfft2(spec * mask, s=(h, w)).to(x.dtype)


def split_frequencies(x: torch.Tensor, ratio: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split a feature map into low- and high-frequency parts. method.md §3, §4.

    ``F_ld = real(IFFT2(mask_ρ · FFT2(F_d)))`` and ``F_hd = F_d − F_ld`` (high is computed
    as the residual ``x − low``), so ``F_ld + F_hd = F_d`` holds as an identity of the
    decomposition: ``torch.equal(x - low, high)`` is exact, and ``low + high`` reproduces x
    to within one rounding (≤ 1 ulp of max(|low|, |high|)). A bitwise ``low + high == x``
    is not guaranteed in floating point: the rounding of ``x − low`` can lose bits that
    ``low`` does not give back (fp32: x = 1, low = −0.6·2⁻²⁴ gives high = 1 and
    low + high = 1 − 2⁻²⁴; about 10 % of entries of a random map differ by 1 ulp).
    A constant map is all low; a Nyquist checkerboard is all high for any box that does
    not cover the whole axis; ρ = 1 returns (x, 0) exactly.

    Args:
        x: (..., h, w) real tensor, e.g. decoder features (B, D, h, w).
        ratio: ρ ∈ (0, 1], params.yaml ``frequency.ratio``.
    Returns:
        (low, high), each shaped like x.
    """
    low = low_pass(x, ratio)
    return low, x - low


def relation(f: torch.Tensor, mode: str = "raw") -> torch.Tensor:
    """Token relation map of a feature map. method.md §3 (S_l), §4 (S_h).

    * ``raw``: ``sigmoid(Fᵀ F)`` on the flattened tokens (the paper's form).
    * ``centred`` (ExCEL): L2-normalise each token over D, cosine matrix, subtract its mean
      over all N² entries of the image, multiply by 3, sigmoid. Use it when ``raw``
      saturates to 0/1 (params.yaml ``frequency.relation``).

    Args:
        f: (..., D, h, w) features.
        mode: ``raw`` | ``centred``.
    Returns:
        (..., N, N) with N = h*w, entries in (0, 1), symmetric.
    """
    tokens = f.flatten(-2)                                   # (..., D, N)
    if mode == "raw":
        return torch.sigmoid(tokens.transpose(-1, -2) @ tokens)
    if mode == "centred":
        tokens = F.normalize(tokens, dim=-2)                  # each token over D
        cos = tokens.transpose(-1, -2) @ tokens
        cos = cos - cos.mean(dim=(-2, -1), keepdim=True)
        return torch.sigmoid(3.0 * cos)
    raise ValueError(f"relation mode must be 'raw' or 'centred', got {mode!r}")
