"""Tests for dfa.frequency (method.md §3, §4)."""
import pytest
import torch

from dfa.frequency import box_width, low_pass, low_pass_mask, relation, split_frequencies


def _reference_low(x, ratio, rule="odd"):
    """The literal route: fftshift, centred box, ifftshift, ifft2, real part.

    ``odd``: keep |k| <= m per axis, m = max(1, round(ratio*n/2)); ``v1``: a centred
    max(1, round(ratio*n)) box after fftshift (asymmetric on an even width)."""
    h, w = x.shape[-2:]
    box = torch.zeros(h, w, dtype=x.dtype)
    if rule == "v1":
        sh, sw = max(1, round(ratio * h)), max(1, round(ratio * w))
        box[h // 2 - sh // 2: h // 2 - sh // 2 + sh, w // 2 - sw // 2: w // 2 - sw // 2 + sw] = 1
    else:
        for y in range(h):
            for xx in range(w):
                if abs(y - h // 2) <= max(1, round(ratio * h / 2)) and abs(xx - w // 2) <= max(1, round(ratio * w / 2)):
                    box[y, xx] = 1
    mask = torch.fft.ifftshift(box)
    return torch.fft.ifft2(mask * torch.fft.fft2(x)).real


@pytest.mark.parametrize("n,width", [(8, 3), (16, 5), (20, 5), (24, 7), (4, 3), (2, 2)])
def test_box_width_rule_of_section_10(n, width):
    """method.md §10: 2·round(ρ·n/2) + 1 wide, at least 3, at ρ = 0.25 (capped at the grid)."""
    assert box_width(n, 0.25) == width
    assert box_width(n, 0.25, width=5) == min(5, n)          # a width in tokens wins


def test_v1_box_is_even_and_asymmetric_at_8():
    assert box_width(8, 0.25, "v1") == 2
    m = low_pass_mask(8, 8, 0.25, rule="v1")
    flipped = torch.roll(torch.flip(m, (0, 1)), (1, 1), (0, 1))       # M[-k]
    assert not torch.equal(m, flipped)                               # keeps -1 but not +1


@pytest.mark.parametrize("h,w,ratio", [(20, 20, 0.25), (20, 20, 0.5), (16, 16, 0.25), (8, 8, 0.25),
                                       (7, 9, 0.3), (12, 20, 0.25), (1, 5, 0.4)])
def test_odd_box_is_symmetric_and_sized_per_axis(h, w, ratio):
    m = low_pass_mask(h, w, ratio)
    assert m.shape == (h, w) and m[0, 0] == 1
    flipped = torch.roll(torch.flip(m, (0, 1)), (1, 1), (0, 1))       # M[-k]
    assert torch.equal(m, flipped)                                   # real, isotropic low-pass
    assert int(m.sum()) == box_width(h, ratio) * box_width(w, ratio)
    x = torch.randn(3, h, w, dtype=torch.float64)
    spec_low = torch.fft.ifft2(m.double() * torch.fft.fft2(x))
    assert spec_low.imag.abs().max() < 1e-12                         # no imaginary part to drop


def test_mask_ratio_one_and_bad_ratio():
    assert torch.equal(low_pass_mask(6, 5, 1.0), torch.ones(6, 5))
    with pytest.raises(ValueError):
        low_pass_mask(4, 4, 0.0)
    with pytest.raises(ValueError):
        low_pass_mask(4, 4, 1.5)


@pytest.mark.parametrize("rule", ["odd", "v1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,ratio",
                         [((2, 8, 20, 20), 0.25), ((3, 6, 5), 0.5), ((4, 7, 8), 0.35), ((2, 16, 16), 0.25)])
def test_split_exact_and_matches_literal(dtype, shape, ratio, rule):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype)
    low, high = split_frequencies(x, ratio, rule)
    # exactness: high is the residual, and the sum is x to within one rounding
    assert torch.equal(x - low, high)
    ulp = torch.finfo(dtype).eps * torch.maximum(low.abs(), high.abs()).clamp_min(1e-30)
    assert bool(((low + high) - x).abs().le(ulp).all())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(low, _reference_low(x, ratio, rule), atol=tol, rtol=0)


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


def test_softmax_relation_rows_are_sharp_distributions():
    """v2's S_l: a row softmax of cosines at T; sharper than the centred form, and the
    same-cluster tokens take the mass."""
    torch.manual_seed(1)
    centres = torch.randn(2, 32)
    f = (centres[torch.arange(20) % 2] + 0.1 * torch.randn(20, 32)).T.reshape(1, 32, 4, 5)
    s = relation(f, "softmax", 0.1)
    torch.testing.assert_close(s.sum(-1), torch.ones(1, 20))
    same = (torch.arange(20)[:, None] % 2) == (torch.arange(20)[None, :] % 2)
    assert (s[0][same].sum() / 20) > 0.99                          # mass on the own cluster
    cen = relation(f, "centred")
    cen_rows = cen / cen.sum(-1, keepdim=True)
    assert (s.amax(-1) > cen_rows.amax(-1)).all()                 # sharper rows than v1
    with pytest.raises(ValueError):
        relation(f, "softmax", 0.0)
