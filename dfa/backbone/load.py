"""Build the frozen backbone from config: the real open_clip model or the small CLIP.

Real scale: ``clip.model`` = ``ViT-B-16`` with ``clip.pretrained`` = ``openai`` (open_clip
downloads it on a user's machine) or ``clip.checkpoint`` = a local weights file.
Embedded benchmark: ``clip.model`` = ``dfa-tiny-vit`` and ``clip.checkpoint`` = the file
written by ``dfa pretrain-clip``, which records its architecture and class list.
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from dfa.backbone.clip import TINY_NAME, FrozenCLIP, build_tiny
from dfa.config import Config
from dfa.data.classes import ClassSpec
from dfa.errors import WorkbenchError


def load_tiny_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise WorkbenchError(f"{path}: small-CLIP checkpoint not found (run `dfa pretrain-clip` first)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file
        raise WorkbenchError(f"{path}: cannot read checkpoint ({exc.__class__.__name__}: {exc})") from None
    for key in ("config", "state_dict", "classes"):
        if key not in ckpt:
            raise WorkbenchError(f"{path}: not a dfa small-CLIP checkpoint (missing '{key}')")
    return ckpt


def load_backbone(cfg: Config, spec: ClassSpec, device: torch.device | str = "cpu") -> FrozenCLIP:
    """The frozen CLIP of ``cfg.clip`` on ``device``; class-list and architecture checked."""
    c = cfg.clip
    if c.model == TINY_NAME:
        ckpt = load_tiny_checkpoint(c.checkpoint or "")
        if list(ckpt["classes"]) != list(spec.classes):
            raise WorkbenchError(
                f"{c.checkpoint}: class list {ckpt['classes']} does not match the dataset's {spec.classes}")
        model = build_tiny(ckpt["config"])
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise WorkbenchError(f"{c.checkpoint}: architecture mismatch ({str(exc).splitlines()[0]})") from None
        tokenizer = open_clip.get_tokenizer(TINY_NAME, context_length=ckpt["config"]["text_cfg"]["context_length"])
    else:
        pretrained = c.checkpoint if c.checkpoint else c.pretrained
        if pretrained and c.checkpoint and not Path(c.checkpoint).exists():
            raise WorkbenchError(f"{c.checkpoint}: CLIP checkpoint not found")
        try:
            model = open_clip.create_model(c.model, pretrained=pretrained)
        except RuntimeError as exc:
            raise WorkbenchError(f"clip.model={c.model} pretrained={pretrained}: {exc}") from None
        tokenizer = open_clip.get_tokenizer(c.model)
    return FrozenCLIP(model, tokenizer, last_k=c.last_k, similarity=c.similarity,
                      decoder_layers=c.decoder_layers).to(device)
