"""Tests for dfa.frequency (method.md §3, §4)."""
import pytest
import torch

from dfa.frequency import low_pass, low_pass_mask, relation, split_frequencies


def _reference_low(x, ratio):
    """The literal route: fftshift, centred box, ifftshift, ifft2, real part."""
    h, w = x.shape[-2:]
    sh, sw = max(1, round(ratio * h)), max(1, round(ratio * w))
    box = torch.zeros(h, w, dtype=x.dtype)
    box[h // 2 - sh // 2: h // 2 - sh // 2 + sh, w // 2 - sw // 2: w // 2 - sw // 2 + sw] = 1
    mask = torch.fft.ifftshift(box)
    return torch.fft.ifft2(mask * torch.fft.fft2(x)).real


@pytest.mark.parametrize("h,w,ratio", [(20, 20, 0.25), (20, 20, 0.5), (7, 9, 0.3), (1, 5, 0.4)])
def test_mask_box(h, w, ratio):
    m = low_pass_mask(h, w, ratio)
    assert m.shape == (h, w) and m[0, 0] == 1
    shifted = torch.fft.fftshift(m)
    sh, sw = max(1, round(ratio * h)), max(1, round(ratio * w))
    assert int(m.sum()) == sh * sw
    rows = shifted.sum(1).nonzero().flatten()
    assert rows.min() <= h // 2 <= rows.max()       # centred on DC


def test_mask_ratio_one_and_bad_ratio():
    assert torch.equal(low_pass_mask(6, 5, 1.0), torch.ones(6, 5))
    with pytest.raises(ValueError):
        low_pass_mask(4, 4, 0.0)
    with pytest.raises(ValueError):
        low_pass_mask(4, 4, 1.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,ratio",
                         [((2, 8, 20, 20), 0.25), ((3, 6, 5), 0.5), ((4, 7, 8), 0.35)])
def test_split_exact_and_matches_literal(dtype, shape, ratio):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype)
    low, high = split_frequencies(x, ratio)
    # exactness: high is the residual, and the sum is x to within one rounding
    assert torch.equal(x - low, high)
    ulp = torch.finfo(dtype).eps * torch.maximum(low.abs(), high.abs()).clamp_min(1e-30)
    assert bool(((low + high) - x).abs().le(ulp).all())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(low, _reference_low(x, ratio), atol=tol, rtol=0)


def test_constant_is_all_low():
    x = torch.full((2, 3, 20, 20), 1.7)
    low, high = split_frequencies(x, 0.25)
    assert high.abs().max() < 1e-5
    torch.testing.assert_close(low, x)


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.9])
def test_checkerboard_is_all_high(ratio):
    i = torch.arange(20)
    x = ((-1.0) ** (i[:, None] + i[None, :])).expand(2, 20, 20).contiguous()
    low, high = split_frequencies(x, ratio)
    assert low.abs().max() < 1e-5
    torch.testing.assert_close(high, x)


def test_ratio_one_all_low():
    x = torch.randn(2, 4, 6, 6)
    low, high = split_frequencies(x, 1.0)
    assert torch.equal(low, x) and torch.equal(high, torch.zeros_like(x))


def test_low_pass_gradient():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    low_pass(x, 0.25).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_relation_modes():
    torch.manual_seed(0)
    f = torch.randn(2, 16, 4, 5)
    raw = relation(f, "raw")
    t = f.flatten(2)
    torch.testing.assert_close(raw, torch.sigmoid(t.transpose(1, 2) @ t))
    cen = relation(f, "centred")
    assert cen.shape == (2, 20, 20)
    torch.testing.assert_close(cen, cen.transpose(1, 2))
    tn = torch.nn.functional.normalize(t, dim=1)
    cos = tn.transpose(1, 2) @ tn
    torch.testing.assert_close(cen, torch.sigmoid(3 * (cos - cos.mean((1, 2), keepdim=True))))
    # centred does not saturate even for large features
    big = relation(100 * f, "centred")
    assert big.min() > 0.01 and big.max() < 0.99
    with pytest.raises(ValueError):
        relation(f, "nope")
