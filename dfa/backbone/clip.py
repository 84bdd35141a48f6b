"""The frozen CLIP backbone (method.md §1) over open_clip.

One forward pass gives what the method needs from the image tower:

- ``tokens``  (B, L, N, D): patch tokens after each chosen block (the decoder's input);
- ``attn``    (B, K, N, N): head-averaged patch-to-patch attention of the last K blocks;
- ``heads``   (B, K, H, N, N): the same per head, only when asked (``affinity.channels: heads``);
- ``dense``   (B, N, E): dense image-text tokens of the ``cam.similarity`` path
  (``maskclip``, ``surgery``, ``raw``; ``gradcam`` works on the text side, see ``similarity``).

The positional embedding is resized bilinearly to the input's token grid, so any input
whose sides are multiples of the patch works (method.md §1). open_clip's blocks are run one
by one; the last K blocks compute their attention explicitly so the weights can be read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

TINY_NAME = "dfa-tiny-vit"
CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)  # makes "dfa-tiny-vit" an open_clip model name


def tiny_config(width: int, layers: int, heads: int, patch_size: int, image_size: int, embed_dim: int,
                pool: str, text_width: int, text_layers: int, text_heads: int, context_length: int) -> dict:
    """The registered ``dfa-tiny-vit`` config with the sizes from ``params.yaml: pretrain``."""
    cfg = json.loads((CONFIG_DIR / f"{TINY_NAME}.json").read_text())
    cfg["embed_dim"] = embed_dim
    cfg["vision_cfg"].update(image_size=image_size, layers=layers, width=width, head_width=width // heads,
                             patch_size=patch_size, pool_type=pool)
    cfg["text_cfg"].update(context_length=context_length, width=text_width, heads=text_heads, layers=text_layers)
    return cfg


def build_tiny(cfg: dict) -> open_clip.CLIP:
    return open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])


@dataclass
class ImageFeatures:
    """Frozen-encoder outputs for a batch; N = h*w patch tokens."""
    tokens: torch.Tensor  # (B, L, N, D)
    attn: torch.Tensor    # (B, K, N, N)
    dense: torch.Tensor   # (B, N, E), not normalised
    grid: tuple[int, int]
    heads: torch.Tensor | None = None   # (B, K, H, N, N) per-head attention, CLS dropped (forward(heads=True))


def resize_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """(1 + h0*w0, D) positional embedding → (1 + h*w, D), bilinear over the patch grid."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls, patch = pos[:1], pos[1:]
    d = patch.shape[-1]
    patch = patch.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    patch = F.interpolate(patch.float(), size=new_grid, mode="bilinear", align_corners=False)
    patch = patch.permute(0, 2, 3, 1).reshape(-1, d).to(pos.dtype)
    return torch.cat([cls, patch], dim=0)


def _heads(block: nn.Module) -> nn.MultiheadAttention:
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention):
        raise TypeError(f"unsupported attention module {type(attn).__name__}: expected nn.MultiheadAttention")
    return attn


def _qkv(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L, D) block input → q, k, v as (B, H, L, D/H)."""
    mha = _heads(block)
    q, k, v = F.linear(block.ln_1(x), mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    b, n, d = q.shape
    h = mha.num_heads
    return tuple(t.reshape(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))  # type: ignore[return-value]


def _merge(block: nn.Module, heads: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D/H) → out_proj over merged heads, (B, L, D)."""
    b, h, n, dh = heads.shape
    return _heads(block).out_proj(heads.transpose(1, 2).reshape(b, n, h * dh))


def block_with_attention(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One open_clip ResidualAttentionBlock with explicit attention.

    Returns the block output (B, L, D), the per-head attention softmax(QKᵀ/√d) (B, H, L, L)
    (its head mean is method.md §1's W) and the value heads (B, H, L, D/H) (for the MaskCLIP path).
    """
    q, k, v = _qkv(block, x)
    w = torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
    x = x + block.ls_1(_merge(block, w @ v))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, w, v


def surgery_attention(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ExCEL/CLIP-Surgery self-self attention path of one block: mean of softmax(qqᵀ),
    softmax(kkᵀ), softmax(vvᵀ) applied to v, through out_proj (no FFN). (B, L, D)."""
    q, k, v = _qkv(block, x)
    scale = q.shape[-1] ** -0.5
    w = sum(torch.softmax((t @ t.transpose(-1, -2)) * scale, dim=-1) for t in (q, k, v)) / 3
    return _merge(block, w @ v)


class FrozenCLIP(nn.Module):
    """open_clip model, frozen, exposing the dense outputs of method.md §1.

    Args:
        model: an open_clip ``CLIP`` (ViT image tower with nn.MultiheadAttention blocks).
        last_k: K, the number of last blocks whose attention is averaged into W (§2).
        similarity: ``maskclip`` | ``surgery`` | ``raw`` | ``gradcam`` (choice ``cam.similarity``).
        decoder_layers: indices of blocks whose tokens feed the decoder (None = all).
    """

    def __init__(self, model: nn.Module, tokenizer, last_k: int = 8, similarity: str = "maskclip",
                 decoder_layers: list[int] | None = None):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.visual = model.visual
        self.blocks = list(self.visual.transformer.resblocks)
        if not 0 < last_k <= len(self.blocks):
            raise ValueError(f"clip.last_k={last_k} but the model has {len(self.blocks)} blocks")
        self.last_k = last_k
        self.similarity = similarity
        n = len(self.blocks)
        self.decoder_layers = list(range(n)) if decoder_layers is None else [i % n for i in decoder_layers]
        self.patch = self.visual.patch_size[0] if isinstance(self.visual.patch_size, tuple) else self.visual.patch_size
        gs = self.visual.grid_size
        self.base_grid = (gs, gs) if isinstance(gs, int) else tuple(gs)
        self._pos_cache: dict[tuple, torch.Tensor] = {}  # (grid, device, dtype) → resized embedding

    # ------------------------------------------------------------------ text side
    @property
    def width(self) -> int:
        return self.visual.transformer.width

    @property
    def num_heads(self) -> int:
        """H, the attention heads of a block (``affinity.channels: heads`` feeds K·H maps)."""
        return _heads(self.blocks[-1]).num_heads

    @property
    def embed_dim(self) -> int:
        return self.visual.output_dim

    @torch.no_grad()
    def encode_prompts(self, groups: list[list[str]]) -> torch.Tensor:
        """Each group of prompts → one embedding: encode, L2-normalise, average, L2-normalise
        (method.md §1). Returns (G, E)."""
        device = next(self.model.parameters()).device
        flat = [p for g in groups for p in g]
        emb = self.model.encode_text(self.tokenizer(flat).to(device))
        emb = F.normalize(emb.float(), dim=-1)
        out, i = [], 0
        for g in groups:
            out.append(F.normalize(emb[i:i + len(g)].mean(0), dim=-1))
            i += len(g)
        return torch.stack(out)

    def text_embeddings(self, classes: list[str], synonyms: dict[str, list[str]], background: list[str],
                        templates: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Foreground (C, E) from names + synonyms, background (n_bg, E), one per prompt."""
        fg = [[t.format(w) for t in templates for w in [c, *synonyms.get(c, [])]] for c in classes]
        bg = [[t.format(b) for t in templates] for b in background]
        return self.encode_prompts(fg), self.encode_prompts(bg)

    # ------------------------------------------------------------------ image side
    def _pos(self, grid: tuple[int, int]) -> torch.Tensor:
        pos = self.visual.positional_embedding
        key = (tuple(grid), pos.device, pos.dtype)  # the model may have moved since (CPU → CUDA)
        if key not in self._pos_cache:
            self._pos_cache[key] = resize_pos_embed(pos.detach(), self.base_grid, grid)
        return self._pos_cache[key]

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W), H and W multiples of the patch → (B, 1 + N, D) tokens before block 0."""
        h, w = images.shape[-2] // self.patch, images.shape[-1] // self.patch
        if h * self.patch != images.shape[-2] or w * self.patch != images.shape[-1]:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch {self.patch}")
        v = self.visual
        x = v.conv1(images.to(v.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self._pos((h, w)).to(x.dtype)
        return v.ln_pre(x), (h, w)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(…, D) visual tokens → (…, E) in the joint space (ln_post, proj)."""
        x = self.visual.ln_post(x)
        return x @ self.visual.proj if self.visual.proj is not None else x

    @torch.no_grad()
    def forward(self, images: torch.Tensor, heads: bool = False) -> ImageFeatures:
        """``heads``: also return every head's attention (``ImageFeatures.heads``); ``attn`` is
        their mean either way, computed the same way, so it does not change with this flag."""
        x, grid = self.embed(images)
        n_blocks = len(self.blocks)
        first_k = n_blocks - self.last_k
        tokens, attns, per_head = [], [], []
        surgery = None
        for i, block in enumerate(self.blocks):
            if self.similarity == "surgery" and i >= first_k:
                s = surgery_attention(block, x)
                surgery = s if surgery is None else surgery + s
            if i >= first_k:
                x, w, v = block_with_attention(block, x)
                attns.append(w.mean(dim=1)[:, 1:, 1:])
                if heads:
                    per_head.append(w[:, :, 1:, 1:])
            else:
                x = block(x)
            if i in self.decoder_layers:
                tokens.append(x[:, 1:])
        if self.similarity == "maskclip":
            dense = self.project(_merge(self.blocks[-1], v))[:, 1:]
        elif self.similarity == "surgery":
            dense = self.project(surgery)[:, 1:]
        else:  # raw final tokens; gradcam also returns them (its S needs the text side)
            dense = self.project(x)[:, 1:]
        return ImageFeatures(tokens=torch.stack(tokens, 1), attn=torch.stack(attns, 1), dense=dense, grid=grid,
                             heads=torch.stack(per_head, 1) if heads else None)

    @torch.no_grad()
    def decoder_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The decoder's input alone (method.md §8 inference): (B, L, N, D) tokens of
        ``decoder_layers`` and the grid. Every block runs its own forward (fused attention)
        and blocks after the last kept one are skipped: the attention maps and S that
        :meth:`forward` also builds are not read by the decoder, and cost ~40 % of a
        multi-scale view on the embedded CLIP. Equal to ``forward(images).tokens`` up to
        float rounding (~5e-6 there; tests/test_clip.py)."""
        x, grid = self.embed(images)
        last = max(self.decoder_layers)
        tokens = []
        for i, block in enumerate(self.blocks[:last + 1]):
            x = block(x)
            if i in self.decoder_layers:
                tokens.append(x[:, 1:])
        return torch.stack(tokens, 1), grid

    def gradcam(self, images: torch.Tensor, text: torch.Tensor, present: torch.Tensor, n_fg: int) -> torch.Tensor:
        """CLIP-ES/WeCLIP Grad-CAM (choice ``cam.similarity=gradcam``).

        Gradients of softmax(100·cos(image, text)) over fg + bg prompts, taken at the last
        block's ln_1 output, weight its channels; ReLU of the weighted sum per token.
        text: (C_fg + n_bg, E) normalised; present: (B, C_fg) bool. Returns (B, N, C_fg).
        """
        with torch.no_grad():
            x, grid = self.embed(images)
            for block in self.blocks[:-1]:
                x = block(x)
        last = self.blocks[-1]
        with torch.enable_grad():
            h = last.ln_1(x).detach().requires_grad_(True)
            mha = _heads(last)
            attn_out = mha(h, h, h, need_weights=False)[0]
            y = x + last.ls_1(attn_out)
            y = y + last.ls_2(last.mlp(last.ln_2(y)))
            pooled, _ = self.visual._pool(y)
            feat = F.normalize(pooled @ self.visual.proj, dim=-1)
            probs = torch.softmax(100.0 * feat @ text.t(), dim=-1)[:, :n_fg]
            cams = torch.zeros(images.shape[0], h.shape[1] - 1, n_fg, device=images.device)
            for c in range(n_fg):
                if not present[:, c].any():
                    continue
                (g,) = torch.autograd.grad((probs[:, c] * present[:, c]).sum(), h, retain_graph=True)
                weight = g[:, 1:].mean(dim=1, keepdim=True)  # (B, 1, D)
                cams[:, :, c] = F.relu((weight * h[:, 1:]).sum(-1)).detach()
        return cams


def cosines(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Raw patch-text cosine similarity (method.md §1): dense (B, N, E), text (C, E) normalised → (B, N, C)."""
    return F.normalize(dense.float(), dim=-1) @ text.float().t()
