"""The model's training signals (method.md §3, §4, §6): which parameters each loss reaches,
and that the decoder learns what it is taught."""
from __future__ import annotations

import pytest
import torch

from dfa.config import load_config
from dfa.model import DFA, Refined


def _model(**over):
    cfg = load_config(None, ["clip.last_k=2", "decoder.width=16", "decoder.layers=1", "decoder.heads=2",
                             "decoder.dropout=0.0", *[f"{k}={v}" for k, v in over.items()]])
    return DFA(cfg, num_blocks=2, in_dim=12, num_classes=4).train()


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
    fast = model.finish_powers(image, bg_up, fg_up, valid, powers)
    for p, scores in zip(powers, fast):
        torch.testing.assert_close(scores, model.finish(image, bg_up, fg_up, valid, None, p).scores,
                                   atol=1e-5, rtol=1e-5)
