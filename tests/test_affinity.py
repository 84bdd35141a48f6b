"""Tests for dfa.affinity (method.md §2)."""
import pytest
import torch

from dfa.affinity import (AffinityHead, inverse_attention, propagate, sinkhorn_normalize,
                          spectral_inverse_literal, square, symmetrize)  # noqa: F401
from tests.references import anchor_norm


def _attention(b=2, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, n, n, generator=g) * 2, dim=-1)


def test_operator_is_identity_minus_w():
    w = _attention()
    out = inverse_attention(w, mode="operator")
    assert torch.equal(out, torch.eye(16) - w)
    # row-stochastic W: the random-walk Laplacian has zero DC gain
    torch.testing.assert_close(out.sum(-1), torch.zeros(2, 16), atol=1e-6, rtol=0)


def test_operator_equals_spectral_literal():
    w = torch.stack([_attention(3, 36, s) for s in range(2)])      # (2, 3, 36, 36)
    torch.testing.assert_close(spectral_inverse_literal(w), inverse_attention(w, mode="operator"),
                               atol=1e-5, rtol=0)


def test_spatial_constant_rows_vanish():
    n = 25
    w = torch.rand(2, n, 1).expand(2, n, n).contiguous()          # constant along each row
    out = inverse_attention(w, mode="spatial", ratio=0.25, grid=(5, 5))
    assert out.shape == w.shape and out.abs().max() < 1e-6


def test_spatial_keeps_high_frequencies():
    i = torch.arange(6)
    board = ((-1.0) ** (i[:, None] + i[None, :])).flatten()         # Nyquist map
    w = board.expand(4, 36, 36).contiguous()
    out = inverse_attention(w, mode="spatial", ratio=0.25, grid=(6, 6))
    torch.testing.assert_close(out, w, atol=1e-5, rtol=0)


def test_spatial_requires_grid():
    w = _attention(1, 16)
    with pytest.raises(ValueError):
        inverse_attention(w, mode="spatial")
    with pytest.raises(ValueError):
        inverse_attention(w, mode="spatial", grid=(3, 5))
    with pytest.raises(ValueError):
        inverse_attention(w, mode="other")


def test_sinkhorn_normalize_symmetric_doubly_stochastic():
    a = torch.sigmoid(torch.randn(3, 30, 30))
    t = sinkhorn_normalize(a, rounds=3)
    torch.testing.assert_close(t, t.transpose(-1, -2))
    assert (t >= 0).all()
    torch.testing.assert_close(t.sum(-1), torch.ones(3, 30), atol=0.05, rtol=0)
    torch.testing.assert_close(t.sum(-2), torch.ones(3, 30), atol=0.05, rtol=0)


def test_symmetrize_square_propagate_properties():
    a = torch.rand(2, 5, 5)
    sym = symmetrize(a)
    torch.testing.assert_close(sym, sym.transpose(1, 2))
    assert torch.equal(symmetrize(sym), sym)                         # idempotent on symmetric input
    w = _attention(2, 7)                                             # row-stochastic
    torch.testing.assert_close(square(w).sum(-1), torch.ones(2, 7))  # still row-stochastic
    const = torch.full((2, 7, 3), 0.4)
    torch.testing.assert_close(propagate(w, const), const)           # a constant CAM stays constant


def test_spatial_high_pass_peaks_on_the_border_of_two_flat_regions():
    """method.md §2 (v2): every query attends uniformly to its own region (a central block or
    the rest of the grid); the high-passed map is largest along the regions' border.

    The FFT sees the grid as periodic, so the regions are chosen without a border across
    the wrap-around (the outer region touches itself there): a split into left and right
    halves would also respond at the grid's outer columns."""
    h, w = 8, 8
    r, c = torch.arange(h * w) // w, torch.arange(h * w) % w
    inner = (r >= 2) & (r <= 5) & (c >= 2) & (c <= 5)
    attn = torch.where(inner[:, None] == inner[None, :], 1.0, 0.0)
    attn = (attn / attn.sum(-1, keepdim=True))[None]                 # (1, 64, 64)
    out = inverse_attention(attn, mode="spatial", ratio=0.25, grid=(h, w)).abs()[0]
    grid = inner.reshape(h, w)
    border = torch.zeros_like(grid)
    border[1:] |= grid[1:] != grid[:-1]
    border[:-1] |= grid[:-1] != grid[1:]
    border[:, 1:] |= grid[:, 1:] != grid[:, :-1]
    border[:, :-1] |= grid[:, :-1] != grid[:, 1:]
    border = border.flatten()
    assert border[out.argmax(-1)].all()                              # every query peaks on the border
    assert (out[:, border].mean(-1) > 2 * out[:, ~border].mean(-1)).all()


def _model(row, **over):
    from dfa.config import load_config
    from dfa.model import DFA
    cfg = load_config(None, [f"ablation.row={row}", "clip.last_k=3", "decoder.width=16", "decoder.layers=1",
                             "decoder.heads=2", *[f"{k}={v}" for k, v in over.items()]])
    return DFA(cfg, num_blocks=2, in_dim=8, num_classes=3).eval()


def _layer_attention(b=2, k=3, grid=(4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    full = torch.softmax(torch.randn(b, k, n + 1, n + 1, generator=g) * 2, -1)
    return full[..., 1:, 1:]                                         # CLS dropped: rows sum < 1


def test_row0_is_the_untrained_attention_affinity():
    """head_init mean: row 0 is Norm(mean_K W) of the renormalised attention, exactly (§2, §7)."""
    attn = _layer_attention()
    aff = _model(0).affinities(attn, (4, 5))
    w = attn / attn.sum(-1, keepdim=True)                            # §1 v2: rows renormalised
    ref = anchor_norm(w.double().mean(1).numpy(), 3)               # float64, from method.md's words
    torch.testing.assert_close(aff.s, torch.from_numpy(ref).float(), atol=1e-6, rtol=1e-5)
    assert aff.inv is None
    v1 = _model(0, **{"affinity.renorm_rows": "false"}).affinities(attn, (4, 5))
    assert not torch.allclose(v1.s, aff.s)                           # the v1 reading differs


def test_mean_init_heads_are_monotone_maps_of_the_layer_mean():
    """head_init mean: A_s head = sigmoid(mean_k log(N·W_k) − 4), inverse head =
    sigmoid(mean_k N·W_inv,k), exactly; with the default init the inverse head is a
    near-constant map."""
    from dfa.affinity import renormalize_rows
    attn = _layer_attention()
    n = attn.shape[-1]
    model = _model(4)
    aff = model.affinities(attn, (4, 5))
    w = renormalize_rows(attn)
    expect_s = symmetrize(torch.sigmoid(torch.log((w * n).clamp_min(1e-4)).mean(1) - 4.0))
    torch.testing.assert_close(aff.s_raw, expect_s, atol=1e-6, rtol=1e-5)
    w_inv = inverse_attention(w, mode="spatial", ratio=0.25, grid=(4, 5))
    expect_inv = symmetrize(torch.sigmoid((w_inv * n).mean(1)))
    torch.testing.assert_close(aff.inv_raw, expect_inv, atol=1e-6, rtol=1e-5)


def test_affinity_head_shape_range_and_grad():
    head = AffinityHead(in_layers=8, hidden=32)
    x = torch.rand(2, 8, 12, 12)
    y = head(x)
    assert y.shape == (2, 12, 12)
    assert (y > 0).all() and (y < 1).all()
    y.sum().backward()
    assert head.fc1.weight.grad is not None
    with pytest.raises(ValueError):
        head(torch.rand(2, 4, 12, 12))


def test_affinity_head_equals_conv_form():
    head = AffinityHead(in_layers=4, hidden=8)
    x = torch.randn(2, 4, 6, 6)
    ref = torch.sigmoid(head.fc2(head.act(head.fc1(x)))).squeeze(1)
    torch.testing.assert_close(head(x), ref, atol=1e-6, rtol=1e-5)


def test_per_head_renormalisation_keeps_the_layer_map_as_the_head_mean():
    """§1 per head (``affinity.channels: heads``): the mean over a layer's heads is the layer's
    renormalised map, so a head that averages its channels sees what the ``layers`` head sees;
    a per-head renormalisation (each head to sum 1) would not."""
    from dfa.affinity import renormalize_heads, renormalize_rows
    g = torch.Generator().manual_seed(4)
    full = torch.softmax(torch.randn(2, 3, 4, 13, 13, generator=g) * 3, -1)   # (B, K, H, 1 + N, 1 + N)
    heads = full[..., 1:, 1:]
    out = renormalize_heads(heads)
    layer = renormalize_rows(heads.mean(2))
    torch.testing.assert_close(out.mean(2), layer, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer.sum(-1), torch.ones(2, 3, 12))
    assert not torch.allclose(renormalize_rows(heads).mean(2), layer, atol=1e-3)
    assert not torch.allclose(out.sum(-1), torch.ones(2, 3, 4, 12), atol=1e-3)   # single heads keep their mass


def test_head_shift_is_relative_and_zero_only_without_change():
    from dfa.affinity import head_shift
    g = torch.Generator().manual_seed(5)
    a = sinkhorn_normalize(torch.rand(3, 10, 10, generator=g) + 0.1)
    assert torch.equal(head_shift(a, a), torch.zeros(3))
    b = sinkhorn_normalize(torch.rand(3, 10, 10, generator=g) + 0.1)
    s = head_shift(b, a)
    assert s.shape == (3,) and (s > 0).all()
    torch.testing.assert_close(head_shift(7 * b, 7 * a), s)                 # relative to the untrained mean
    torch.testing.assert_close(head_shift(1.5 * a, a), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="one shape"):
        head_shift(a, a[:, :5])

