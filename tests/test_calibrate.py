"""dfa.calibrate: the per-power label maps of the background calibration (method.md §5, §12)."""
import numpy as np
import pytest
import torch

from dfa.calibrate import labels_at_image_size, labels_for_powers


def _scores(seed: int, b=3, p=4, c=5, crop=16):
    g = torch.Generator().manual_seed(seed)
    bg = torch.rand(b, p, crop, crop, generator=g)
    fg = torch.rand(b, c, crop, crop, generator=g)
    fg[0, 1] = -1                                   # absent classes: -1 everywhere
    fg[1, [0, 2, 4]] = -1
    fg[2] = 0.5 * fg[2]                             # image 2: classes 1 and 3 tie at the top everywhere
    fg[2, 1] = 0.9 + 0.05 * torch.rand(crop, crop, generator=g)
    fg[2, 3] = fg[2, 1]
    bg[2, 0] = fg[2, 1]                             # power 0: background ties with them: background wins
    bg[2, 1] = 0.5 * bg[2, 1]                       # power 1: background below: the first tied class wins
    bg[0, 1] = 0.0                                  # a power that drives the background to 0
    return bg, fg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_for_powers_equals_full_argmax_at_every_power(seed):
    bg, fg = _scores(seed)
    images = [np.zeros((23, 31, 3)), np.zeros((16, 16, 3)), np.zeros((40, 9, 3))]   # other sizes
    fast = labels_for_powers(bg, fg, images)
    assert len(fast) == bg.shape[1]
    for i in range(bg.shape[1]):
        full = labels_at_image_size(torch.cat([bg[:, i:i + 1], fg], dim=1), images)
        for a, b in zip(fast[i], full):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    # the ties of image 2 went as argmax goes: background first, then the first of two classes
    assert (fast[0][2] == 0).all() and (fast[1][2] == 2).all()


def test_a_nan_background_is_not_kept_as_in_the_full_argmax():
    bg, fg = _scores(0)
    bg[1, 2, 3, 3] = float("nan")
    images = [np.zeros((20, 20, 3))] * 3
    np.testing.assert_array_equal(labels_for_powers(bg, fg, images)[2][1],
                                  labels_at_image_size(torch.cat([bg[:, 2:3], fg], 1), images)[1])


def test_labels_for_powers_without_classes_is_background_and_rejects_nothing_kept():
    bg = torch.rand(1, 2, 8, 8)
    fg = -torch.ones(1, 3, 8, 8)
    out = labels_for_powers(bg, fg, [np.zeros((5, 7, 3))])
    assert all((o[0] == 0).all() and o[0].shape == (5, 7) for o in out)
    with pytest.raises(ValueError, match="no kept channel"):
        labels_for_powers(-torch.ones(1, 1, 8, 8), fg, [np.zeros((5, 7, 3))])
