"""VOC 2012 + SBD download and layout, against tiny fake archives served from file:// URLs.

The fakes keep the real internal structure (``VOCdevkit/VOC2012/...``,
``benchmark_RELEASE/dataset/...`` with MATLAB-struct ``GTcls``/``GTinst`` .mat files), so
everything except the network itself runs as it would on the real archives.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfa.data.checker import check_tree
from dfa.data.classes import VOC_CLASSES
from dfa.data.dataset import load_labels
from dfa.data.download import Archive, fetch, prepare_voc
from dfa.data.io import read_mask, voc_palette
from dfa.data.layout import DataError, Layout

scipy_io = pytest.importorskip("scipy.io")
from scipy import sparse  # noqa: E402

H, W = 12, 16
C = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}
VOC_TRAIN = ["2007_000001", "2007_000002"]
VOC_VAL = ["2007_000003", "2007_000004"]
SBD_TRAIN = ["2007_000001", "2007_000003", "2008_000005", "2008_000006"]  # overlaps VOC train and val
SBD_VAL = ["2007_000004", "2008_000007"]
EXTRA = ["2009_000008"]  # in VOC, in no segmentation list
# image -> XML objects (with a person part that is no object); VOC masks hold only the first.
OBJECTS = {"2007_000001": ["person", "bottle"], "2007_000002": ["car"], "2007_000003": ["cat"],
           "2007_000004": ["dog", "cat"], "2008_000005": ["horse"], "2008_000006": ["sheep", "cow"],
           "2008_000007": ["boat"], "2009_000008": ["bus"]}
SBD_CLASSES = {"2007_000001": [C["aeroplane"]], "2007_000003": [C["cat"]], "2008_000005": [C["horse"]],
               "2008_000006": [C["sheep"]], "2007_000004": [C["dog"]], "2008_000007": [C["boat"]]}


def _mask(classes: list[int], band: bool) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    for k, c in enumerate(classes):
        m[2:10, 2 + 6 * k:6 + 6 * k] = c
        if band:
            m[1, 1 + 6 * k:7 + 6 * k] = 255
    return m


def _xml(name: str) -> bytes:
    objs = "".join(f"<object><name>{o}</name><difficult>0</difficult>"
                   + ("<part><name>head</name></part>" if o == "person" else "") + "</object>"
                   for o in OBJECTS[name])
    return (f"<annotation><folder>VOC2012</folder><filename>{name}.jpg</filename><size><width>{W}</width>"
            f"<height>{H}</height><depth>3</depth></size>{objs}</annotation>").encode()


def _png(mask: np.ndarray) -> bytes:
    img = Image.fromarray(mask, "L")
    img.putpalette(voc_palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _mat(seg: np.ndarray, classes: list[int], inst: bool) -> bytes:
    bounds = np.empty((20, 1), dtype=object)
    for i in range(20):
        bounds[i, 0] = sparse.csc_matrix((H, W), dtype=np.uint8)
    if inst:
        struct = {"Segmentation": (seg > 0).astype(np.uint8), "Boundaries": bounds[:len(classes)],
                  "Categories": np.array(classes, np.uint8).reshape(-1, 1)}
        key = "GTinst"
    else:
        struct = {"Segmentation": seg, "Boundaries": bounds,
                  "CategoriesPresent": np.array(classes, np.uint8).reshape(-1, 1)}
        key = "GTcls"
    buf = io.BytesIO()
    scipy_io.savemat(buf, {key: struct})
    return buf.getvalue()


def _tar(path: Path, files: dict[str, bytes], mode: str) -> str:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_archives(src: Path) -> dict[str, tuple[str, str]]:
    """Fake VOCtrainval + benchmark.tgz in ``src``; returns prepare_voc's ``urls`` with real MD5s."""
    src.mkdir(parents=True, exist_ok=True)
    v = "VOCdevkit/VOC2012/"
    voc = {}
    for name in OBJECTS:
        voc[f"{v}JPEGImages/{name}.jpg"] = _jpg()
        voc[f"{v}Annotations/{name}.xml"] = _xml(name)
    for name in VOC_TRAIN + VOC_VAL:
        voc[f"{v}SegmentationClass/{name}.png"] = _png(_mask([C[OBJECTS[name][0]]], band=True))
    voc[f"{v}ImageSets/Segmentation/train.txt"] = "\n".join(VOC_TRAIN).encode() + b"\n"
    voc[f"{v}ImageSets/Segmentation/val.txt"] = "\n".join(VOC_VAL).encode() + b"\n"
    voc[f"{v}ImageSets/Segmentation/trainval.txt"] = "\n".join(VOC_TRAIN + VOC_VAL).encode() + b"\n"
    voc[f"{v}ImageSets/Main/train.txt"] = b"2007_000001\n"
    d = "benchmark_RELEASE/dataset/"
    sbd = {"benchmark_RELEASE/benchmark_code_RELEASE/README": b"code\n",
           f"{d}train.txt": "\n".join(SBD_TRAIN).encode() + b"\n", f"{d}val.txt": "\n".join(SBD_VAL).encode() + b"\n"}
    for name, classes in SBD_CLASSES.items():
        sbd[f"{d}cls/{name}.mat"] = _mat(_mask(classes, band=False), classes, inst=False)
        sbd[f"{d}inst/{name}.mat"] = _mat(_mask(classes, band=False), classes, inst=True)
        sbd[f"{d}img/{name}.jpg"] = _jpg()
    urls = {}
    for key, fname, files, mode in (("voc", "VOCtrainval_11-May-2012.tar", voc, "w"),
                                    ("sbd", "benchmark.tgz", sbd, "w:gz")):
        md5 = _tar(src / fname, files, mode)
        urls[key] = ((src / fname).as_uri(), md5)
    return urls


def _root(tmp_path: Path) -> Path:
    return tmp_path / "voc" / "VOCdevkit" / "VOC2012"


def test_prepare_voc_builds_the_anchor_layout_and_skips_a_second_download(tmp_path):
    urls = make_archives(tmp_path / "src")
    root = _root(tmp_path)
    calls = []
    assert prepare_voc(root, urls=urls, progress=lambda done, total: calls.append((done, total))) == root
    sizes = {(tmp_path / "src" / n).stat().st_size for n in ("VOCtrainval_11-May-2012.tar", "benchmark.tgz")}
    assert {c for c in calls if c[0] == c[1]} == {(s, s) for s in sizes}  # progress ends at (total, total)

    layout = Layout(root, "voc")
    assert check_tree(layout, 21, ["train_aug", "train", "val"]) == []
    train_aug = layout.read_list("train_aug")
    assert train_aug == ["2007_000001", "2007_000002", "2008_000005", "2008_000006", "2008_000007"]
    assert not set(train_aug) & set(layout.read_list("val"))
    assert layout.read_list("train") == VOC_TRAIN and layout.read_list("val") == VOC_VAL

    # VOC images keep VOC's mask (255 band included) even where SBD has one; others take SBD's.
    m1 = read_mask(layout.mask_path("2007_000001"))
    assert set(np.unique(m1)) == {0, C["person"], 255}
    assert set(np.unique(read_mask(layout.mask_path("2008_000006")))) == {0, C["sheep"]}

    labels = load_labels(layout.labels_path())
    assert set(labels) == set(train_aug + VOC_VAL)
    on = {n: {VOC_CLASSES[i] for i in np.flatnonzero(v)} for n, v in labels.items()}
    assert all(v.dtype == np.float32 and v.shape == (20,) for v in labels.values())
    assert on["2007_000001"] == {"person", "bottle"}  # XML objects; the 'head' part is no class
    assert on["2007_000004"] == {"dog", "cat"}  # val: from the XML, not from the (dog-only) mask
    assert on["2008_000006"] == {"sheep"}  # SBD-masked image: the classes of its SBD mask

    # Second call: archives gone from the "server", nothing downloaded, tree still fine.
    for f in (tmp_path / "src").iterdir():
        f.unlink()
    calls.clear()
    prepare_voc(root, urls=urls, progress=lambda done, total: calls.append((done, total)))
    assert calls == [] and check_tree(layout, 21, ["train_aug", "train", "val"]) == []


def test_present_archives_are_reused_and_a_stale_part_is_replaced(tmp_path):
    urls = make_archives(tmp_path / "src")
    downloads = tmp_path / "voc" / "downloads"
    downloads.mkdir(parents=True)
    sbd = downloads / "benchmark.tgz"
    sbd.write_bytes((tmp_path / "src" / "benchmark.tgz").read_bytes())  # placed by hand
    (tmp_path / "src" / "benchmark.tgz").unlink()
    part = downloads / "VOCtrainval_11-May-2012.tar.part"
    part.write_bytes(b"junk")  # file:// ignores Range, so the download starts over
    prepare_voc(_root(tmp_path), urls=urls)
    assert not part.exists() and (downloads / "VOCtrainval_11-May-2012.tar").exists()
    assert check_tree(Layout(_root(tmp_path), "voc"), 21, ["train_aug", "train", "val"]) == []


def test_wrong_md5_raises_naming_the_file_and_leaves_no_partial_file(tmp_path):
    urls = make_archives(tmp_path / "src")
    actual = urls["voc"][1]
    urls["voc"] = (urls["voc"][0], "0" * 32)
    with pytest.raises(DataError) as err:
        prepare_voc(_root(tmp_path), urls=urls)
    msg = str(err.value)
    assert "VOCtrainval_11-May-2012.tar" in msg and "0" * 32 in msg and actual in msg
    assert list((tmp_path / "voc" / "downloads").iterdir()) == []

    placed = tmp_path / "voc" / "downloads" / "VOCtrainval_11-May-2012.tar"  # a wrong file put by hand
    placed.write_bytes(b"truncated")
    with pytest.raises(DataError, match="MD5 mismatch"):
        prepare_voc(_root(tmp_path), urls={**urls, "voc": urls["voc"][0] + ".gone"})
    assert not placed.exists()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``BLOB`` at any path and honours ``Range: bytes=N-`` like the real hosts."""

    BLOB = bytes(range(256)) * 40

    def do_GET(self):  # noqa: N802 (http.server API)
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
        if start >= len(self.BLOB):
            self.send_response(416)
            self.end_headers()
            return
        body = self.BLOB[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.BLOB) - 1}/{len(self.BLOB)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_http_download_resumes_an_interrupted_part(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # the local server must be reached directly
    blob = _RangeHandler.BLOB
    server = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/f.bin"
        archive = Archive("f.bin", (url,), hashlib.md5(blob).hexdigest())
        for kept in (len(blob) // 3, len(blob)):  # interrupted half-way; complete but not renamed
            (tmp_path / "f.bin").unlink(missing_ok=True)
            (tmp_path / "f.bin.part").write_bytes(blob[:kept])
            calls = []
            assert fetch(archive, tmp_path, lambda d, t: calls.append((d, t))).read_bytes() == blob
            assert not (tmp_path / "f.bin.part").exists()
            assert all(d > kept for d, _ in calls) and calls[-1:] in ([], [(len(blob), len(blob))])
            assert (kept == len(blob)) == (calls == [])
    finally:
        server.shutdown()
        server.server_close()


def test_network_failure_and_unsafe_members_are_one_line_data_errors(tmp_path):
    urls = make_archives(tmp_path / "src")
    with pytest.raises(DataError, match="manually") as err:
        prepare_voc(_root(tmp_path), urls={**urls, "voc": (tmp_path / "nope.tar").as_uri()})
    assert "\n" not in str(err.value) and str(tmp_path / "voc" / "downloads") in str(err.value)

    evil = tmp_path / "evil" / "VOCtrainval_11-May-2012.tar"
    evil.parent.mkdir()
    md5 = _tar(evil, {"VOCdevkit/VOC2012/ok.txt": b"x", "VOCdevkit/../../escape.txt": b"x"}, "w")
    with pytest.raises(DataError, match="unsafe archive member"):
        prepare_voc(tmp_path / "e" / "VOCdevkit" / "VOC2012", urls={**urls, "voc": (evil.as_uri(), md5)})
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "e" / "escape.txt").exists()
