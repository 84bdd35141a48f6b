"""On-disk cache of frozen-CLIP view features (issue 3 item 6; issue 5 item 1).

Layout under ``cache.dir``::

    index.json                 fingerprint, shapes, the shard list (written last, atomically)
    shard_00000/tokens.npy     (V, L, N, D) float16   decoder input tokens
    shard_00000/attn.npy       (V, K, N, N) float16   last-K attention (CLS dropped)
                 or heads.npy  (V, K, H, N, N) float16  every head's, for ``affinity.channels: heads``
                                                          (the layer maps are their mean, not stored)
    shard_00000/cos.npy        (V, N, C)   float16   raw token-class cosines
    shard_00000/cos_bg.npy     (V, N, P)   float16   raw token-prompt cosines (P background prompts)
    shard_00000/image.npy      (V, H, W, 3) uint8    the view's pixels (for PAR)
    shard_00000/label.npy      (V, C)      uint8     image-level labels
    shard_00000/mask.npy       (V, H, W)   uint8     the view's ground truth (ceiling rows only, §11)
    shard_00000/names.json

A view is an image resized to the crop (and its horizontal flip when ``cache.flip``).
Each shard is written to a temporary folder and renamed, then listed in the index; an
interrupted ``dfa cache`` resumes at the first missing shard. The fingerprint covers
everything that changes the tensors (backbone, checkpoint bytes, prompts, views, data
list); a cache with another fingerprint is rebuilt, never mixed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from dfa.io import write_json

ARRAYS = ("tokens", "attn", "cos", "cos_bg", "image", "label", "mask")
FORMAT = 2  # 1: min-maxed S and one background score; 2: raw cosines + the view's mask


def arrays(per_head: bool) -> tuple[str, ...]:
    """The arrays of a shard: per-head attention (``heads``) in place of ``attn`` when ``per_head``."""
    return tuple("heads" if k == "attn" and per_head else k for k in ARRAYS)


def file_digest(path: str | Path | None) -> str:
    """SHA-256 of a file's bytes (a checkpoint), or '' for no file."""
    if not path or not Path(path).exists():
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class CacheWriter:
    """Append shards; resume where a previous run stopped."""

    def __init__(self, root: str | Path, fp: str, meta: dict):
        self.root = Path(root)
        self.fp = fp
        self.meta = meta
        index = read_index(self.root)
        if index is not None and index["fingerprint"] != fp:
            # Made with other params or another backbone: rebuild from scratch.
            self.stale = True
            shutil.rmtree(self.root)
            index = None
        else:
            self.stale = False
        self.root.mkdir(parents=True, exist_ok=True)
        self.index = index or {"fingerprint": fp, "meta": meta, "shards": [], "complete": False}

    @property
    def done_names(self) -> set[str]:
        return {n for s in self.index["shards"] for n in s["names"]}

    def write_shard(self, names: list[str], arrays: dict[str, np.ndarray]) -> None:
        i = len(self.index["shards"])
        final = self.root / f"shard_{i:05d}"
        tmp = self.root / f".shard_{i:05d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # a shard not in the index is a leftover
        tmp.mkdir(parents=True)
        for key in arrays:
            np.save(tmp / f"{key}.npy", arrays[key])
        (tmp / "names.json").write_text(json.dumps(names))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        self.index["shards"].append({"dir": final.name, "names": names, "views": int(arrays["tokens"].shape[0])})
        write_json(self.root / "index.json", self.index)

    def finish(self) -> None:
        self.index["complete"] = True
        write_json(self.root / "index.json", self.index)


def read_index(root: str | Path) -> dict | None:
    path = Path(root) / "index.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


class CachedViews:
    """Memory-mapped read access to a complete cache: ``views[i]`` → dict of tensors."""

    def __init__(self, root: str | Path, fp: str | None = None):
        from dfa.errors import WorkbenchError

        self.root = Path(root)
        index = read_index(self.root)
        if index is None or not index.get("complete"):
            raise WorkbenchError(f"{self.root}: feature cache missing or incomplete (run `dfa cache`)")
        if fp is not None and index["fingerprint"] != fp:
            raise WorkbenchError(f"{self.root}: feature cache was made with other params or another backbone "
                                 f"(fingerprint {index['fingerprint']} != {fp}); run `dfa cache` to rebuild it")
        self.meta = index["meta"]
        self.keys = arrays(bool(self.meta.get("per_head")))
        self.shards = [{k: np.load(self.root / s["dir"] / f"{k}.npy", mmap_mode="r") for k in self.keys}
                       for s in index["shards"]]
        self.names = [n for s in index["shards"] for n in s["names"]]
        self.views_per_image = int(self.meta["views_per_image"])
        self.offsets = np.cumsum([0] + [int(s["tokens"].shape[0]) for s in self.shards])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[dict, int]:
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.shards[s], i - int(self.offsets[s])

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        out: dict[str, list] = {k: [] for k in self.keys}
        for i in indices:
            shard, j = self.locate(int(i))
            for k in self.keys:
                out[k].append(np.asarray(shard[k][j]))
        return {k: torch.from_numpy(np.stack(v)) for k, v in out.items()}

    def view_index(self, name: str, view: int = 0) -> int:
        return self.names.index(name) * self.views_per_image + view
