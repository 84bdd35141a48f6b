"""An in-memory memo of a frozen extractor's outputs (``cache.memo_gib``).

Every cell of an ablation table scores the same ``tune`` and ``train`` views with the same
frozen CLIP, so the forward passes after the first cell repeat work: about a quarter of a
cell's scoring time on the 2-core machine (cProfile of one calibration). The decoder's
``val`` pass (:meth:`MemoExtractor.decoder_tokens`) is memoised too: the three seeds of row 4
view the same ``val`` images at the same scales (on the base benchmark: tune + train
features 1.25 GiB, ``val``'s multi-scale decoder tokens ~3.1 GiB). The memo keys each call by the
bytes of its inputs, so a hit returns exactly what the extractor returned for those bytes;
it never returns features of other pixels. Stored on the CPU until ``max_bytes`` is
reached; then it keeps what it has and stores no more. Not LRU: a table reads the same
splits in the same order every cell, and a cycle larger than an LRU memo would evict each
entry just before its next use (no hits at all); keeping the first entries gives the hit
rate of their share.
"""
from __future__ import annotations

import hashlib

import torch

from dfa.backbone.dense import DenseExtractor, ViewFeatures


def _digest(*tensors: torch.Tensor | None) -> str:
    h = hashlib.blake2b(digest_size=20)
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()


def _nbytes(f: ViewFeatures) -> int:
    return sum(t.numel() * t.element_size() for t in (f.tokens, f.attn, f.cos, f.cos_bg, f.heads) if t is not None)


class MemoExtractor:
    """``DenseExtractor`` with a memo: same call signature and attributes (``clip``, ``device``,
    ``logit_scale`` … are the inner extractor's). ``hits``/``misses`` count calls."""

    def __init__(self, inner: DenseExtractor, max_bytes: int):
        self.inner = inner
        self.max_bytes = int(max_bytes)
        self._store: dict[str, ViewFeatures | tuple[torch.Tensor, tuple[int, int]]] = {}
        self.bytes = 0
        self.hits = self.misses = 0

    def __getattr__(self, name):        # only called for names not found on the memo itself
        inner = self.__dict__.get("inner")
        if inner is None:               # unpickling / copy look up dunders before __init__ ran
            raise AttributeError(name)
        return getattr(inner, name)

    def __call__(self, images: torch.Tensor, present: torch.Tensor | None = None) -> ViewFeatures:
        key = _digest(images, present)
        # A hit returns the stored tensors themselves (no copy): callers must not edit features
        # in place (none does: affinities, class scores and the decoder all build new tensors).
        found = self._store.get(key)
        if found is not None:
            self.hits += 1
            return found.to(self.inner.device)
        self.misses += 1
        out = self.inner(images, present)
        size = _nbytes(out)
        if self.bytes + size <= self.max_bytes:
            self._store[key] = out.to("cpu")
            self.bytes += size
        return out


    def decoder_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``inner.decoder_tokens`` memoised under the same budget (keys of their own kind)."""
        key = "decoder:" + _digest(images)
        found = self._store.get(key)
        if found is not None:
            self.hits += 1
            return found[0].to(self.inner.device), found[1]
        self.misses += 1
        tokens, grid = self.inner.decoder_tokens(images)
        size = tokens.numel() * tokens.element_size()
        if self.bytes + size <= self.max_bytes:
            self._store[key] = (tokens.to("cpu"), grid)
            self.bytes += size
        return tokens, grid


def with_memo(ext: DenseExtractor, gib: float):
    """``ext`` wrapped in a :class:`MemoExtractor` of ``gib`` GiB; ``ext`` itself for 0 or an
    accelerator, where the forward pass costs less than copying its output to the host."""
    return MemoExtractor(ext, int(gib * 2**30)) if gib > 0 and torch.device(ext.device).type == "cpu" else ext
