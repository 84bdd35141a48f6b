"""Dense CRF post-processing for inference. method.md §6.

pydensecrf (package ``pydensecrf2``), fully connected CRF with a Gaussian and a bilateral
kernel; defaults are the values of method.md §6 (CLIP-ES / ExCEL): 10 iterations, gaussian
sxy 1 / compat 3, bilateral sxy 67 / srgb 3 / compat 4 (params.yaml ``infer.crf.*``).

No torch import here: the module is imported by spawned worker processes and must stay
light. Parallel runs use a ``spawn`` context: a ``fork`` pool started after torch has run
OpenMP threads can hang (perf-anchors §0).
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterable, List, Sequence, Tuple

import numpy as np

__all__ = ["dense_crf", "crf_labels", "crf_pool"]


def dense_crf(image: np.ndarray, probs: np.ndarray, iters: int = 10, gauss_sxy: float = 1,
              gauss_compat: float = 3, bilateral_sxy: float = 67, bilateral_srgb: float = 3,
              bilateral_compat: float = 4) -> np.ndarray:
    """Mean-field dense CRF on one image. method.md §6.

    Unary = −log(probs) (``unary_from_softmax``, probabilities clipped at 1e-5).

    Args:
        image: (H, W, 3) uint8 RGB (made C-contiguous here).
        probs: (C, H, W) float class probabilities (each pixel sums to 1).
    Returns:
        (C, H, W) float32 marginals after ``iters`` mean-field iterations.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    image = np.asarray(image)
    probs = np.asarray(probs)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"dense_crf: image must be (H, W, 3), got {image.shape}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"dense_crf: probs must be (C, H, W) matching the image, "
                         f"got {probs.shape} for image {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"dense_crf: image must be uint8, got {image.dtype}")
    c, h, w = probs.shape
    image = np.ascontiguousarray(image)
    unary = np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32, copy=False)))
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=image,
                             compat=bilateral_compat)
    q = crf.inference(iters)
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def _crf_label(args: Tuple[np.ndarray, np.ndarray, dict]) -> np.ndarray:
    image, probs, params = args
    return dense_crf(image, probs, **params).argmax(axis=0).astype(np.int64)


def crf_pool(workers: int) -> ProcessPoolExecutor | None:
    """A spawn pool to reuse across :func:`crf_labels` calls (each start costs ~0.5 s), or
    None for ``workers <= 1``. Use as a context manager: ``with crf_pool(2) as pool``."""
    if workers <= 1:
        return None
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def crf_labels(items: Iterable[Tuple[np.ndarray, np.ndarray]], workers: int = 1,
               pool: ProcessPoolExecutor | None = None, **params: Any) -> List[np.ndarray]:
    """Dense CRF then argmax on a list of ``(image, probs)`` pairs. method.md §6.

    ``workers > 1`` runs a ``ProcessPoolExecutor`` with a ``spawn`` context; results are in
    input order and identical to the serial run (the CRF is deterministic).

    Args:
        items: (image (H, W, 3) uint8, probs (C, H, W)) pairs.
        workers: processes (1 = in this process).
        pool: a pool from :func:`crf_pool` to use instead of starting one.
        **params: keyword arguments of :func:`dense_crf`.
    Returns:
        list of (H, W) int64 label maps.
    """
    jobs: Sequence[Tuple[np.ndarray, np.ndarray, dict]] = [
        (np.ascontiguousarray(img), np.asarray(p), params) for img, p in items]
    if pool is not None:
        return list(pool.map(_crf_label, jobs))
    if workers <= 1 or len(jobs) <= 1:
        return [_crf_label(job) for job in jobs]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        return list(pool.map(_crf_label, jobs))
