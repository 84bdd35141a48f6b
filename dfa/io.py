"""Atomic file writes: a killed process leaves the old file or the new one, never a torn one.

Every artifact the workbench writes (metrics, checkpoints, cache shards, masks, reports)
goes through these helpers: write to a temporary file in the same folder, fsync, rename.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    ``suffix`` keeps an extension on the temporary name for writers that look at it
    (PIL, numpy). On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix + ".tmp",
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    # Saved through a file object: given a path, torch.save names the archive's records after
    # the (random) temporary file name, so equal objects would give different bytes.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def save_image(path: str | os.PathLike, image: Any, **kwargs: Any) -> None:
    """Save a PIL image atomically; the format comes from ``path``'s extension."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}[Path(path).suffix.lower()]
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **kwargs)
