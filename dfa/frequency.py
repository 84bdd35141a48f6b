"""Frequency split of decoder features and the relation maps built on them.

method.md §3 (LFAA: low-pass features F_ld and S_l) and §4 (HFAR: high-pass features F_hd
and S_h). Also used by :func:`dfa.affinity.inverse_attention` (``spatial`` mode, §2) so the
low-frequency box has one definition in the whole package.

All functions are pure: tensors in, tensors out, batched over leading dimensions.

params.yaml options read by callers: ``frequency.ratio`` (ρ, default 0.25),
``frequency.box_rule`` (``odd`` | ``v1``), ``frequency.box`` (a width in tokens, or ``auto``),
``frequency.relation`` (``softmax`` | ``centred`` | ``raw``) and ``frequency.temperature``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["BOX_RULES", "RELATIONS", "box_width", "low_pass_mask", "low_pass", "split_frequencies", "relation"]


BOX_RULES = ("odd", "v1")


def box_width(n: int, ratio: float, rule: str = "odd", width: Optional[int] = None) -> int:
    """Width (in frequencies) of the low-frequency box along an axis of length ``n``. method.md §3, §10.

    * ``width`` given (params ``frequency.box`` in tokens): it wins, capped at ``n``.
    * ``odd`` (v2 default): ``2m + 1`` with ``m = max(1, round(ratio·n/2))`` (Python's round,
      ties to even: 20 → 5, 16 → 5, 8 → 3 at ratio 0.25), capped at ``n``. Odd and symmetric
      under k → −k, so the low-passed map of a real map is real and isotropic.
    * ``v1``: ``max(1, round(ratio·n))`` capped at ``n``, centred after fftshift; on an even
      width it keeps one more negative than positive frequency (8×8: a 2-wide box).
    """
    if width is not None:
        return min(n, int(width))
    if rule == "odd":
        return min(n, 2 * max(1, round(ratio * n / 2)) + 1)
    if rule == "v1":
        return min(n, max(1, round(ratio * n)))
    raise ValueError(f"frequency box rule must be one of {BOX_RULES}, got {rule!r}")


def _axis_mask(n: int, ratio: float, device=None, dtype=torch.float32, rule: str = "odd",
               width: Optional[int] = None) -> torch.Tensor:
    """1-D box of :func:`box_width` entries around DC, in unshifted FFT order."""
    side = box_width(n, ratio, rule, width)
    if rule == "v1" and width is None:
        centre = n // 2                  # index of DC after fftshift (even and odd n)
        start = centre - side // 2
        shifted = torch.zeros(n, device=device, dtype=dtype)
        shifted[start:start + side] = 1
        return torch.fft.ifftshift(shifted)
    # Symmetric box |k| <= m, k the signed frequency (an even width given in tokens keeps
    # the symmetric box of the next smaller odd width plus nothing: symmetry wins).
    m = (side - 1) // 2
    k = torch.fft.fftfreq(n, d=1.0 / n, device=device).abs()
    return (k <= m).to(dtype) if side < n else torch.ones(n, device=device, dtype=dtype)


def _check_ratio(ratio: float) -> None:
    if not (0.0 < float(ratio) <= 1.0):
        raise ValueError(f"frequency ratio must lie in (0, 1], got {ratio!r}")


def low_pass_mask(h: int, w: int, ratio: float, device=None, dtype: torch.dtype = torch.float32,
                  rule: str = "odd", width: Optional[int] = None) -> torch.Tensor:
    """0/1 low-frequency box in unshifted FFT order. method.md §3, §10.

    The outer product of the per-axis boxes of :func:`box_width` (``rule``, or ``width``
    in tokens when given). ``mask[0, 0]`` (DC) is always 1; ρ = 1 gives all ones.

    Returns:
        (h, w) tensor of 0/1 values.
    """
    _check_ratio(ratio)
    return torch.outer(_axis_mask(h, ratio, device, dtype, rule, width),
                       _axis_mask(w, ratio, device, dtype, rule, width))


def _real_half_mask(h: int, w: int, ratio: float, device=None, dtype: torch.dtype = torch.float32,
                    rule: str = "odd", width: Optional[int] = None) -> torch.Tensor:
    """Mask for ``rfft2`` spectra equivalent to ``real(ifft2(mask · fft2(x)))``.

    For real x, ``real(ifft2(M · X)) = ifft2(M_sym · X)`` with ``M_sym[k] = (M[k] + M[-k])/2``
    (Hermitian symmetry of X). ``M_sym`` is real and symmetric, so it can be applied to the
    half spectrum of ``rfft2`` and inverted with ``irfft2`` at about half the cost
    (perf-anchors §3). For the odd (v2) box M is already symmetric and M_sym = M.

    Returns:
        (h, w // 2 + 1) tensor.
    """
    m = low_pass_mask(h, w, ratio, device=device, dtype=dtype, rule=rule, width=width)
    flipped = torch.roll(torch.flip(m, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))  # M[-k]
    return (0.5 * (m + flipped))[:, : w // 2 + 1]


def low_pass(x: torch.Tensor, ratio: float, rule: str = "odd", width: Optional[int] = None) -> torch.Tensor:
    """``real(ifft2(mask · fft2(x)))`` over the last two dims. method.md §3.

    Computed as ``irfft2(rfft2(x) · M_half)`` (see :func:`_real_half_mask`), which is the
    same operator. Differentiable.

    Args:
        x: (..., h, w) real tensor (float32 or float64).
        ratio: ρ ∈ (0, 1] (``frequency.ratio``).
        rule: ``odd`` | ``v1`` (``frequency.box_rule``); ``width``: box width in tokens
            (``frequency.box``), None = the rule.
    Returns:
        (..., h, w) tensor of x's dtype.
    """
    _check_ratio(ratio)
    h, w = x.shape[-2:]
    if box_width(h, ratio, rule, width) == h and box_width(w, ratio, rule, width) == w:
        return x.clone()                  # a box covering everything: all low
    real_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    spec = torch.fft.rfft2(x.to(real_dtype))
    mask = _real_half_mask(h, w, ratio, device=x.device, dtype=real_dtype, rule=rule, width=width)
    return torch.fft.irfft2(spec * mask, s=(h, w)).to(x.dtype)


def split_frequencies(x: torch.Tensor, ratio: float, rule: str = "odd",
                      width: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split a feature map into low- and high-frequency parts. method.md §3, §4.

    ``F_ld = real(IFFT2(mask · FFT2(F_d)))`` and ``F_hd = F_d − F_ld`` (high is computed
    as the residual ``x − low``), so ``torch.equal(x - low, high)`` is exact, and
    ``low + high`` reproduces x to within one rounding (a bitwise ``low + high == x`` is not
    guaranteed in floating point). A constant map is all low; a Nyquist checkerboard is
    all high for any box that does not cover the whole axis; a box covering everything
    returns (x, 0) exactly.

    Args:
        x: (..., h, w) real tensor, e.g. decoder features (B, D, h, w).
        ratio, rule, width: the box (see :func:`low_pass`).
    Returns:
        (low, high), each shaped like x.
    """
    low = low_pass(x, ratio, rule, width)
    return low, x - low


RELATIONS = ("softmax", "centred", "raw")


def relation(f: torch.Tensor, mode: str = "softmax", temperature: float = 0.1) -> torch.Tensor:
    """Token relation map of a feature map. method.md §3 (S_l), §4 (S_h).

    * ``softmax`` (v2 default): ``S[i, :] = softmax_j(cos(F_i, F_j) / T)``, a sharp row
      distribution (``frequency.temperature`` T). Rows sum to 1; not symmetric.
    * ``centred`` (v1, ExCEL): cosine matrix minus its mean over all N² entries, times 3,
      sigmoid: near 0.5 everywhere, a flat target.
    * ``raw`` (the paper's printed form): ``sigmoid(Fᵀ F)`` on the flattened tokens; saturates.

    Args:
        f: (..., D, h, w) features.
        mode: ``softmax`` | ``centred`` | ``raw`` (``frequency.relation``).
        temperature: T of ``softmax``.
    Returns:
        (..., N, N) with N = h*w, entries in (0, 1).
    """
    tokens = f.flatten(-2)                                   # (..., D, N)
    if mode == "raw":
        return torch.sigmoid(tokens.transpose(-1, -2) @ tokens)
    tokens = F.normalize(tokens, dim=-2)                      # each token over D
    cos = tokens.transpose(-1, -2) @ tokens
    if mode == "softmax":
        if not temperature > 0:
            raise ValueError(f"relation temperature must be > 0, got {temperature!r}")
        return torch.softmax(cos / temperature, dim=-1)
    if mode == "centred":
        cos = cos - cos.mean(dim=(-2, -1), keepdim=True)
        return torch.sigmoid(3.0 * cos)
    raise ValueError(f"relation mode must be one of {RELATIONS}, got {mode!r}")
