"""The DFA model: two affinity heads, the decoder, and the CAM → pseudo-label path.

Only the heads (method.md §2) and the decoder (§6) train; the CLIP features arrive as
tensors (from the cache or the frozen encoder online). ``refine`` implements ablation
rows 0-4 (§7) by one code path whose switches are ``AblationConfig``'s toggles.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dfa.backbone.clip import minmax_tokens
from dfa.affinity import AffinityHead, inverse_attention, sinkhorn_normalize, square, symmetrize
from dfa.config import Config, bf16_autocast
from dfa.frequency import relation, split_frequencies
from dfa.losses import alignment_loss, balanced_seg_loss, hfar_pairs, rectification_loss, update_alpha
from dfa.ot import column_marginal, ot_refine, scoring_matrix
from dfa.refine import PAR, cams_to_label, product_refine


class Decoder(nn.Module):
    """WeCLIP-style decoder (method.md §6).

    Per-block 2-layer MLP D→width on each block's patch tokens, concatenate, 1×1 conv to
    ``width`` (= F_d, the features LFAA/HFAR read), ``layers`` transformer layers, 1×1 conv
    to the classes. tokens (B, L, N, D) → logits (B, num_classes, h, w), F_d (B, width, h, w).
    """

    def __init__(self, num_blocks: int, in_dim: int, num_classes: int, width: int = 256, layers: int = 3,
                 heads: int = 8, dropout: float = 0.1):
        super().__init__()
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(inplace=True),
                                                nn.Linear(width, width)) for _ in range(num_blocks))
        self.fuse = nn.Conv2d(num_blocks * width, width, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        b, n_blocks, n, _ = tokens.shape
        h, w = grid
        x = torch.cat([mlp(tokens[:, i]) for i, mlp in enumerate(self.mlps)], dim=-1)  # (B, N, L*width)
        f_d = self.fuse(x.transpose(1, 2).reshape(b, -1, h, w))
        x = self.transformer(self.dropout(f_d).flatten(2).transpose(1, 2))
        logits = self.classifier(x.transpose(1, 2).reshape(b, -1, h, w))
        return logits, f_d


@dataclass
class Affinities:
    """Affinities of one batch, each (B, N, N)."""
    s_raw: torch.Tensor            # A_s before Sinkhorn: head output (learned) or mean attention
    s: torch.Tensor                # A_s = Norm(s_raw), symmetric
    inv_raw: torch.Tensor | None   # symmetrised sigmoid output of the inverse path (L_r's input)
    inv: torch.Tensor | None       # A_inv = Norm(inv_raw)


@dataclass
class Refined:
    """Output of the CAM path for a batch at crop resolution."""
    scores: torch.Tensor  # (B, 1 + C, H, W) after PAR; channel 0 background
    labels: torch.Tensor  # (B, H, W) long pseudo-labels (0 = background, c+1 = class c)
    seed_scores: torch.Tensor  # (B, 1 + C, H, W) before PAR


class DFA(nn.Module):
    """Affinity heads + decoder. ``num_classes`` includes background."""

    def __init__(self, cfg: Config, num_blocks: int, in_dim: int, num_classes: int):
        super().__init__()
        self.cfg = cfg
        k = cfg.clip.last_k
        self.head_s = AffinityHead(k, cfg.affinity.hidden)
        if cfg.affinity.head_init == "attention":
            self.head_s.init_as_attention()
        self.head_inv = AffinityHead(k, cfg.affinity.hidden)
        d = cfg.decoder
        self.decoder = Decoder(num_blocks, in_dim, num_classes, d.width, d.layers, d.heads, d.dropout)
        self.par = PAR(tuple(cfg.refine.par_dilations), cfg.refine.par_iters)
        self.register_buffer("alpha", torch.tensor(cfg.loss.alpha_init))

    # ----------------------------------------------------------------- §2 affinities
    def affinities(self, attn: torch.Tensor, grid: tuple[int, int], trained: bool = True) -> Affinities:
        """attn (B, K, N, N) head-mean attention of the last K blocks.

        The heads see attention rescaled so its mean entry is 1 at any N (raw softmax
        values shrink as 1/N): the A_s head log(N·W) when ``affinity.head_init=attention``
        (it then starts as the attention affinity), else N·W; the inverse head N·(I − W).
        ``trained=False`` gives the untrained attention affinity A_s = Norm(mean_K W) of row 0.
        """
        a = self.cfg.affinity
        ab = self.cfg.ablation
        n = attn.shape[-1]
        attn = attn.float()
        if trained and ab.learned_s:
            x = torch.log((attn * n).clamp_min(1e-4)) if a.head_init == "attention" else attn * n
            s_raw = symmetrize(self.head_s(x))
        else:
            s_raw = attn.mean(1)
        inv_raw = inv = None
        if ab.use_inverse:
            w_inv = inverse_attention(attn, mode=a.inverse, ratio=self.cfg.frequency.ratio, grid=grid)
            inv_raw = symmetrize(self.head_inv(w_inv * n))
            inv = sinkhorn_normalize(inv_raw, a.sinkhorn_rounds)
        return Affinities(s_raw, sinkhorn_normalize(s_raw, a.sinkhorn_rounds), inv_raw, inv)

    # ----------------------------------------------------------------- §5/§7 CAM path
    @torch.no_grad()
    def refine(self, aff: Affinities, sim: torch.Tensor, sim_bg: torch.Tensor, present: torch.Tensor,
               image: torch.Tensor, grid: tuple[int, int]) -> Refined:
        """Refined CAMs and pseudo-labels (rows 0-4 of method.md §7).

        sim (B, N, C) min-max normalised patch-text similarity S, sim_bg (B, N) background
        prompt similarity (max over prompts, normalised), present (B, C) bool image labels,
        image (B, 3, H, W) normalised RGB for PAR (the output's size), grid (h, w) of the N tokens.
        Background = (1 − max_c M_r)^p after upsampling (method.md §5), for every row.
        """
        cfg, ab = self.cfg, self.cfg.ablation
        cam = sim * present[:, None, :]
        if ab.combination == "product":
            affs = [aff.s_raw] + ([aff.inv_raw] if aff.inv_raw is not None else [])
            fg = product_refine(affs, cam, rounds=cfg.affinity.sinkhorn_rounds, square=cfg.affinity.square)
            fg = fg * present[:, None, :]
        else:
            a_la = square(aff.s) if cfg.affinity.square else aff.s
            a_ha = aff.inv if aff.inv is not None else torch.zeros_like(aff.s)
            if aff.inv is not None and cfg.affinity.square:
                a_ha = square(a_ha)
            use_col = cfg.ot.background == "column"
            s_all = torch.cat([sim_bg[..., None], sim], -1) if use_col else sim
            valid = torch.cat([torch.ones_like(present[:, :1]), present], -1) if use_col else present
            score = scoring_matrix(a_la, a_ha, s_all, cfg.ot.score, cfg.ot.lambda_l, cfg.ot.lambda_h)
            if cfg.ot.normalize == "class":
                score = minmax_tokens(score)
            v = column_marginal(s_all, cfg.ot.marginal, cfg.ot.tau, valid)
            m_r = ot_refine(score, v, cfg.ot.epsilon, cfg.ot.max_iters, cfg.ot.tol)
            fg = m_r[..., 1:] if use_col else m_r
        fg = fg.transpose(1, 2).reshape(fg.shape[0], -1, *grid)
        fg = F.interpolate(fg, size=image.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
        seed = cams_to_label(fg, present, cfg.refine.bg_power)
        keep = torch.cat([torch.ones_like(present[:, :1]), present], 1)  # (B, 1 + C): bg + present
        scores = self._par(image, seed, keep) if cfg.refine.par_iters > 0 else seed
        scores = scores.masked_fill(~keep[:, :, None, None], -1)
        return Refined(scores=scores, labels=scores.argmax(1), seed_scores=seed)

    def _par(self, image: torch.Tensor, seed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """PAR (method.md §5) on the kept channels of the whole batch at once.

        PAR is per channel and absent classes are masked afterwards, so only background +
        present classes are refined (4x less work on VOC, 1-3 of 20 classes per image): each
        image's kept channels are gathered first, padded to the batch's largest count with
        absent channels (their output is masked by the caller). At ``refine.par_scale`` < 1
        PAR runs on the resized image and its output is resized back bilinearly, as the
        anchors' ``down_scale=2``. image (B, 3, H, W), seed/keep (B, 1 + C, H, W)/(B, 1 + C).
        """
        size = seed.shape[-2:]
        count = int(keep.sum(1).max())
        order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :count]  # kept first
        index = order[:, :, None, None].expand(-1, -1, *size)
        scale = self.cfg.refine.par_scale
        small = image if scale == 1 else F.interpolate(
            image, size=[max(1, round(s * scale)) for s in size], mode="bilinear", align_corners=False)
        refined = self.par(small, seed.gather(1, index))              # PAR resizes the masks to `small`
        if refined.shape[-2:] != size:
            refined = F.interpolate(refined, size=size, mode="bilinear", align_corners=False)
        return torch.full_like(seed, -1.0).scatter_(1, index, refined)

    # ----------------------------------------------------------------- §3/§4/§6 losses
    def losses(self, tokens: torch.Tensor, aff: Affinities, labels: torch.Tensor,
               grid: tuple[int, int], size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """L_seg, L_a, L_r for a batch; ``labels`` (B, H, W) pseudo-labels (detached)."""
        cfg, ab, lc = self.cfg, self.cfg.ablation, self.cfg.loss
        logits, f_d = self.run_decoder(tokens, grid)
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        out = {"seg": balanced_seg_loss(up, labels)}
        zero = up.new_zeros(())
        f_low, f_high = split_frequencies(f_d.float(), cfg.frequency.ratio)
        if ab.align:
            s_l = relation(f_low, cfg.frequency.relation).detach()
            if self.training:
                self.alpha.fill_(float(update_alpha(self.alpha, s_l, aff.s.detach(), lc.alpha_momentum)))
            out["align"] = alignment_loss(s_l, aff.s, self.alpha)
        else:
            out["align"] = zero
        if ab.rectify and aff.inv_raw is not None:
            s_h = relation(f_high, cfg.frequency.relation).detach()
            y = F.interpolate(labels[:, None].float(), size=grid, mode="nearest")[:, 0].long()
            pos, neg = hfar_pairs(s_h, y.flatten(1), grid, lc.radius, lc.window, hist_cos=lc.hist_cos)
            out["rect"] = rectification_loss(aff.inv_raw, pos, neg)
        else:
            out["rect"] = zero
        out["total"] = out["seg"] + lc.lambda_align * out["align"] + lc.lambda_rect * out["rect"]
        return out

    def run_decoder(self, tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder (logits, F_d) in float32; under bf16 autocast on CUDA with ``decoder.precision``
        ``auto``/``bf16`` (issue 5: the losses, the FFT split and the OT stay fp32)."""
        with torch.autocast("cuda", dtype=torch.bfloat16,
                            enabled=bf16_autocast(self.cfg.decoder.precision, tokens.device.type)):
            logits, f_d = self.decoder(tokens.float(), grid)
        return logits.float(), f_d.float()

    def segment(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Decoder logits (B, num_classes, h, w), float32."""
        return self.run_decoder(tokens, grid)[0]

    def trainable_groups(self) -> list[dict]:
        c = self.cfg.train
        heads = list(self.head_s.parameters()) + list(self.head_inv.parameters())
        return [{"params": heads, "lr": c.lr}, {"params": self.decoder.parameters(), "lr": c.lr * c.decoder_lr_mult}]
