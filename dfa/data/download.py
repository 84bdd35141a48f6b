"""Download PASCAL VOC 2012 + SBD and build the anchors' ``train_aug`` tree (``data.download: true``).

The result under ``root`` (``.../VOCdevkit/VOC2012``) is the VOC trainval folder plus

- ``SegmentationClassAug/<name>.png``: single-channel index masks; VOC's ``SegmentationClass``
  palette indices (255 boundary band kept) where VOC has a mask, else SBD's
  ``dataset/cls/<name>.mat`` ``GTcls.Segmentation`` (SBD has no 255 band);
- ``ImageSets/Segmentation/train_aug.txt``: SBD train + SBD val + VOC train - VOC val,
  deduplicated and sorted (10,582 names); VOC's ``train.txt`` (1,464) and ``val.txt`` (1,449) kept;
- ``cls_labels_onehot.npy``: pickled dict name -> float32 multi-hot over the 20 VOC classes.
  Images whose mask comes from VOC (VOC train and val) take the top-level ``<object><name>``
  entries of ``Annotations/<name>.xml`` (part names such as ``head`` are not objects), never
  their masks, so val masks stay evaluation-only. Images whose mask comes from SBD take the
  classes present in that SBD class mask, as the anchors' label files do: with no 255 band to
  hide a tiny object, an XML object SBD did not segment would contradict the mask.

Archives go to ``<base>/downloads`` (``base`` holds ``VOCdevkit``) as ``<file>.part``, are
renamed only once their MD5 matches, and are never fetched again once complete; an interrupted
``.part`` is resumed where the server honours HTTP ranges. Extraction refuses members with
absolute paths or ``..``, skips links, and leaves a marker so a rerun skips it. SBD is unpacked to
``<base>/benchmark_RELEASE`` (class masks and lists only; its images are VOC 2012 images).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Mapping

import numpy as np

from dfa.data.classes import VOC_CLASSES
from dfa.data.io import read_mask, write_mask
from dfa.data.layout import DEFAULT_SPLITS, DataError, Layout
from dfa.io import atomic_path, write_text

VOC_URLS = ("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar")
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
SBD_URLS = ("https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",)
SBD_MD5 = "82b4d87ceb2ed10f6038a1cba92111cb"
CHUNK = 1 << 20
Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class Archive:
    filename: str
    urls: tuple[str, ...]
    md5: str


ARCHIVES = {"voc": Archive("VOCtrainval_11-May-2012.tar", VOC_URLS, VOC_MD5),
            "sbd": Archive("benchmark.tgz", SBD_URLS, SBD_MD5)}


def md5sum(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _stream(url: str, part: Path, progress: Progress | None) -> None:
    """Append ``url`` to ``part`` (resuming it when the server answers 206), calling progress."""
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "dfa-workbench"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part already holds the whole file
            return
        raise
    with resp:
        resumed = offset > 0 and getattr(resp, "status", None) == 206
        done = offset if resumed else 0
        length = resp.headers.get("Content-Length")
        total = done + int(length) if length and length.isdigit() else None
        if resumed and "/" in resp.headers.get("Content-Range", ""):
            tail = resp.headers["Content-Range"].rsplit("/", 1)[1]
            total = int(tail) if tail.isdigit() else total
        with open(part, "ab" if resumed else "wb") as fh:
            for block in iter(lambda: resp.read(CHUNK), b""):
                fh.write(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
            fh.flush()
            os.fsync(fh.fileno())


def fetch(archive: Archive, folder: Path, progress: Progress | None = None, hint: str = "") -> Path:
    """``folder/<filename>`` with the right MD5: kept if present, else downloaded via ``.part``.

    ``hint`` ends the message of a failed download (e.g. what else belongs in ``folder``).
    """
    dest = folder / archive.filename
    if dest.exists():  # placed by hand (fetch itself only ever renames verified files)
        return _verified(dest, dest, archive)
    folder.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in archive.urls:
        try:
            _stream(url, part, progress)
            break
        except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
            why = exc.reason if type(exc) is urllib.error.URLError else exc
            errors.append(f"{url}: {why}")
    else:
        raise DataError(f"{dest}: download failed ({'; '.join(errors)}); download {archive.filename} manually "
                        f"(MD5 {archive.md5}) from {archive.urls[0]} and put it at {dest}, then run again{hint}")
    return _verified(part, dest, archive)


def _verified(path: Path, dest: Path, archive: Archive) -> Path:
    """Rename ``path`` to ``dest`` if its MD5 is right; else delete it and raise."""
    actual = md5sum(path)
    if actual != archive.md5:
        path.unlink()
        raise DataError(f"{dest}: MD5 mismatch for {archive.filename}: expected {archive.md5}, got {actual} "
                        f"({path.name} was deleted; run again, or download it manually and put it at {dest})")
    os.replace(path, dest)
    return dest


def _safe_parts(archive: Path, member: tarfile.TarInfo) -> tuple[str, ...]:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or ".." in parts:
        raise DataError(f"{archive}: unsafe archive member {name!r} (absolute path or '..'); refusing to extract")
    return tuple(p for p in parts if p not in ("", "."))


def _extract(archive: Path, target: Callable[[tuple[str, ...]], Path | None], marker: Path, md5: str) -> None:
    """Unpack the members ``target(parts)`` maps to a path, then write ``marker`` (= ``md5``).

    Every member's name is checked, wanted or not; links and devices are never created.
    """
    count = 0
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                dest = target(_safe_parts(archive, member))
                if dest is None or not (member.isfile() or member.isdir()):
                    continue
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                with open(dest, "wb") as out:
                    for block in iter(lambda: src.read(CHUNK), b""):
                        out.write(block)
                count += 1
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: corrupt or unreadable archive ({exc}); delete it and run again") from None
    if not count:
        raise DataError(f"{archive}: none of the expected folders inside; is it the right archive?")
    write_text(marker, md5 + "\n")


def _read_names(path: Path) -> list[str]:
    try:
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise DataError(f"{path}: unreadable SBD list ({exc})") from None


def _xml_label(path: Path) -> np.ndarray:
    try:
        objects = ET.parse(path).getroot().findall("object")
    except (OSError, ET.ParseError) as exc:
        raise DataError(f"{path}: unreadable VOC annotation ({exc})") from None
    label = np.zeros(len(VOC_CLASSES), np.float32)
    for obj in objects:
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise DataError(f"{path}: object name {name!r} is not a VOC class")
        label[VOC_CLASSES.index(name)] = 1.0
    return label


def _sbd_mask(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        seg = np.asarray(loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation)
    except FileNotFoundError:
        raise DataError(f"{path}: SBD class mask is missing") from None
    except Exception as exc:  # scipy raises many kinds for a bad .mat
        raise DataError(f"{path}: unreadable SBD class mask ({type(exc).__name__}: {exc})") from None
    if seg.ndim != 2 or seg.min(initial=0) < 0 or seg.max(initial=0) > 255:
        raise DataError(f"{path}: GTcls.Segmentation must be a 2-D array of 0..255, got shape {seg.shape}")
    return seg.astype(np.uint8)


def build_tree(root: Path, sbd: Path) -> None:
    """Write SegmentationClassAug, train_aug.txt and cls_labels_onehot.npy from VOC + SBD."""
    layout = Layout(root, "voc")
    voc_train, voc_val = layout.read_list("train"), layout.read_list("val")
    sbd_names = _read_names(sbd / "train.txt") + _read_names(sbd / "val.txt")
    train_aug = sorted(set(sbd_names + voc_train) - set(voc_val))
    voc_seg = set(voc_train + voc_val)
    labels = {}
    for name in dict.fromkeys(train_aug + voc_train + voc_val):
        png = root / "SegmentationClass" / f"{name}.png"
        if name in voc_seg or png.exists():
            mask, labels[name] = read_mask(png), _xml_label(root / "Annotations" / f"{name}.xml")
        else:
            mask = _sbd_mask(sbd / "cls" / f"{name}.mat")
            present = [v for v in np.unique(mask).tolist() if 0 < v <= len(VOC_CLASSES)]
            labels[name] = np.zeros(len(VOC_CLASSES), np.float32)
            labels[name][[v - 1 for v in present]] = 1.0
        write_mask(layout.mask_path(name), mask)
    write_text(layout.list_path("train_aug"), "\n".join(train_aug) + "\n")
    with atomic_path(layout.labels_path()) as tmp, open(tmp, "wb") as fh:
        np.save(fh, labels, allow_pickle=True)


def _voc_target(root: Path, parts: tuple[str, ...]) -> Path | None:
    """``VOCdevkit/VOC2012/<rest>`` -> ``root/<rest>``; anything else is left in the archive."""
    return root.joinpath(*parts[2:]) if parts[:2] == ("VOCdevkit", "VOC2012") and len(parts) > 2 else None


def _sbd_target(base: Path, parts: tuple[str, ...]) -> Path | None:
    """Only SBD's class masks and its train/val lists are needed."""
    if len(parts) < 3 or parts[:2] != ("benchmark_RELEASE", "dataset"):
        return None
    wanted = (parts[2] == "cls" and len(parts) > 3) or (len(parts) == 3 and parts[2] in ("train.txt", "val.txt"))
    return base.joinpath(*parts) if wanted else None


def voc_ready(root: str | Path) -> bool:
    """Cheap test that ``root`` already has the layout's files (the checker still vets them)."""
    layout = Layout(Path(root), "voc")
    return (all(layout.list_path(s).is_file() for s in DEFAULT_SPLITS["voc"]) and layout.labels_path().is_file()
            and (layout.root / "SegmentationClassAug").is_dir())


def prepare_voc(root: str | Path, *, urls: Mapping[str, str | tuple[str, str]] | None = None,
                progress: Progress | None = None, status: Callable[[str], None] | None = None) -> Path:
    """Download, verify, extract and lay out VOC 2012 + SBD at ``root``; returns ``root``.

    ``urls`` overrides the source of ``"voc"`` / ``"sbd"``: a URL, or ``(url, md5)``.
    ``progress(done_bytes, total_bytes)`` follows each download (total None if unknown);
    ``status(text)`` names each phase. Failures raise :class:`DataError` (one line).
    """
    root = Path(root)
    base = root.parent.parent if (root.parent.name, root.name) == ("VOCdevkit", "VOC2012") else root.parent
    archives = dict(ARCHIVES)
    for key, value in (urls or {}).items():
        if key not in archives:
            raise ValueError(f"urls: unknown archive {key!r}; expected 'voc' or 'sbd'")
        url, md5 = value if isinstance(value, tuple) else (value, archives[key].md5)
        archives[key] = Archive(archives[key].filename, (url,), md5)
    say = status or (lambda text: None)
    sbd = base / "benchmark_RELEASE" / "dataset"
    jobs = {"voc": (root / ".voc_extracted", lambda parts: _voc_target(root, parts)),
            "sbd": (sbd / ".sbd_extracted", lambda parts: _sbd_target(base, parts))}
    for key, (marker, target) in jobs.items():
        archive = archives[key]
        if marker.exists() and marker.read_text().strip() == archive.md5:
            continue  # already unpacked from a verified archive: nothing to fetch
        say(f"download {archive.filename}")
        hint = f" (VOC needs {' and '.join(a.filename for a in archives.values())} in that folder)"
        path = fetch(archive, base / "downloads", progress, hint)
        say(f"extract {archive.filename}")
        _extract(path, target, marker, archive.md5)
    say("build SegmentationClassAug, train_aug, labels")
    build_tree(root, sbd)
    return root
