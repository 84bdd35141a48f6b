"""Tests for dfa.crf (method.md §6)."""
import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf")

from dfa.crf import crf_labels, dense_crf  # noqa: E402


def _item(seed, h=24, w=32, c=3):
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[:, w // 2:] = 200
    image = (image + rng.integers(0, 20, image.shape)).astype(np.uint8)
    logits = rng.normal(size=(c, h, w)).astype(np.float32)
    logits[1, :, w // 2:] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    return image, probs


def test_dense_crf_shape_and_probabilities():
    image, probs = _item(0)
    q = dense_crf(image, probs)
    assert q.shape == probs.shape and q.dtype == np.float32
    assert (q >= 0).all()
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    # the CRF cleans the noisy unary towards the colour regions
    label = q.argmax(0)
    assert (label[:, 18:] == 1).mean() > (probs.argmax(0)[:, 18:] == 1).mean()


def test_dense_crf_validates():
    image, probs = _item(0)
    with pytest.raises(ValueError):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(ValueError):
        dense_crf(image[:10], probs)
    # non-contiguous input is accepted
    q = dense_crf(image[:, ::-1], probs[:, :, ::-1])
    assert q.shape == probs.shape


def test_serial_equals_workers():
    items = [_item(s) for s in range(3)]
    serial = crf_labels(items, workers=1, iters=5)
    parallel = crf_labels(items, workers=2, iters=5)
    assert len(serial) == 3
    for s, p, (img, _) in zip(serial, parallel, items):
        assert s.shape == img.shape[:2] and s.dtype == np.int64
        assert np.array_equal(s, p)
