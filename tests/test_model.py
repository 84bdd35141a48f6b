"""The model's training signals (method.md §3, §4, §6): which parameters each loss reaches,
and that the decoder learns what it is taught."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfa.config import load_config
from dfa.model import DFA, Refined

from tests.conftest import module_copy


@pytest.fixture(scope="module")
def smoke_workspace(smoke_workspace, tmp_path_factory) -> Path:
    """This module runs stages inside the workspace: its own copy of the session's (conftest)."""
    return module_copy(smoke_workspace, tmp_path_factory)


def _model(**over):
    cfg = load_config(None, ["clip.last_k=2", "decoder.width=16", "decoder.layers=1", "decoder.heads=2",
                             "decoder.dropout=0.0", *[f"{k}={v}" for k, v in over.items()]])
    return DFA(cfg, num_blocks=2, in_dim=12, num_classes=4, num_heads=3).train()


def _batch(b=2, grid=(6, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    tokens = torch.randn(b, 2, n, 12, generator=g)
    attn = torch.softmax(torch.randn(b, 2, n, n, generator=g) * 3, -1)
    labels = torch.zeros(b, 48, 48, dtype=torch.long)
    labels[:, :, 24:] = 1                                   # two clean regions per image
    labels[:, 32:, :16] = 3
    scores = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    scores = scores + 0.1 * torch.rand(b, 4, 48, 48, generator=g)
    return tokens, attn, labels, scores


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    def norm(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)
    return {"head_s": norm(model.head_s), "head_inv": norm(model.head_inv), "decoder": norm(model.decoder)}


def test_each_loss_reaches_only_its_own_parameters():
    """Through DFA.losses: L_a reaches the A_s head only (S_l is a detached teacher), L_r the
    inverse head only, L_seg the decoder only."""
    model = _model()
    tokens, attn, labels, scores = _batch()
    grid = (6, 6)
    aff = model.affinities(attn, grid)
    logits, f_d = model.run_decoder(tokens, grid)
    refined = Refined(scores=scores, labels=labels, tokens=None, bg_up=None, fg_up=None)
    out = model.losses(logits, f_d, aff, refined, grid, active=True)
    assert out["align"] > 0 and out["rect"] > 0
    g_align = _grads(model, out["align"])
    assert g_align["head_s"] > 0 and g_align["head_inv"] == 0 and g_align["decoder"] == 0
    aff = model.affinities(attn, grid)
    logits, f_d = model.run_decoder(tokens, grid)
    out = model.losses(logits, f_d, aff, refined, grid, active=True)
    g_rect = _grads(model, out["rect"])
    assert g_rect["head_inv"] > 0 and g_rect["head_s"] == 0 and g_rect["decoder"] == 0
    aff = model.affinities(attn, grid)
    logits, f_d = model.run_decoder(tokens, grid)
    out = model.losses(logits, f_d, aff, refined, grid, active=True)
    g_seg = _grads(model, out["seg"])
    assert g_seg["decoder"] > 0 and g_seg["head_s"] == 0 and g_seg["head_inv"] == 0


def test_bilinear_head_starts_as_the_pointwise_head_and_learns_through_the_token_relation():
    """``affinity.head: bilinear``: the token channel starts silent (the untrained affinities are
    the spec's, bit for bit), L_a reaches its weights, and after one step the projection learns."""
    tokens, attn, labels, scores = _batch()
    grid = (6, 6)
    torch.manual_seed(0)
    plain = _model().affinities(attn, grid, tokens=tokens)
    torch.manual_seed(0)
    model = _model(**{"affinity.head": "bilinear", "affinity.rank": 5})
    bil = model.affinities(attn, grid, tokens=tokens)
    for a, b in ((plain.s_raw, bil.s_raw), (plain.inv_raw, bil.inv_raw)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    rel = model.rel_s(tokens[:, -1]).detach()
    assert rel.shape == (2, 1, 36, 36) and float(rel.abs().max()) <= 1 + 1e-5
    torch.testing.assert_close(rel, rel.transpose(-1, -2))
    refined = Refined(scores=scores, labels=labels, tokens=None, bg_up=None, fg_up=None)
    opt = torch.optim.SGD(model.trainable_groups(), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        logits, f_d = model.run_decoder(tokens, grid)
        out = model.losses(logits, f_d, model.affinities(attn, grid, tokens=tokens), refined, grid, active=True)
        (out["align"] + out["rect"]).backward()
        assert float(model.head_s.fc1.weight.grad[:, -1].abs().sum()) > 0        # the silent channel learns
        assert float(model.head_inv.fc1.weight.grad[:, -1].abs().sum()) > 0
        if step == 1:                                                             # …and then P does
            assert float(model.rel_s.proj.weight.grad.abs().sum()) > 0
            assert float(model.rel_inv.proj.weight.grad.abs().sum()) > 0
        opt.step()
    with pytest.raises(ValueError, match="needs the patch tokens"):
        model.affinities(attn, grid)


def test_head_lr_mult_scales_the_heads_lr_only():
    base = _model(**{"train.lr": 0.001, "affinity.head": "bilinear"}).trainable_groups()
    fast = _model(**{"train.lr": 0.001, "affinity.head": "bilinear", "train.head_lr_mult": 25}).trainable_groups()
    assert [g["lr"] for g in base] == pytest.approx([0.001, 0.01])
    assert [g["lr"] for g in fast] == pytest.approx([0.025, 0.01])
    model = _model(**{"affinity.head": "bilinear"})
    heads = {id(p) for p in model.trainable_groups()[0]["params"]}
    assert {id(p) for m in (model.head_s, model.head_inv, model.rel_s, model.rel_inv) for p in m.parameters()} == heads


def test_inv_head_lr_mult_gives_a_ha_its_own_lr():
    model = _model(**{"train.lr": 0.001, "affinity.head": "bilinear", "train.head_lr_mult": 25,
                      "train.inv_head_lr_mult": 1})
    groups = model.trainable_groups()
    assert [g["lr"] for g in groups] == pytest.approx([0.025, 0.01, 0.001])
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0] == {id(p) for m in (model.head_s, model.rel_s) for p in m.parameters()}
    assert ids[2] == {id(p) for m in (model.head_inv, model.rel_inv) for p in m.parameters()}
    assert not (ids[0] & ids[2])
    with pytest.raises(Exception, match="inv_head_lr_mult"):
        _model(**{"train.inv_head_lr_mult": 0})


def test_warm_up_switches_lfaa_and_hfar_off():
    model = _model()
    tokens, attn, labels, scores = _batch()
    aff = model.affinities(attn, (6, 6))
    logits, f_d = model.run_decoder(tokens, (6, 6))
    refined = Refined(scores=scores, labels=labels, tokens=None, bg_up=None, fg_up=None)
    alpha = float(model.alpha)
    out = model.losses(logits, f_d, aff, refined, (6, 6), active=False)
    assert out["align"] == 0 and out["rect"] == 0 and float(model.alpha) == alpha
    assert torch.equal(out["total"], out["seg"])


def test_teacher_and_labels_ceilings_read_the_ground_truth():
    """The §11 ceilings replace S_l / Y by ground-truth token labels: with a teacher that
    agrees with the student's own pairs the alignment is smaller than with a contradicting one."""
    tokens, attn, labels, scores = _batch()
    grid = (6, 6)
    gt = torch.zeros(2, 36, dtype=torch.long)
    gt[:, 18:] = 1
    refined = Refined(scores=scores, labels=labels, tokens=None, bg_up=None, fg_up=None)
    model = _model(**{"ablation.ceiling": "teacher"})
    aff = model.affinities(attn, grid)
    logits, f_d = model.run_decoder(tokens, grid)
    out = model.losses(logits, f_d, aff, refined, grid, active=True, gt_tokens=gt)
    assert out["align"] > 0
    lab = _model(**{"ablation.ceiling": "labels"})
    aff = lab.affinities(attn, grid)
    logits, f_d = lab.run_decoder(tokens, grid)
    ignored = torch.full_like(gt, 255)
    assert lab.losses(logits, f_d, aff, refined, grid, True, ignored)["rect"] == 0    # no labelled pair
    assert lab.losses(logits, f_d, aff, refined, grid, True, gt)["rect"] > 0


@pytest.mark.parametrize("steps", [80])
def test_decoder_trained_on_ground_truth_beats_one_trained_on_noise(smoke_workspace, monkeypatch, steps):
    """L_seg teaches the decoder: trained on the cached views' ground truth it segments
    held-out views far better than trained on shuffled labels (same images, same steps)."""
    monkeypatch.chdir(smoke_workspace)
    from dfa.features_cache import CachedViews
    from dfa.metrics import confusion_matrix, miou
    from dfa.stages.training import Batches  # noqa: F401  (the cache's reader)

    cfg = load_config("params.yaml", ["tracking.enabled=false"], smoke=True)
    views = CachedViews(cfg.cache.dir)
    n = len(views)
    train_idx, test_idx = list(range(0, n - 16)), list(range(n - 16, n))
    data = views.batch(list(range(n)))
    masks = data["mask"].long()
    grid = tuple(views.meta["grid"])
    scores = {}
    for kind in ("truth", "noise"):
        torch.manual_seed(0)
        model = DFA(cfg, data["tokens"].shape[1], data["tokens"].shape[-1], len(views.meta["classes"]) + 1)
        opt = torch.optim.AdamW(model.decoder.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(1)
        target = masks if kind == "truth" else masks[torch.randperm(n, generator=g)]
        for _ in range(steps):
            idx = torch.tensor(train_idx)[torch.randint(len(train_idx), (8,), generator=g)]
            logits, _ = model.run_decoder(data["tokens"][idx].float(), grid)
            up = torch.nn.functional.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
            loss = torch.nn.functional.cross_entropy(up, target[idx], ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            logits = model.segment(data["tokens"][test_idx].float(), grid)
            pred = torch.nn.functional.interpolate(logits, size=masks.shape[-2:], mode="bilinear").argmax(1)
        scores[kind] = 100 * miou(confusion_matrix(pred, masks[test_idx], model.num_classes))[0]
    assert scores["truth"] > max(scores["noise"] + 5, 1.5 * scores["noise"]), scores


def test_finish_powers_equals_finish_for_each_background_power():
    """Calibration refines the class channels once and the background once per power (PAR
    is linear and per channel): the same scores as a full ``finish`` at every power."""
    model = _model(**{"refine.par_iters": 4, "refine.par_scale": 0.5}).eval()
    g = torch.Generator().manual_seed(3)
    image = torch.randn(2, 3, 32, 32, generator=g)
    bg_up = torch.rand(2, 1, 32, 32, generator=g)
    fg_up = torch.rand(2, 3, 32, 32, generator=g)
    valid = torch.tensor([[True, True, False, True], [True, False, True, False]])
    fg_up = fg_up * valid[:, 1:, None, None]
    powers = [0.25, 1.0, 3.0]
    bg, fg = model.finish_powers(image, bg_up, fg_up, valid, powers)
    assert bg.shape[1] == len(powers)
    for i, p in enumerate(powers):
        scores = torch.cat([bg[:, i:i + 1], fg], dim=1)
        torch.testing.assert_close(scores, model.finish(image, bg_up, fg_up, valid, None, p).scores,
                                   atol=1e-5, rtol=1e-5)


# --- §2 v3: every head as a channel; §6 v3: short schedules and head_shift ----------------

def _per_head(b=2, k=2, h=3, grid=(6, 6), seed=0):
    """Per-head attention (B, K, H, N, N) of K blocks, CLS dropped, and its head mean (B, K, N, N)
    computed as the backbone does (mean over the heads, then the CLS row and column dropped)."""
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    full = torch.softmax(torch.randn(b, k, h, n + 1, n + 1, generator=g) * 3, -1)
    return full.mean(2)[..., 1:, 1:], full[..., 1:, 1:]


def _scores(b=2, n=36, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, 4, generator=g), torch.tensor([[True, True, False, True], [True, False, True, True]])


@pytest.mark.parametrize("row", [0, 1])
def test_channels_heads_leaves_rows_0_and_1_bit_identical(row):
    """``affinity.channels: heads`` changes nothing in the untrained rows (§2 v3): the same
    affinities and the same refined token scores, bit for bit, on a random case."""
    attn, heads = _per_head()
    s_hat, valid = _scores()
    out = {}
    for channels in ("layers", "heads"):
        torch.manual_seed(0)
        model = _model(**{"ablation.row": row, "affinity.channels": channels}).eval()
        aff = model.affinities(attn, (6, 6), heads=heads if channels == "heads" else None)
        out[channels] = (aff, model.token_scores(aff, s_hat, valid))
    (a, ta), (b, tb) = out["layers"], out["heads"]
    assert torch.equal(a.s, b.s) and torch.equal(ta.fg, tb.fg)
    assert (a.inv is None) == (row == 0) and (row == 0 or torch.equal(a.inv, b.inv))


def test_channels_heads_feeds_k_times_h_maps_and_the_mean_init_averages_them_all():
    """A row that trains reads every head (K·H channels). The ``mean`` init averages all of them;
    with the per-head §1 renormalisation that is the layer mean, so the untrained inverse head
    equals the ``layers`` one (up to rounding); the A_s head (a geometric mean) may differ."""
    attn, heads = _per_head()
    torch.manual_seed(0)
    lay = _model(**{"ablation.row": 3})
    hed = _model(**{"ablation.row": 3, "affinity.channels": "heads"})
    assert hed.uses_heads and not lay.uses_heads
    assert hed.head_s.fc1.weight.shape[1] == hed.head_inv.fc1.weight.shape[1] == 2 * 3
    a, b = lay.affinities(attn, (6, 6)), hed.affinities(attn, (6, 6), heads=heads)
    torch.testing.assert_close(b.inv_raw, a.inv_raw, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="per-head attention"):
        hed.affinities(attn, (6, 6))
    with pytest.raises(ValueError, match="num_heads"):
        DFA(hed.cfg, 2, 12, 4)


@pytest.mark.parametrize("channels", ["layers", "heads"])
def test_heads_move_measurably_more_at_a_higher_head_lr_mult(channels):
    """§6 v3: over the same few AdamW steps on the same batch, the heads' affinities move from
    their untrained version at ``train.head_lr_mult`` 1 (> 0), and several times more at 10."""
    from dfa.affinity import head_shift
    tokens, _, labels, scores = _batch()
    attn, heads = _per_head()
    grid = (6, 6)
    refined = Refined(scores=scores, labels=labels, tokens=None, bg_up=None, fg_up=None)

    def shift(mult):
        torch.manual_seed(0)
        model = _model(**{"train.head_lr_mult": mult, "affinity.channels": channels})
        ref = model.untrained()
        at_init = {k: v.detach() for k, v in model.row_affinities(model.affinities(attn, grid, heads=heads)).items()}
        opt = torch.optim.AdamW(model.trainable_groups(), weight_decay=0.01)
        for _ in range(8):
            opt.zero_grad()
            logits, f_d = model.run_decoder(tokens, grid)
            out = model.losses(logits, f_d, model.affinities(attn, grid, heads=heads), refined, grid, active=True)
            out["total"].backward()
            opt.step()
        with torch.no_grad():
            now, init = (m.row_affinities(m.affinities(attn, grid, heads=heads)) for m in (model, ref))
        for k in init:                                   # the reference is the model at step 0, exactly
            assert torch.equal(init[k], at_init[k])
        return {k: float(head_shift(now[k], init[k]).mean()) for k in now}

    slow, fast = shift(1.0), shift(10.0)
    assert set(slow) == {"head_shift", "head_shift_ha"}      # row 4: A_la and A_ha
    for k in slow:
        assert slow[k] > 1e-4 and fast[k] > 4 * slow[k], (k, slow, fast)


# --- ot.prior: refined (issue 17 stretch) ------------------------------------------------

def test_refined_areas_count_the_e_product_readout_by_hand():
    """Two blocks of tokens that relate only within themselves: the E(⊙) read-out spreads each
    block's CAM inside it, so the areas are the blocks' sizes (independent of the raw CAM's own
    argmax, which here picks class 1 on a third of block 2); absent classes get 0; the
    background power moves tokens between background and class."""
    from dfa.model import Affinities
    model = _model(**{"ablation.row": 4, "ot.prior": "refined"}).eval()
    n = 12
    block = torch.zeros(1, n, n)
    block[0, :8, :8] = 1.0
    block[0, 8:, 8:] = 1.0
    aff = Affinities(block, block, block.clone(), block)
    s_hat = torch.zeros(1, n, 4)                      # [bg | 3 classes]
    s_hat[0, :8, 1] = 1.0                             # class 0 (column 1) on block 1
    s_hat[0, 8:, 1] = torch.tensor([0.0, 0.0, 0.0, 0.9])   # one token of block 2 lights class 0
    s_hat[0, 8:, 2] = 0.5                             # class 1 (column 2) on block 2
    s_hat[0, 0, 2] = 0.0
    valid = torch.tensor([[True, True, True, False]])
    areas = model.refined_areas(aff, s_hat, valid)
    assert areas.shape == (1, 4) and torch.isclose(areas.sum(), torch.tensor(1.0))
    assert areas[0, 3] == 0                           # absent class
    assert torch.isclose(areas[0, 1], torch.tensor(8 / 12)) and torch.isclose(areas[0, 2], torch.tensor(4 / 12))
    # a CAM flat at the minimum of its class is background at any power: block 2 under class 0
    s_hat2 = s_hat.clone()
    s_hat2[0, 8:, 2] = 0.0
    areas2 = model.refined_areas(aff, s_hat2, valid)
    assert torch.isclose(areas2[0, 0], torch.tensor(4 / 12)) and torch.isclose(areas2[0, 1], torch.tensor(8 / 12))
    # the OT row uses them: its prior differs from the uniform one on this image
    from dfa.ot import prior
    b_ref = prior("refined", s_hat, valid, model.cfg.ot.prior_mix, areas=areas)
    assert not torch.allclose(b_ref, prior("uniform", s_hat, valid))
    # and the OT row reads them through token_scores: other scores than with the uniform prior
    uni = _model(**{"ablation.row": 4, "ot.prior": "uniform"}).eval()
    tok_r = model.token_scores(aff, s_hat, valid)
    tok_u = uni.token_scores(aff, s_hat, valid)
    assert torch.isfinite(tok_r.fg).all() and not torch.allclose(tok_r.fg, tok_u.fg)
