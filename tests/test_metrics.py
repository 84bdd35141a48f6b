"""Tests for dfa.metrics (method.md §8)."""
import math

import numpy as np
import pytest
import torch

from dfa.metrics import confusion_matrix, miou


def test_hand_computed_three_classes():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 255]])
    with pytest.raises(ValueError):                 # a prediction of 255 on a labelled pixel
        confusion_matrix(pred, target, 3)
    pred[1, 3] = 1
    conf = confusion_matrix(pred, target, 3)
    expected = torch.tensor([[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    assert conf.dtype == torch.int64 and torch.equal(conf, expected)
    m, per = miou(conf)
    # IoU0 = 1/(2+2-1) = 1/3; IoU1 = 3/(3+4-3) = 3/4; IoU2 = 1/(2+1-1) = 1/2
    torch.testing.assert_close(per, torch.tensor([1 / 3, 3 / 4, 1 / 2], dtype=torch.float64))
    assert math.isclose(m, (1 / 3 + 3 / 4 + 1 / 2) / 3)


def test_absent_class_is_nan_and_left_out():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 0])
    conf = confusion_matrix(pred, target, 4)
    m, per = miou(conf)
    assert torch.isnan(per[2]) and torch.isnan(per[3])
    assert math.isclose(m, (2 / 3 + 1 / 2) / 2)


def test_accumulates_and_validates():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 5, (3, 8, 8), generator=g)
    p = torch.randint(0, 5, (3, 8, 8), generator=g)
    full = confusion_matrix(p, t, 5)
    parts = sum(confusion_matrix(p[i], t[i], 5) for i in range(3))
    assert torch.equal(full, parts) and int(full.sum()) == 192
    with pytest.raises(ValueError):
        confusion_matrix(p, torch.full_like(t, 7), 5)
    with pytest.raises(ValueError):
        confusion_matrix(p[:1], t, 5)
    assert math.isnan(miou(torch.zeros(3, 3, dtype=torch.int64))[0])


def test_error_shares_of_a_hand_made_confusion():
    """method.md §12: missed fg and wrong class as % of foreground, spill as % of background."""
    from dfa.metrics import error_shares
    conf = torch.tensor([[80, 15, 5],      # background: 20 of 100 spilled into fg
                         [10, 30, 10],     # class 1: 10 missed, 10 wrong
                         [0, 5, 45]])      # class 2: 5 wrong
    s = error_shares(conf)
    assert s == pytest.approx({"missed_fg": 10.0, "wrong_class": 15.0, "spill_bg": 20.0})
    empty = error_shares(torch.tensor([[5, 0], [0, 0]]))
    assert math.isnan(empty["missed_fg"]) and empty["spill_bg"] == 0
