"""Sections ``clip``, ``pretrain`` and ``cache``: the frozen CLIP (method.md §1), the embedded
benchmark's small CLIP, and the frozen-encoder feature cache; and the autocast choices the
encoder and the decoder share.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dfa.config.checks import ConfigError, _choice, _positive, _range


# Autocast choices of the encoder and the decoder (issue 5): bf16 runs only on CUDA; the OT
# step and the losses always run in fp32.
PRECISIONS = ("auto", "fp32", "bf16")


def bf16_autocast(precision: str, device_type: str) -> bool:
    """Whether a ``*.precision`` choice runs under bf16 autocast on this device type."""
    return device_type == "cuda" and precision != "fp32"


@dataclass
class ClipConfig:
    """Frozen CLIP backbone (method.md §1).

    ``model``/``pretrained``: open_clip names (``ViT-B-16``/``openai`` on VOC/COCO), or the
    project's ``dfa-tiny-vit`` pretrained by ``dfa pretrain-clip`` into ``checkpoint``.
    ``similarity`` (choice ``cam.similarity``): surgery | maskclip | raw | gradcam.
    """
    model: str = "dfa-tiny-vit"
    pretrained: str | None = None
    checkpoint: str | None = "checkpoints/clip/model.pt"
    last_k: int = 4
    similarity: str = "surgery"
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16: autocast of the frozen encoder
    # Blocks whose patch tokens feed the decoder (and the cache); null = every block (§6).
    # On VOC, e.g. [-4, -3, -2, -1] cuts the cache's tokens from 7.4 to 2.5 MB per view.
    decoder_layers: list[int] | None = None

    def check(self) -> None:
        _positive("clip.last_k", self.last_k)
        _choice("clip.similarity", self.similarity, ("surgery", "maskclip", "raw", "gradcam"))
        _choice("clip.precision", self.precision, PRECISIONS)


@dataclass
class PretrainConfig:
    """Contrastive pretraining of the embedded benchmark's small CLIP (benchmark.md)."""
    image_size: int = 64
    patch_size: int = 8
    width: int = 192
    layers: int = 6
    heads: int = 3
    embed_dim: int = 128
    pool: str = "avg"
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 2
    context_length: int = 16
    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    object_crop_prob: float = 0.5

    def check(self) -> None:
        for k in ("image_size", "patch_size", "width", "layers", "heads", "embed_dim", "steps", "batch_size"):
            _positive(f"pretrain.{k}", getattr(self, k))
        _choice("pretrain.pool", self.pool, ("avg", "tok"))
        _range("pretrain.object_crop_prob", self.object_crop_prob, 0.0, 1.0)


@dataclass
class CacheConfig:
    """Frozen-encoder feature cache (issue 3 item 6, issue 5 item 1)."""
    enabled: bool = True
    dir: str = "cache/features"
    dtype: str = "float16"
    flip: bool = True
    shard_size: int = 256
    # Batches read ahead by a background thread while the current step runs (pinned host
    # memory on CUDA); 0 reads each batch synchronously. Same batches either way.
    prefetch: int = 2
    # Frozen features of the scored splits kept in memory by a table's or a study's scoring
    # (every cell scores the same tune/train views, row 4's seeds the same val views): GiB,
    # 0 = off. Exact (the same bytes in give the stored float32 features out); when full it
    # keeps what it has (dfa.backbone.memo). Base benchmark: tune + train 1.25, val 3.1 GiB.
    memo_gib: float = 5.0

    def check(self) -> None:
        _choice("cache.dtype", self.dtype, ("float16", "float32"))
        if not self.memo_gib >= 0:
            raise ConfigError(f"cache.memo_gib: must be >= 0 (GiB, 0 = off), got {self.memo_gib!r}")
        _positive("cache.shard_size", self.shard_size)
        if self.prefetch < 0:
            raise ConfigError(f"cache.prefetch: must be >= 0, got {self.prefetch!r}")
