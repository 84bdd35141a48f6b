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
    fg[2, 3] = fg[2, 1]                             # two classes tied everywhere: the first wins
    bg[2, 0] = fg[2, 1]                             # background tied with a class: background wins
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
    # the ties above did occur: class 2 (index 1 + 1) and background both appear in image 2's power 0
    assert set(np.unique(fast[0][2])) <= {0, 1, 2, 3, 5} and 4 not in np.unique(fast[0][2])


def test_labels_for_powers_without_classes_is_background_and_rejects_nothing_kept():
    bg = torch.rand(1, 2, 8, 8)
    fg = -torch.ones(1, 3, 8, 8)
    out = labels_for_powers(bg, fg, [np.zeros((5, 7, 3))])
    assert all((o[0] == 0).all() and o[0].shape == (5, 7) for o in out)
    with pytest.raises(ValueError, match="no kept channel"):
        labels_for_powers(-torch.ones(1, 1, 8, 8), fg, [np.zeros((5, 7, 3))])
