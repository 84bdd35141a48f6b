"""The feature cache (dfa.features_cache, dfa.stages.views): layers vs per-head attention (§2 v3)."""
from __future__ import annotations

import numpy as np
import pytest

from dfa.config import load_config
from dfa.errors import WorkbenchError
from dfa.features_cache import ARRAYS, CacheWriter, CachedViews, arrays
from dfa.stages.views import cache_fingerprint


def test_fingerprint_changes_with_channels_and_a_layers_cache_keeps_its_old_one():
    """A layers cache is never read as a heads cache, nor the reverse; a cache made before
    ``affinity.channels`` existed keeps its fingerprint (the value below is main's at c8e3be2)."""
    base = ["clip.checkpoint=no/such/file.pt"]
    layers = cache_fingerprint(load_config(None, base), ["a", "b"])
    heads = cache_fingerprint(load_config(None, [*base, "affinity.channels=heads"]), ["a", "b"])
    assert layers == "090b86ca99153582" and heads != layers
    # keys the cache does not depend on leave it alone
    assert cache_fingerprint(load_config(None, [*base, "affinity.head=bilinear"]), ["a", "b"]) == layers


def _shard(v=3, k=2, h=3, n=4, heads=False, seed=0):
    rng = np.random.default_rng(seed)
    out = {"tokens": rng.random((v, 2, n, 5), dtype=np.float32).astype(np.float16),
           "cos": rng.random((v, n, 2), dtype=np.float32).astype(np.float16),
           "cos_bg": rng.random((v, n, 1), dtype=np.float32).astype(np.float16),
           "image": rng.integers(0, 255, (v, 8, 8, 3), dtype=np.uint8),
           "label": rng.integers(0, 2, (v, 2), dtype=np.uint8), "mask": np.zeros((v, 8, 8), np.uint8)}
    key, shape = ("heads", (v, k, h, n, n)) if heads else ("attn", (v, k, n, n))
    out[key] = rng.random(shape, dtype=np.float32).astype(np.float16)
    return out


@pytest.mark.parametrize("per_head", [False, True])
def test_a_per_head_cache_stores_heads_in_place_of_the_layer_maps(tmp_path, per_head):
    assert arrays(False) == ARRAYS and arrays(True) == tuple("heads" if a == "attn" else a for a in ARRAYS)
    meta = {"views_per_image": 1, **({"per_head": True} if per_head else {})}
    w = CacheWriter(tmp_path / "c", "fp", meta)
    data = _shard(heads=per_head)
    w.write_shard(["x", "y", "z"], data)
    w.finish()
    files = sorted(p.stem for p in (tmp_path / "c" / "shard_00000").glob("*.npy"))
    assert files == sorted(arrays(per_head))
    views = CachedViews(tmp_path / "c", "fp")
    b = views.batch([2, 0])
    key = "heads" if per_head else "attn"
    assert set(b) == set(arrays(per_head)) and np.array_equal(b[key].numpy(), data[key][[2, 0]])
    with pytest.raises(WorkbenchError, match="fingerprint"):
        CachedViews(tmp_path / "c", "other")
