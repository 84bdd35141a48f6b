"""Tests for dfa.refine (method.md §5, §7)."""
import math

import pytest
import torch
import torch.nn.functional as F

from dfa.refine import PAR, product_refine
from tests.references import anchor_norm, minmax_tokens


def test_product_refine_matches_a_float64_reading_of_the_spec():
    """E(⊙) (§7): Norm(A1 ⊙ A2), squared, applied to the CAM, each class min-max normalised;
    the reference is numpy float64 from method.md's words (tests/references.py), not the module."""
    g = torch.Generator().manual_seed(0)
    a1 = torch.sigmoid(torch.randn(2, 16, 16, generator=g))
    a2 = torch.sigmoid(torch.randn(2, 16, 16, generator=g))
    cam = torch.rand(2, 16, 3, generator=g)
    out = product_refine([a1, a2], cam, rounds=3, square=True)
    aff = anchor_norm(a1.double().numpy() * a2.double().numpy(), rounds=3)
    ref = minmax_tokens(aff @ aff @ cam.double().numpy())
    torch.testing.assert_close(out, torch.from_numpy(ref).float(), atol=1e-5, rtol=1e-4)
    # identity affinities leave the tokens where they are: the output is the CAM, min-max normalised
    eye = torch.eye(16).expand(2, 16, 16)
    torch.testing.assert_close(product_refine([eye, eye], cam), torch.from_numpy(minmax_tokens(cam.numpy())).float())
    assert out.amin(1).abs().max() < 1e-6 and (out.amax(1) - 1).abs().max() < 1e-6
    single = product_refine([a1], cam, square=False)
    assert single.shape == (2, 16, 3)
    with pytest.raises(ValueError):
        product_refine([], cam)


def _anchor_par(image, masks, dilations, iters, w1=0.3, w2=0.01):
    """Reference written from the anchors' description: stacked neighbours via conv."""
    kernel = torch.zeros(8, 1, 3, 3)
    for k, (r, c) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]):
        kernel[k, 0, r, c] = 1

    def neighbours(x):
        b, c, h, w = x.shape
        out = []
        for d in dilations:
            xp = F.pad(x, [d] * 4, mode="replicate").reshape(b * c, 1, h + 2 * d, w + 2 * d)
            out.append(F.conv2d(xp, kernel, dilation=d).view(b, c, 8, h, w))
        return torch.cat(out, 2)

    pos = torch.cat([torch.tensor([math.sqrt(2), 1, math.sqrt(2), 1, 1, math.sqrt(2), 1,
                                   math.sqrt(2)]) * d for d in dilations])
    nb = neighbours(image)
    aff = -((nb - image[:, :, None]).abs() / (nb.std(2, keepdim=True) + 1e-8) / w1) ** 2
    aff = aff.mean(1, keepdim=True)
    pos_aff = -(pos / (pos.std() + 1e-8) / w1) ** 2
    aff = F.softmax(aff, 2) + w2 * F.softmax(pos_aff, 0)[None, None, :, None, None]
    for _ in range(iters):
        masks = (neighbours(masks) * aff).sum(2)
    return masks


def test_par_matches_anchor_form():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 20, 24, generator=g) * 255
    masks = torch.rand(2, 4, 20, 24, generator=g)
    par = PAR(dilations=(1, 2, 4), iters=5, renormalize=False)
    ref = _anchor_par(image, masks, (1, 2, 4), 5)
    torch.testing.assert_close(par(image, masks), ref, atol=1e-5, rtol=1e-5)
    par_n = PAR(dilations=(1, 2, 4), iters=5)
    torch.testing.assert_close(par_n(image, masks), ref / 1.01 ** 5, atol=1e-5, rtol=1e-5)


def test_par_preserves_constant_mask():
    image = torch.rand(1, 3, 32, 32) * 255
    masks = torch.full((1, 3, 32, 32), 0.4)
    out = PAR()(image, masks)
    torch.testing.assert_close(out, masks, atol=1e-5, rtol=0)


def test_par_does_not_bleed_across_colour_edge():
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 255.0                                  # strong vertical edge
    image = image + torch.rand(1, 3, 32, 32)                 # a little texture
    masks = torch.zeros(1, 1, 32, 32)
    masks[..., :16] = 1.0
    out = PAR(dilations=(1, 2, 4, 8), iters=10)(image, masks)
    flat = PAR(dilations=(1, 2, 4, 8), iters=10)(torch.zeros_like(image), masks)
    assert out[..., 18:].max() < 0.1                         # right of the edge stays low
    assert out[..., :14].min() > 0.9                         # left stays high
    assert flat[..., 16:18].mean() > 0.2                     # without the edge it spreads


def test_par_resizes_masks():
    out = PAR(iters=2)(torch.rand(1, 3, 16, 16), torch.rand(1, 2, 8, 8))
    assert out.shape == (1, 2, 16, 16)


def _model_par(scale: float, iters: int = 3):
    from dfa.config import load_config
    from dfa.model import DFA
    from tests.conftest import REPO

    cfg = load_config(REPO / "params.yaml", [f"refine.par_scale={scale}", f"refine.par_iters={iters}",
                                             "refine.par_dilations=[1,2]"], smoke=True)
    return DFA(cfg, num_blocks=2, in_dim=16, num_classes=6)


def test_batched_par_equals_per_image_par_on_kept_channels():
    """DFA._par gathers each image's kept channels (padding to the batch's largest count) and
    runs PAR once for the batch: same as PAR per image on its own kept channels."""
    g = torch.Generator().manual_seed(0)
    model = _model_par(1.0)
    image, seed = torch.rand(3, 3, 24, 24, generator=g), torch.rand(3, 6, 24, 24, generator=g)
    keep = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 0, 1], [1, 0, 0, 0, 1, 0]], dtype=torch.bool)
    out = model._par(image, seed, keep)
    for i in range(3):
        idx = keep[i].nonzero()[:, 0]
        ref = model.par(image[i:i + 1], seed[i:i + 1, idx])[0]
        assert torch.allclose(out[i, idx], ref, atol=1e-6)


def test_half_resolution_par_runs_on_the_resized_image():
    g = torch.Generator().manual_seed(1)
    model = _model_par(0.5)
    image, seed = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 6, 32, 32, generator=g)
    keep = torch.ones(2, 6, dtype=torch.bool)
    out = model._par(image, seed, keep)
    assert out.shape == seed.shape
    small = F.interpolate(image, size=[16, 16], mode="bilinear", align_corners=False)
    ref = F.interpolate(model.par(small, seed), size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(out, ref, atol=1e-6)
