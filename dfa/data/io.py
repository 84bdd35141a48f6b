"""Reading images and masks, writing VOC-palette masks.

Every failure becomes a :class:`DataError` naming the path, so the checker can list it
instead of crashing. Truncated JPEGs are errors, never silently grey-filled.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from dfa.data.layout import DataError
from dfa.io import save_image


def voc_palette() -> list[int]:
    """The 256-entry PASCAL VOC colour map as a flat [r, g, b, ...] list (255 -> white-ish)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):  # spread the bits of the index over the three channels
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


_PALETTE = voc_palette()


def _open(path: Path) -> Image.Image:
    # A global PIL switch: force it off so a truncated file raises instead of loading half grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing") from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from None


def read_image(path: str | Path) -> np.ndarray:
    """uint8 HxWx3 RGB; grayscale, CMYK and palette JPEG/PNG are converted."""
    img = _open(Path(path))
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) after fully decoding the file (so a truncated file still fails)."""
    img = _open(Path(path))
    return img.height, img.width


def read_mask(path: str | Path) -> np.ndarray:
    """uint8 HxW class indices; a palette ('P') or grayscale ('L') PNG whose values are indices."""
    path = Path(path)
    img = _open(path)
    if img.mode not in ("P", "L", "I", "I;16"):
        raise DataError(f"{path}: mask must be a palette or grayscale PNG of class indices, got mode "
                        f"{img.mode} (colour-coded masks must be converted to indices first)")
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise DataError(f"{path}: mask must be 2-D, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255:
            raise DataError(f"{path}: mask values above 255 ({int(arr.max())})")
        arr = arr.astype(np.uint8)
    return arr.copy()


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a uint8 HxW index mask as a VOC-palette PNG, atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask must be HxW, got shape {mask.shape}")
    if mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
        raise ValueError(f"{path}: mask values must be in 0..255")
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))  # mode "L"
    img.putpalette(_PALETTE)  # turns the "L" image into "P" without touching the indices
    save_image(path, img)
