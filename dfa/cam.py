"""Class scores of the raw CAM: foreground S and the background column. method.md §1.

The frozen CLIP gives, per token, raw cosines to every class text and to every background
prompt. From them:

* ``S`` (B, N, C): each class min-maxed over the image's tokens; absent classes are 0.
* ``s_bg`` (B, N): the background score, by ``cam.background``:

  - ``residual`` (default): ``1 − max_{c ∈ C_img} S_c``, the anchors' label rule;
  - ``prompts``: CLIP-ES's joint softmax: cosines to the present classes and to every
    background prompt, times the model's logit scale, one softmax over all of them;
    ``s_bg`` is the summed probability of the background prompts;
  - ``prompt_minmax``: v1 — each prompt min-maxed alone over the tokens, the max over
    prompts, then min-maxed again. Prompts absent from the image are stretched to [0, 1]
    too, so ``s_bg`` is high everywhere (≈ 0.74 on average on the 8×8 benchmark).

``Ŝ = [s_bg | S]`` (B, N, 1 + C) is what propagation and optimal transport act on. Its
token labels, :func:`cam_labels` (the argmax over background + present classes, as built
here: S min-maxed per class, s_bg not rescaled), are the unrefined CAM's label rule: the
raw-CAM row argmaxes exactly these scores (after upsampling and PAR), and OT's ``cam_area``
prior counts their areas (method.md §1, §5).
Tensors in, tensors out; float32.
"""
from __future__ import annotations

import torch

__all__ = ["BACKGROUNDS", "minmax_tokens", "foreground_scores", "background_score", "class_scores", "cam_labels"]

BACKGROUNDS = ("residual", "prompts", "prompt_minmax")


def minmax_tokens(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Min-max each (image, column) of (B, N, C) over the N tokens to [0, 1]; a constant column is 0."""
    lo = x.amin(dim=-2, keepdim=True)
    hi = x.amax(dim=-2, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(eps)


def foreground_scores(cos: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """S: (B, N, C) raw class cosines → min-maxed per class over tokens, absent classes 0."""
    return minmax_tokens(cos.float()) * present[:, None, :].to(torch.float32)


def background_score(cos: torch.Tensor, cos_bg: torch.Tensor, present: torch.Tensor, mode: str = "residual",
                     logit_scale: float = 100.0) -> torch.Tensor:
    """s_bg (B, N) in [0, 1]. method.md §1 (``cam.background``).

    Args:
        cos: (B, N, C) raw token-class cosines (or another dense class score, e.g. Grad-CAM).
        cos_bg: (B, N, P) raw token-prompt cosines, P ≥ 1 background prompts (``residual``
            does not read them).
        present: (B, C) bool image labels.
        mode: ``residual`` | ``prompts`` | ``prompt_minmax``.
        logit_scale: CLIP's logit scale (100 for OpenAI CLIP), ``prompts`` only.
    """
    present = present.bool()
    if mode == "residual":
        s = foreground_scores(cos, present)
        return 1.0 - s.amax(dim=-1) if s.shape[-1] else torch.ones(s.shape[:2], device=s.device)
    if cos_bg.shape[-1] == 0:
        raise ValueError(f"cam.background={mode} needs background prompts; the dataset lists none")
    if mode == "prompts":
        fg = (logit_scale * cos.float()).masked_fill(~present[:, None, :], float("-inf"))
        logits = torch.cat([fg, logit_scale * cos_bg.float()], dim=-1)
        return torch.softmax(logits, dim=-1)[..., cos.shape[-1]:].sum(-1)
    if mode == "prompt_minmax":
        return minmax_tokens(minmax_tokens(cos_bg.float()).amax(dim=-1, keepdim=True))[..., 0]
    raise ValueError(f"cam.background must be one of {', '.join(BACKGROUNDS)}, got {mode!r}")


def class_scores(cos: torch.Tensor, cos_bg: torch.Tensor, present: torch.Tensor, mode: str = "residual",
                 logit_scale: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ŝ = [s_bg | S] (B, N, 1 + C) and its valid columns (B, 1 + C): background + present classes."""
    present = present.bool()
    s = foreground_scores(cos, present)
    bg = background_score(cos, cos_bg, present, mode, logit_scale)
    valid = torch.cat([torch.ones_like(present[:, :1]), present], dim=1)
    return torch.cat([bg[..., None], s], dim=-1), valid


def cam_labels(s_hat: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Token labels (B, N) of the unrefined CAM: argmax of Ŝ = [s_bg | S] over the valid
    columns (ties to the lower index, as the raw-CAM row's argmax). method.md §1, §5."""
    return s_hat.masked_fill(~valid.bool()[:, None, :], float("-inf")).argmax(dim=-1)
