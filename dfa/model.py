"""The DFA model: two affinity heads, the decoder, and the CAM → pseudo-label path.

Only the heads (method.md §2) and the decoder (§6) train; the CLIP features arrive as
tensors (from the cache or the frozen encoder online). ``refine`` implements ablation
rows 0-4 (§7) by one code path whose switches are ``AblationConfig``'s toggles; the
ceiling rows of §11 replace one input by ground truth. Sizes given as ``auto`` in params
are resolved on the token grid by the rules of §10 (:meth:`DFA.sizes`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dfa.affinity import (AffinityHead, TokenRelation, inverse_attention, renormalize_heads, renormalize_rows,
                          sinkhorn_normalize, square, symmetrize)
from dfa.cam import class_scores, minmax_tokens
from dfa.config import Config, bf16_autocast
from dfa.frequency import box_width, relation, split_frequencies
from dfa.losses import (alignment_loss, balanced_seg_loss, grid_radius, grid_window, hfar_pairs,
                        rectification_loss, selective_mask, token_labels, update_alpha)
from dfa.ot import normalize_scores, prior, readout, reweight_scores, scoring_matrix, transport
from dfa.refine import PAR, product_affinity


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
class TokenScores:
    """Scores on the token grid before upsampling: ``fg`` (B, N, C); ``bg`` (B, N) or None
    (then the background is ``1 − max fg`` after upsampling, the anchors' rule); ``m_r``
    (B, N, 1 + C) the refined CAM M_r = T / max_i T and ``posterior`` (B, N, 1 + C) the OT
    posterior N·T, for figures (None outside the OT row); ``column_sums`` of the plan; ``ot``
    the plan's per-image diagnostics (:data:`OT_DIAGNOSTICS`, method.md §5)."""
    fg: torch.Tensor
    bg: torch.Tensor | None = None
    m_r: torch.Tensor | None = None
    posterior: torch.Tensor | None = None
    column_sums: torch.Tensor | None = None
    ot: dict | None = None


# Per-image keys of the OT plan's diagnostics carried by TokenScores.ot (dfa.ot.plan_diagnostics,
# and the solver's own per-problem iteration count and convergence).
OT_DIAGNOSTICS = ("row_err", "col_err", "problem_iters", "converged", "prior", "argmax_area", "empty")


@dataclass
class Refined:
    """Output of the CAM path for a batch at crop resolution."""
    scores: torch.Tensor      # (B, 1 + C, H, W) after PAR; channel 0 background, absent classes -1
    labels: torch.Tensor      # (B, H, W) long pseudo-labels (0 = background, c+1 = class c)
    tokens: TokenScores       # the token-level scores behind them
    bg_up: torch.Tensor       # (B, 1, H, W) background before the power and PAR
    fg_up: torch.Tensor       # (B, C, H, W) class scores before PAR (absent classes 0)


def decoder_areas(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Class areas (B, 1 + C) the decoder predicts: softmax over background + present classes,
    averaged over the tokens (``ot.prior: decoder``, method.md §5)."""
    masked = logits.float().masked_fill(~valid.bool()[:, :, None, None], float("-inf"))
    return masked.softmax(dim=1).mean(dim=(-2, -1))


def gt_areas(mask: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Ground-truth class areas (B, num_classes) of label maps (B, H, W), ignore excluded (§11 ``areas``)."""
    onehot = F.one_hot(mask.long().clamp(0, num_classes), num_classes + 1)[..., :num_classes].float()
    counts = onehot.flatten(1, 2).sum(1)
    return counts / counts.sum(-1, keepdim=True).clamp_min(1)


def same_class(labels: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) token labels → (1 for same label, 0 otherwise) (B, N, N) and the valid pairs."""
    same = (labels[:, :, None] == labels[:, None, :]).float()
    ok = labels != ignore_index
    return same, ok[:, :, None] & ok[:, None, :]


class DFA(nn.Module):
    """Affinity heads + decoder. ``num_classes`` includes background; ``num_heads`` H, the
    backbone's attention heads, is needed for ``affinity.channels: heads`` only."""

    def __init__(self, cfg: Config, num_blocks: int, in_dim: int, num_classes: int, num_heads: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.num_blocks, self.in_dim, self.num_heads = num_blocks, in_dim, num_heads
        if self.uses_heads and not num_heads:
            raise ValueError("affinity.channels=heads needs the backbone's head count: DFA(..., num_heads=H)")
        k = cfg.clip.last_k * (num_heads if self.uses_heads else 1)   # the heads' attention channels
        extra = 1 if cfg.affinity.head == "bilinear" else 0   # the token-relation channel, after the maps
        self.head_s = AffinityHead(k + extra, cfg.affinity.hidden)
        self.head_inv = AffinityHead(k + extra, cfg.affinity.hidden)
        self.rel_s = self.rel_inv = None
        if extra:
            self.rel_s = TokenRelation(in_dim, cfg.affinity.rank)
            self.rel_inv = TokenRelation(in_dim, cfg.affinity.rank)
        if cfg.affinity.head_init in ("mean", "attention"):
            self.head_s.init_mean(1.0, -4.0, channels=k)      # log-attention in: geometric layer mean
        if cfg.affinity.head_init == "mean":
            self.head_inv.init_mean(1.0, 0.0, channels=k)     # N·(high-passed attention) in: sigmoid of its layer mean
        if extra:  # the token channel starts silent: the untrained heads are the spec's
            self.head_s.silence_channels(slice(k, None))
            self.head_inv.silence_channels(slice(k, None))
        d = cfg.decoder
        self.decoder = Decoder(num_blocks, in_dim, num_classes, d.width, d.layers, d.heads, d.dropout)
        self.par = PAR(tuple(cfg.refine.par_dilations), cfg.refine.par_iters)
        self.register_buffer("alpha", torch.tensor(cfg.loss.alpha_init))
        # The background power of the training pseudo-labels (chosen on tune when training
        # starts, dfa.stages.train; ``refine.bg_power`` until then); saved with the weights.
        self.register_buffer("train_bg_power", torch.tensor(float(cfg.refine.bg_power)))

    @property
    def uses_heads(self) -> bool:
        """Whether the heads read every attention head (``affinity.channels: heads``, §2 v3).

        Only a head that trains can use the extra channels; in a row where none trains
        (rows 0-1: no L_a, no L_r) the heads read the K layer maps, so those rows are the
        same, bit for bit, under both options (§2: "rows 0 and 1 do not change")."""
        ab = self.cfg.ablation
        return self.cfg.affinity.channels == "heads" and (ab.align or ab.rectify)

    def untrained(self) -> "DFA":
        """A fresh model of the same shape and seed: the heads at their initialisation (the
        reference of ``head_shift``, §6 v3). With ``affinity.head_init: mean`` the heads'
        initial maps do not depend on the seed at all; the seed makes other inits repeatable."""
        device = next(self.parameters()).device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            fresh = DFA(self.cfg, self.num_blocks, self.in_dim, self.num_classes, self.num_heads)
        return fresh.to(device).eval()

    # ----------------------------------------------------------------- §10 sizes
    def sizes(self, grid: tuple[int, int]) -> dict[str, tuple[int, int]]:
        """Per-axis sizes on this grid: ``auto`` → the §10 rule, a number in tokens wins."""
        lc, fc = self.cfg.loss, self.cfg.frequency

        def axis(value, rule):
            return tuple(rule(n) if value == "auto" else int(value) for n in grid)
        box = tuple(box_width(n, fc.ratio, fc.box_rule, None if fc.box == "auto" else int(fc.box)) for n in grid)
        return {"radius": axis(lc.radius, grid_radius), "window": axis(lc.window, grid_window), "box": box}

    def _box(self, grid: tuple[int, int]) -> dict:
        fc = self.cfg.frequency
        return {"ratio": fc.ratio, "rule": fc.box_rule, "width": None if fc.box == "auto" else int(fc.box)}

    # ----------------------------------------------------------------- §2 affinities
    def affinities(self, attn: torch.Tensor, grid: tuple[int, int], trained: bool = True,
                   tokens: torch.Tensor | None = None, heads: torch.Tensor | None = None) -> Affinities:
        """attn (B, K, N, N) head-mean attention of the last K blocks, CLS dropped; ``tokens``
        (B, L, N, D) the frozen blocks' patch tokens (needed by ``affinity.head: bilinear``,
        whose heads also see a learned relation of the last block's tokens); ``heads``
        (B, K, H, N, N) every head's attention, CLS dropped (needed when :attr:`uses_heads`).

        Rows are renormalised to sum 1 first (``affinity.renorm_rows``, §1 v2; per head by the
        layer's row sums, :func:`~dfa.affinity.renormalize_heads`). The heads see attention
        rescaled so its mean entry is 1 at any N: the A_s head log(N·W) with ``head_init``
        ``mean``/``attention`` (it then starts as the geometric mean of its channels), else
        N·W; the inverse head N·W_inv. ``trained=False`` or an untrained-A_s row gives
        A_s = Norm(mean_K W), the anchors' attention affinity.
        """
        a, ab = self.cfg.affinity, self.cfg.ablation
        n = attn.shape[-1]
        attn = attn.float()
        if a.renorm_rows:
            attn = renormalize_rows(attn)
        if a.head == "bilinear" and tokens is None:
            raise ValueError("affinity.head=bilinear needs the patch tokens: affinities(attn, grid, tokens=...)")
        maps = attn                                            # what the heads read: (B, K or K·H, N, N)
        if self.uses_heads:
            if heads is None:
                raise ValueError("affinity.channels=heads needs the per-head attention: affinities(..., heads=...)")
            maps = heads.float()
            maps = (renormalize_heads(maps) if a.renorm_rows else maps).flatten(1, 2)

        def with_relation(x: torch.Tensor, rel) -> torch.Tensor:
            return x if rel is None else torch.cat([x, rel(tokens[:, -1])], dim=1)
        if trained and ab.learned_s:
            x = torch.log((maps * n).clamp_min(1e-4)) if a.head_init in ("mean", "attention") else maps * n
            s_raw = symmetrize(self.head_s(with_relation(x, self.rel_s)))
        else:
            s_raw = attn.mean(1)
        inv_raw = inv = None
        if ab.use_inverse:
            w_inv = inverse_attention(maps, mode=a.inverse, grid=grid, **self._box(grid))
            inv_raw = symmetrize(self.head_inv(with_relation(w_inv * n, self.rel_inv)))
            inv = sinkhorn_normalize(inv_raw, a.sinkhorn_rounds)
        return Affinities(s_raw, sinkhorn_normalize(s_raw, a.sinkhorn_rounds), inv_raw, inv)

    def row_affinities(self, aff: Affinities) -> dict[str, torch.Tensor]:
        """The Sinkhorn-normalised affinities this row propagates with, by ``head_shift`` name
        (§6 v3): ``head_shift`` the E(⊙) rows' Norm(A_s ⊙ A_inv) (A_la alone for row 2, the
        product for row 3) or the OT row's A_la; ``head_shift_ha`` A_ha alone, where the
        inverse head trains (``ablation.rectify``). Before the squaring of §2."""
        ab, rounds = self.cfg.ablation, self.cfg.affinity.sinkhorn_rounds
        out = {}
        if ab.combination == "product":
            affs = [aff.s_raw] + ([aff.inv_raw] if aff.inv_raw is not None else [])
            out["head_shift"] = product_affinity(affs, rounds, square=False)
        else:
            out["head_shift"] = aff.s
        if ab.rectify and aff.inv is not None:
            out["head_shift_ha"] = aff.inv
        return out

    # ----------------------------------------------------------------- §1 class scores
    def class_scores(self, cos: torch.Tensor, cos_bg: torch.Tensor, present: torch.Tensor,
                     logit_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Ŝ = [s_bg | S] (B, N, 1 + C) and its valid columns (B, 1 + C) (``cam.background``)."""
        return class_scores(cos, cos_bg, present, self.cfg.cam.background, logit_scale)

    # ----------------------------------------------------------------- §5/§7 CAM path
    @torch.no_grad()
    def token_scores(self, aff: Affinities | None, s_hat: torch.Tensor, valid: torch.Tensor,
                     areas: torch.Tensor | None = None, prior_kind: str | None = None) -> TokenScores:
        """Refined token scores of the configured row (rows 0-4, method.md §7); ``aff=None``
        gives the raw CAM. ``areas`` (B, 1 + C): the decoder's or the ground truth's, for
        ``ot.prior`` ``decoder`` / ``oracle``; ``prior_kind`` overrides ``ot.prior``."""
        cfg = self.cfg
        bg_col, fg_col = s_hat[..., 0], s_hat[..., 1:]
        present = valid[:, 1:]
        residual = cfg.cam.background == "residual"
        if aff is None:
            return TokenScores(fg=fg_col * present[:, None, :], bg=None if residual else bg_col)
        if cfg.ablation.combination == "product":
            a, fg = self._product_readout(aff, s_hat, valid)
            # A prompt background propagates with the classes, without the per-class min-max
            # (A is about doubly stochastic, so a score in [0, 1] stays there).
            bg = None if residual else (a @ bg_col[..., None])[..., 0].clamp(0, 1)
            return TokenScores(fg=fg, bg=bg)
        o = cfg.ot
        a_la = square(aff.s) if cfg.affinity.square else aff.s
        a_ha = aff.inv if aff.inv is not None else torch.zeros_like(aff.s)
        if aff.inv is not None and cfg.affinity.square:
            a_ha = square(a_ha)
        o_hat = normalize_scores(scoring_matrix(a_la, a_ha, s_hat, o.score, o.lambda_l, o.lambda_h), valid, o.normalize)
        if o.formulation == "reweight":
            return TokenScores(fg=reweight_scores(o_hat, valid, o.epsilon, o.max_iters, o.tol))
        kind = prior_kind or o.prior
        if kind == "refined":
            areas = self.refined_areas(aff, s_hat, valid)
        # cam_area counts the raw CAM's own labels (cam_labels of Ŝ, §1); the others read Ŝ as O is scaled
        scores = s_hat if kind in ("cam_area", "cam_area_scaled") else normalize_scores(s_hat, valid, o.normalize)
        b = prior(kind, scores, valid, o.prior_mix, o.tau, areas, o.normalize)
        plan, info = transport(o_hat, b, valid, o.formulation, o.epsilon, o.reg_m, o.max_iters, o.tol,
                               return_info=True)
        m_r = readout(plan, valid, "colmax")
        post = readout(plan, valid, "posterior")
        diag = {k: info[k] for k in OT_DIAGNOSTICS}
        if o.readout == "posterior":
            return TokenScores(fg=post[..., 1:], bg=post[..., 0], m_r=m_r, posterior=post,
                               column_sums=info["column_sums"], ot=diag)
        return TokenScores(fg=m_r[..., 1:], bg=None, m_r=m_r, posterior=post, column_sums=info["column_sums"], ot=diag)

    def _product_readout(self, aff: Affinities, s_hat: torch.Tensor,
                         valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E(⊙) of rows 0–3 (§7): the affinity Norm(A_s ⊙ A_inv)² (A_s alone without an inverse
        path; squared as ``affinity.square``) (B, N, N), and the class columns of ``s_hat``
        propagated by it, min-maxed per class, absent classes 0 (B, N, C)."""
        affs = [aff.s_raw] + ([aff.inv_raw] if aff.inv_raw is not None else [])
        a = product_affinity(affs, self.cfg.affinity.sinkhorn_rounds, self.cfg.affinity.square)
        return a, minmax_tokens(a @ s_hat[..., 1:]) * valid[:, None, 1:]

    def refined_areas(self, aff: Affinities, s_hat: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Class areas (B, 1 + C) for ``ot.prior: refined`` [choice, issue 17]: the share of
        tokens each column wins in the E(⊙) read-out of this row's affinities (rows 2–3's
        refinement, §7: Norm(A_la ⊙ A_ha)², CAM propagated, min-maxed per class), with the
        anchors' residual background (1 − max_c)^``ot.refined_power``; absent classes 0."""
        fg = self._product_readout(aff, s_hat, valid)[1]
        present = valid[:, None, 1:].bool()
        bg = (1.0 - fg.amax(dim=-1, keepdim=True)).clamp_min(0.0) ** self.cfg.ot.refined_power
        lab = torch.cat([bg, fg.masked_fill(~present, -1.0)], dim=-1).argmax(dim=-1)      # (B, N)
        return F.one_hot(lab, s_hat.shape[-1]).to(s_hat.dtype).mean(dim=-2)

    @torch.no_grad()
    def refine(self, aff: Affinities | None, s_hat: torch.Tensor, valid: torch.Tensor, image: torch.Tensor,
               grid: tuple[int, int], areas: torch.Tensor | None = None, bg_power: float | None = None,
               tokens: TokenScores | None = None, prior_kind: str | None = None) -> Refined:
        """Refined CAMs and pseudo-labels at the size of ``image`` (B, 3, H, W) (normalised RGB,
        for PAR): token scores → bilinear upsampling → background (``refine.bg_power``, or
        ``bg_power``) → PAR → argmax. ``tokens`` skips the token step (ceilings, raw CAM)."""
        tok = tokens if tokens is not None else self.token_scores(aff, s_hat, valid, areas, prior_kind)
        bg_up, fg_up = self.pixel_scores(tok, valid, image.shape[-2:], grid)
        return self.finish(image, bg_up, fg_up, valid, tok, self.cfg.refine.bg_power if bg_power is None else bg_power)

    @staticmethod
    def pixel_scores(tok: TokenScores, valid: torch.Tensor, size, grid: tuple[int, int]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token scores upsampled bilinearly to ``size``: background (B, 1, H, W) before its
        power (``1 − max fg`` when the row has none) and classes (B, C, H, W), absent 0."""
        def up(x):  # (B, N, C) → (B, C, H, W)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *grid)
            return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
        fg_up = up(tok.fg) * valid[:, 1:, None, None]
        bg_up = 1.0 - fg_up.amax(dim=1, keepdim=True) if tok.bg is None else up(tok.bg[..., None])
        return bg_up.clamp_min(0), fg_up

    @torch.no_grad()
    def finish(self, image: torch.Tensor, bg_up: torch.Tensor, fg_up: torch.Tensor, valid: torch.Tensor,
               tok: TokenScores | None, bg_power: float) -> Refined:
        """Background power, PAR on the kept channels, argmax (method.md §5); absent classes -1."""
        seed = torch.cat([bg_up ** bg_power, fg_up], dim=1)
        keep = valid.bool()
        scores = self._par(image, seed, keep) if self.cfg.refine.par_iters > 0 else seed
        scores = scores.masked_fill(~keep[:, :, None, None], -1)
        return Refined(scores=scores, labels=scores.argmax(1), tokens=tok, bg_up=bg_up, fg_up=fg_up)

    @torch.no_grad()
    def finish_powers(self, image: torch.Tensor, bg_up: torch.Tensor, fg_up: torch.Tensor, valid: torch.Tensor,
                      powers: list[float], weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`finish`'s scores for several background powers at the cost of about one.

        PAR is linear and acts per channel with weights that depend on the image only, so
        the class channels are refined once and the background channel once per power
        (all powers stacked as channels). ``weight``: :meth:`par_weights` of ``image``.
        Returns ``bg`` (B, P, H, W), one background channel per power, and ``fg`` (B, C, H, W),
        shared by the powers (absent classes -1), as :func:`dfa.calibrate.labels_for_powers`
        reads them: ``cat([bg[:, i:i+1], fg], 1)`` equals ``finish(..., bg_power=powers[i]).scores``
        (tested).
        """
        keep = valid.bool()
        n_pow = len(powers)
        if self.cfg.refine.par_iters > 0:
            weight = self.par_weights(image) if weight is None else weight
            stack = torch.cat([bg_up ** p for p in powers] + [fg_up], dim=1)
            stack_keep = torch.cat([keep[:, :1].expand(-1, n_pow), keep[:, 1:]], dim=1)
            stack = self._par(image, stack, stack_keep, weight)
        else:
            stack = torch.cat([bg_up ** p for p in powers] + [fg_up], dim=1)
        bg = stack[:, :n_pow].masked_fill(~keep[:, :1, None, None], -1)
        fg = stack[:, n_pow:].masked_fill(~keep[:, 1:, None, None], -1)
        return bg, fg

    def _small(self, image: torch.Tensor) -> torch.Tensor:
        scale = self.cfg.refine.par_scale
        size = image.shape[-2:]
        return image if scale == 1 else F.interpolate(
            image, size=[max(1, round(s * scale)) for s in size], mode="bilinear", align_corners=False)

    def par_weights(self, image: torch.Tensor) -> torch.Tensor:
        """PAR's neighbour weights for ``image`` at ``refine.par_scale`` (reusable across calls)."""
        return self.par.affinity(self._small(image).float())

    def _par(self, image: torch.Tensor, seed: torch.Tensor, keep: torch.Tensor,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """PAR (method.md §5) on the kept channels of the whole batch at once.

        PAR is per channel and absent classes are masked afterwards, so only background +
        present classes are refined: each image's kept channels are gathered first, padded
        to the batch's largest count with absent channels (their output is masked by the
        caller). At ``refine.par_scale`` < 1 PAR runs on the resized image and its output is
        resized back bilinearly, as the anchors' ``down_scale=2``.
        """
        size = seed.shape[-2:]
        count = int(keep.sum(1).max())
        order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :count]  # kept first
        index = order[:, :, None, None].expand(-1, -1, *size)
        small = self._small(image)
        refined = self.par(small, seed.gather(1, index), weight)      # PAR resizes the masks to `small`
        if refined.shape[-2:] != size:
            refined = F.interpolate(refined, size=size, mode="bilinear", align_corners=False)
        return torch.full_like(seed, -1.0).scatter_(1, index, refined)

    # ----------------------------------------------------------------- §3/§4/§6 losses
    def losses(self, logits: torch.Tensor, f_d: torch.Tensor, aff: Affinities, refined: Refined,
               grid: tuple[int, int], active: bool = True, gt_tokens: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
        """L_seg, L_a, L_r for a batch. ``logits``/``f_d`` from :meth:`run_decoder`;
        ``refined`` the (detached) pseudo-labels; ``active`` is False during the warm-up
        (``loss.align_start``), when only L_seg trains; ``gt_tokens`` (B, N) ground-truth
        token labels for the ``teacher`` / ``labels`` ceilings (§11)."""
        cfg, ab, lc = self.cfg, self.cfg.ablation, self.cfg.loss
        labels = refined.labels
        up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        out = {"seg": balanced_seg_loss(up, labels)}
        zero = up.new_zeros(())
        out["align"] = out["rect"] = zero
        ceiling = ab.ceiling
        if active and (ab.align or ab.rectify):
            f_low, f_high = split_frequencies(f_d.float(), **self._box(grid))
            fc = cfg.frequency
            if ab.align:
                if ceiling == "teacher":
                    s_l, ok = same_class(gt_tokens)
                else:
                    s_l, ok = relation(f_low, fc.relation, fc.temperature).detach(), None
                if self.training:
                    self.alpha.copy_(update_alpha(self.alpha, s_l, aff.s.detach(), lc.alpha_momentum,
                                                  "alpha_v1" if lc.align_mask == "alpha_v1" else "alpha"))
                mask = selective_mask(s_l, self.alpha, lc.align_mask, lc.align_keep)
                if ok is not None:
                    mask = mask & ok
                out["align"] = alignment_loss(s_l, aff.s, mask, form=lc.align_form)
            if ab.rectify and aff.inv_raw is not None:
                s_h = relation(f_high, fc.relation, fc.temperature).detach()
                if ceiling == "labels":
                    y = gt_tokens
                else:
                    y = token_labels(labels, grid, self.num_classes, lc.token_labels, refined.scores,
                                     lc.label_margin)
                sz = self.sizes(grid)
                pos, neg = hfar_pairs(s_h, y, grid, sz["radius"], sz["window"], hist_cos=lc.hist_cos,
                                      num_classes=self.num_classes, include_self=lc.hfar_diagonal)
                out["rect"] = rectification_loss(aff.inv_raw, pos, neg, y, lc.rect_balance)
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
        """AdamW groups: the affinity heads at lr × ``head_lr_mult`` (§6 v3), the decoder at lr ×
        ``decoder_lr_mult``, and, with ``train.inv_head_lr_mult`` set, A_ha's head as a third group."""
        c = self.cfg.train
        split = c.inv_head_lr_mult is not None
        own = (self.head_s, self.rel_s) if split else (self.head_s, self.head_inv, self.rel_s, self.rel_inv)
        heads = [p for m in own if m is not None for p in m.parameters()]
        groups = [{"params": heads, "lr": c.lr * c.head_lr_mult},
                  {"params": self.decoder.parameters(), "lr": c.lr * c.decoder_lr_mult}]
        if split:
            inv = [p for m in (self.head_inv, self.rel_inv) if m is not None for p in m.parameters()]
            groups.append({"params": inv, "lr": c.lr * c.inv_head_lr_mult})
        return groups


__all__ = ["DFA", "Decoder", "Affinities", "TokenScores", "OT_DIAGNOSTICS", "Refined", "decoder_areas", "gt_areas",
           "same_class", "minmax_tokens"]
