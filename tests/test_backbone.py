"""The frozen CLIP wrapper: positional-embedding resizing, per-block tokens, attention, S."""
from __future__ import annotations

import open_clip
import pytest
import torch

from dfa.backbone.clip import FrozenCLIP, build_tiny, cosines, resize_pos_embed, tiny_config
from dfa.cam import background_score, class_scores, foreground_scores
from dfa.backbone.dense import DenseExtractor
from dfa.data.classes import VOC_SPEC


def tiny(similarity="maskclip", last_k=2):
    cfg = tiny_config(width=32, layers=3, heads=2, patch_size=8, image_size=32, embed_dim=16, pool="avg",
                      text_width=32, text_layers=1, text_heads=2, context_length=16)
    tok = open_clip.get_tokenizer("dfa-tiny-vit", context_length=16)
    return FrozenCLIP(build_tiny(cfg), tok, last_k=last_k, similarity=similarity)


def test_resize_pos_embed_identity_and_shape():
    pos = torch.randn(1 + 4 * 4, 8)
    assert torch.equal(resize_pos_embed(pos, (4, 4), (4, 4)), pos)
    out = resize_pos_embed(pos, (4, 4), (6, 10))
    assert out.shape == (1 + 60, 8)
    assert torch.equal(out[0], pos[0])  # the class token's embedding is not interpolated


def test_resize_pos_embed_constant_stays_constant():
    pos = torch.ones(1 + 9, 3) * 2.5
    assert torch.allclose(resize_pos_embed(pos, (3, 3), (7, 5)), torch.full((36, 3), 2.5))


def test_resize_pos_embed_linear_ramp_is_interpolated():
    ramp = torch.arange(4.0).view(1, 4, 1).expand(4, 4, 1).reshape(16, 1)  # varies along x only
    out = resize_pos_embed(torch.cat([torch.zeros(1, 1), ramp]), (4, 4), (4, 8))[1:].view(4, 8)
    assert torch.all(out[:, 1:] >= out[:, :-1])          # still monotone along x
    assert torch.allclose(out[0], out[3])                # and constant along y


@pytest.mark.parametrize("similarity", ["maskclip", "surgery", "raw"])
def test_outputs_shapes_any_grid(similarity):
    clip = tiny(similarity)
    f = clip(torch.randn(2, 3, 40, 24))  # 5 x 3 tokens, not the 4 x 4 it was built for
    assert f.grid == (5, 3)
    assert f.tokens.shape == (2, 3, 15, 32)    # every block's patch tokens
    assert f.attn.shape == (2, 2, 15, 15)      # last K blocks, CLS dropped
    assert f.dense.shape == (2, 15, 16)
    assert torch.all(f.attn >= 0)


def test_attention_rows_sum_below_one_after_dropping_cls():
    f = tiny()(torch.randn(1, 3, 32, 32))
    sums = f.attn.sum(-1)
    assert torch.all(sums <= 1 + 1e-5) and torch.all(sums > 0)


def test_per_head_attention_is_what_the_layer_map_averages():
    """``affinity.channels: heads`` (§2 v3): every head of every kept block, CLS dropped; asking for
    them leaves the layer maps (and so rows 0-1) bit for bit as they were."""
    clip = tiny(last_k=2)
    x = torch.randn(2, 3, 40, 24)
    plain, both = clip(x), clip(x, heads=True)
    assert plain.heads is None and both.heads.shape == (2, 2, clip.num_heads, 15, 15) and clip.num_heads == 2
    assert torch.equal(plain.attn, both.attn)
    torch.testing.assert_close(both.heads.mean(2), both.attn, atol=1e-7, rtol=0)
    assert not torch.allclose(both.heads[:, :, 0], both.heads[:, :, 1])      # the heads differ
    spec = VOC_SPEC
    ext = DenseExtractor(clip, spec, ["a photo of a {}."], heads=True)
    f = ext(x)
    assert f.heads.shape == (2, 2, 2, 15, 15) and f.to("cpu").heads.shape == f.heads.shape
    assert DenseExtractor(clip, spec, ["a photo of a {}."])(x).heads is None


def test_block_outputs_match_open_clip_forward():
    """Our block-by-block pass (explicit attention in the last K blocks) equals open_clip's."""
    clip = tiny("raw", last_k=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = clip.visual.transformer(clip.visual._embeds(x))
        ours = clip(x).tokens[:, -1]
    assert torch.allclose(ours, ref[:, 1:], atol=1e-5)


def test_foreground_scores_are_minmax_normalised_per_present_class():
    dense = torch.randn(2, 10, 16)
    text = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    cos = cosines(dense, text)
    assert cos.shape == (2, 10, 3) and cos.abs().max() <= 1 + 1e-6
    present = torch.tensor([[True, False, True], [True, True, True]])
    s = foreground_scores(cos, present)
    assert torch.allclose(s.amax(1), present.float()) and torch.allclose(s.amin(1), torch.zeros(2, 3))


def test_background_scores():
    """cam.background (method.md §1): residual = 1 − max S; prompts = the background prompts'
    share of one joint softmax; prompt_minmax (v1) is high everywhere on a prompt-free image."""
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(2, 30, 3, generator=g) * 0.3
    cos_bg = torch.rand(2, 30, 4, generator=g) * 0.3
    present = torch.tensor([[True, False, False], [True, True, False]])
    res = background_score(cos, cos_bg, present, "residual")
    torch.testing.assert_close(res, 1 - foreground_scores(cos, present).amax(-1))
    # a token far closer to a background prompt than to any present class gets s_bg ≈ 1
    cos_bg[0, 0] = 0.9
    cos[0, 0] = 0.0
    p = background_score(cos, cos_bg, present, "prompts", 100.0)
    assert p[0, 0] > 0.999 and ((p >= 0) & (p <= 1)).all()
    absent_only = cos.clone()
    absent_only[..., 2] = 1.0                                       # an absent class matching everywhere
    torch.testing.assert_close(background_score(absent_only, cos_bg, present, "prompts", 100.0), p)
    # v1: four unrelated prompts, each stretched to [0, 1] → the max is high for most tokens
    noise = torch.rand(1, 200, 4, generator=g)
    v1 = background_score(torch.rand(1, 200, 3, generator=g), noise, present[:1], "prompt_minmax")
    assert v1.mean() > 0.6
    s_hat, valid = class_scores(cos, cos_bg, present, "residual")
    assert s_hat.shape == (2, 30, 4) and valid.tolist() == [[True, True, False, False], [True, True, True, False]]
    with pytest.raises(ValueError):
        background_score(cos, cos_bg[..., :0], present, "prompts")


def test_gradcam_only_for_present_classes():
    ext = DenseExtractor(tiny("gradcam"), VOC_SPEC, ["a clean origami {}."])
    present = torch.zeros(1, 20, dtype=torch.bool)
    present[0, [3, 7]] = True
    f = ext(torch.randn(1, 3, 32, 32), present)
    assert f.cos.shape == (1, 16, 20) and f.cos_bg.shape == (1, 16, 25)
    assert torch.all(f.cos[0, :, ~present[0]] == 0)


def test_text_embeddings_with_synonyms_are_normalised():
    clip = tiny()
    fg, bg = clip.text_embeddings(VOC_SPEC.classes, VOC_SPEC.synonyms, VOC_SPEC.background, ["a clean origami {}."])
    assert fg.shape == (20, 16) and bg.shape == (25, 16)
    assert torch.allclose(fg.norm(dim=-1), torch.ones(20), atol=1e-5)


def test_vit_b16_real_architecture_shapes():
    """The VOC code path: open_clip ViT-B-16 (random weights, no download) at a non-square size."""
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    clip = FrozenCLIP(model, open_clip.get_tokenizer("ViT-B-16"), last_k=8)
    f = clip(torch.randn(1, 3, 160, 128))
    assert f.grid == (10, 8)
    assert f.tokens.shape == (1, 12, 80, 768) and f.attn.shape == (1, 8, 80, 80) and f.dense.shape == (1, 80, 512)


def test_decoder_layers_select_blocks():
    cfg = tiny_config(width=32, layers=3, heads=2, patch_size=8, image_size=32, embed_dim=16, pool="avg",
                      text_width=32, text_layers=1, text_heads=2, context_length=16)
    tok = open_clip.get_tokenizer("dfa-tiny-vit", context_length=16)
    clip = FrozenCLIP(build_tiny(cfg), tok, last_k=2, decoder_layers=[-2, -1])
    full = FrozenCLIP(build_tiny(cfg), tok, last_k=2)
    full.load_state_dict(clip.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(clip(x).tokens, full(x).tokens[:, 1:])


@pytest.mark.parametrize("similarity,layers", [("surgery", None), ("maskclip", [0]), ("raw", [-2, 0])])
def test_decoder_tokens_path_matches_the_full_forward(similarity, layers):
    # The decoder's inference reads FrozenCLIP.decoder_tokens (fused block forwards, blocks after
    # the last kept one skipped): it must give forward()'s tokens up to float rounding, on a
    # grid other than the pretraining one, for any decoder_layers selection.
    cfg = tiny_config(width=32, layers=3, heads=2, patch_size=8, image_size=32, embed_dim=16, pool="avg",
                      text_width=32, text_layers=1, text_heads=2, context_length=16)
    tok = open_clip.get_tokenizer("dfa-tiny-vit", context_length=16)
    torch.manual_seed(0)
    clip = FrozenCLIP(build_tiny(cfg), tok, last_k=2, similarity=similarity, decoder_layers=layers)
    x = torch.randn(2, 3, 40, 48)
    tokens, grid = clip.decoder_tokens(x)
    full = clip(x)
    assert grid == full.grid == (5, 6)
    assert tokens.shape == full.tokens.shape
    torch.testing.assert_close(tokens, full.tokens, rtol=1e-5, atol=1e-5)
    assert not torch.equal(tokens[0], tokens[1])          # per image, not broadcast


def test_dense_extractor_decoder_tokens_match_its_call():
    ext = DenseExtractor(tiny(), VOC_SPEC, ["a photo of a {}."])
    x = torch.randn(1, 3, 32, 32)
    tokens, grid = ext.decoder_tokens(x)
    assert tokens.dtype == torch.float32 and tokens.device == ext.device and grid == (4, 4)
    torch.testing.assert_close(tokens, ext(x).tokens, rtol=1e-5, atol=1e-5)
