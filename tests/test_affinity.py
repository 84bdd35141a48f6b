"""Tests for dfa.affinity (method.md §2)."""
import pytest
import torch

from dfa.affinity import (AffinityHead, inverse_attention, propagate, sinkhorn_normalize,
                          spectral_inverse_literal, square, symmetrize)


def _attention(b=2, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, n, n, generator=g) * 2, dim=-1)


def test_operator_is_identity_minus_w():
    w = _attention()
    out = inverse_attention(w)
    assert torch.equal(out, torch.eye(16) - w)
    # row-stochastic W: the random-walk Laplacian has zero DC gain
    torch.testing.assert_close(out.sum(-1), torch.zeros(2, 16), atol=1e-6, rtol=0)


def test_operator_equals_spectral_literal():
    w = torch.stack([_attention(3, 36, s) for s in range(2)])      # (2, 3, 36, 36)
    torch.testing.assert_close(spectral_inverse_literal(w), inverse_attention(w),
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


def test_symmetrize_square_propagate():
    a = torch.rand(2, 5, 5)
    assert torch.equal(symmetrize(a), 0.5 * (a + a.transpose(1, 2)))
    torch.testing.assert_close(square(a), a @ a)
    cam = torch.rand(2, 5, 3)
    torch.testing.assert_close(propagate(a, cam), torch.bmm(a, cam))


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
