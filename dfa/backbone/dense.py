"""What the method reads from the frozen CLIP for a batch of views (method.md §1).

``DenseExtractor`` holds the frozen encoder and the class/background text embeddings and
returns, per view, the decoder's input tokens, the last-K attention (and, for
``affinity.channels: heads``, every head's), and the dense similarity S. The feature cache
stores exactly these tensors, so training from the cache and training online see the same
values for the same view.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dfa.backbone.clip import FrozenCLIP, cosines
from dfa.config import bf16_autocast
from dfa.data.classes import ClassSpec


@dataclass
class ViewFeatures:
    tokens: torch.Tensor   # (B, L, N, D) per-block patch tokens (decoder input)
    attn: torch.Tensor     # (B, K, N, N) head-mean attention of the last K blocks, CLS dropped
    cos: torch.Tensor      # (B, N, C) raw token-class cosines (Grad-CAM maps for ``gradcam``)
    cos_bg: torch.Tensor   # (B, N, P) raw token-prompt cosines, one per background prompt
    grid: tuple[int, int]
    heads: torch.Tensor | None = None   # (B, K, H, N, N) per-head attention (``affinity.channels: heads`` only)

    def to(self, device, dtype=None) -> "ViewFeatures":
        f = lambda t: None if t is None else t.to(device=device, dtype=dtype or t.dtype, non_blocking=True)  # noqa: E731
        return ViewFeatures(f(self.tokens), f(self.attn), f(self.cos), f(self.cos_bg), self.grid, f(self.heads))


class DenseExtractor:
    """Frozen CLIP + prompts → :class:`ViewFeatures`.

    Stores raw cosines, not scores: the per-class min-max of S and every background rule of
    ``cam.background`` are computed from them later (``dfa.cam``), so one cache serves all.
    ``logit_scale`` is the model's (100 for OpenAI CLIP), for the ``prompts`` background.
    ``precision`` ``'bf16'`` or ``'auto'`` runs the encoder under bf16 autocast on CUDA
    (``'auto'`` is fp32 on CPU); everything is returned in float32.
    """

    def __init__(self, clip: FrozenCLIP, spec: ClassSpec, templates: list[str], precision: str = "auto",
                 heads: bool = False):
        self.clip = clip
        self.heads = heads      # also return per-head attention (``affinity.channels: heads``)
        self.spec = spec
        self.fg_text, self.bg_text = clip.text_embeddings(spec.classes, spec.synonyms, spec.background, templates)
        self.precision = precision
        self.logit_scale = float(clip.model.logit_scale.exp().clamp(max=100)) if hasattr(clip.model, "logit_scale") \
            else 100.0

    @property
    def device(self) -> torch.device:
        return self.fg_text.device

    def decoder_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """images (B, 3, H, W) normalised → the decoder's input tokens (B, L, N, D) float32 and
        the grid, under the same precision rule as :meth:`__call__` (``FrozenCLIP.decoder_tokens``)."""
        images = images.to(self.device)
        with torch.autocast(images.device.type, dtype=torch.bfloat16,
                            enabled=bf16_autocast(self.precision, images.device.type)):
            tokens, grid = self.clip.decoder_tokens(images)
        return tokens.float(), grid

    def __call__(self, images: torch.Tensor, present: torch.Tensor | None = None) -> ViewFeatures:
        """images (B, 3, H, W) normalised; present (B, C) bool, needed by ``gradcam`` only."""
        images = images.to(self.device)
        use_bf16 = bf16_autocast(self.precision, images.device.type)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = self.clip(images, heads=self.heads)
        if self.clip.similarity == "gradcam":
            if present is None:
                present = torch.ones(images.shape[0], len(self.spec.classes), dtype=torch.bool, device=self.device)
            text = torch.cat([self.fg_text, self.bg_text])
            cos = self.clip.gradcam(images, text, present.to(self.device), len(self.spec.classes))
        else:
            cos = cosines(out.dense, self.fg_text)
        cos_bg = cosines(out.dense, self.bg_text) if len(self.bg_text) else cos[..., :0]
        return ViewFeatures(out.tokens.float(), out.attn.float(), cos.float(), cos_bg.float(), out.grid,
                            None if out.heads is None else out.heads.float())
