"""Data layer: class specs, layouts, image IO, the synthetic benchmark, the checker, the Dataset."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfa.data import synthetic
from dfa.data.checker import check_data_main, check_tree
from dfa.data.classes import COCO_SPEC, VOC_SPEC, ClassSpec, load_class_spec, spec_for, write_class_spec
from dfa.data.dataset import WSSSDataset
from dfa.data.io import read_image, read_mask, write_mask
from dfa.data.layout import DataError, Layout
from dfa.data.transforms import IMAGENET_MEAN, EvalTransform, TrainTransform

SMALL = dict(num_train_aug=24, num_train=8, num_val=8, num_pretrain=4)


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    synthetic.generate(root, seed=3, **SMALL)
    return root


@pytest.fixture()
def syn_copy(syn_root, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(syn_root, dst)
    return dst


def _save_labels(root: Path, labels: dict[str, np.ndarray]) -> None:
    np.save(root / "cls_labels_onehot.npy", labels, allow_pickle=True)


def _make_tree(layout: Layout, splits: dict[str, list[str]], items: dict[str, tuple]) -> None:
    """items: name -> (uint8 HxWx3 image, uint8 HxW mask, float label vector)."""
    for name, (image, mask, _) in items.items():
        layout.image_path(name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(layout.image_path(name), quality=95)
        write_mask(layout.mask_path(name), mask)
    for split, names in splits.items():
        layout.list_path(split).parent.mkdir(parents=True, exist_ok=True)
        layout.list_path(split).write_text("\n".join(names) + "\n")
    _save_labels(layout.root, {n: np.asarray(v[2], np.float32) for n, v in items.items()})


def _item(h: int, w: int, classes: list[int], num_fg: int, rng, band: bool = False) -> tuple:
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for i, c in enumerate(classes):  # vertical stripes, one per class
        mask[:, (i + 1) * w // (len(classes) + 2):(i + 2) * w // (len(classes) + 2)] = c
    if band:
        mask[h // 2, :] = 255
    label = np.zeros(num_fg, np.float32)
    label[np.array(classes) - 1] = 1
    return image, mask, label


# ----------------------------------------------------------------------------- class specs
def test_builtin_specs():
    assert VOC_SPEC.num_classes == 21 and len(VOC_SPEC.background) == 25
    assert COCO_SPEC.num_classes == 81 and len(COCO_SPEC.background) == 23
    assert "keyboard" not in COCO_SPEC.background and "sign" not in COCO_SPEC.background
    assert VOC_SPEC.synonyms["person"] == ["person with clothes", "people", "human"]
    assert VOC_SPEC.classes[0] == "aeroplane" and VOC_SPEC.classes[-1] == "tvmonitor"


def test_class_spec_roundtrip_and_errors(tmp_path):
    spec = ClassSpec(["a", "b"], {"a": ["alpha"]}, ["floor"])
    write_class_spec(tmp_path, spec)
    assert load_class_spec(tmp_path) == spec
    assert spec_for("voc", tmp_path) == spec  # a classes.json in the tree wins
    assert spec_for("voc", tmp_path / "nowhere") == VOC_SPEC
    (tmp_path / "classes.json").write_text(json.dumps({"classes": []}))
    with pytest.raises(ValueError, match="classes.json"):
        load_class_spec(tmp_path)
    (tmp_path / "classes.json").write_text("{not json")
    with pytest.raises(ValueError, match="classes.json"):
        spec_for("custom", tmp_path)


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_tree_passes_checker(syn_root, capsys):
    layout = Layout(syn_root, "synthetic")
    spec = spec_for("synthetic", syn_root)
    assert spec.classes == synthetic.CLASSES and spec.background == synthetic.BACKGROUNDS
    assert check_tree(layout, spec.num_classes) == []
    assert check_tree(layout, spec.num_classes, splits=["pretrain"]) == []
    assert check_data_main(syn_root, "synthetic") == 0
    assert capsys.readouterr().out.startswith("OK:")


def test_synthetic_splits_labels_annotations(syn_root):
    layout = Layout(syn_root, "synthetic")
    train_aug, train, val, pre = (layout.read_list(s) for s in ("train_aug", "train", "val", "pretrain"))
    assert (len(train_aug), len(train), len(val), len(pre)) == (24, 8, 8, 4)
    assert train == train_aug[:8] and not set(val) & set(train_aug) and not set(pre) & set(train_aug)
    labels = np.load(layout.labels_path(), allow_pickle=True).item()
    ann = json.loads((syn_root / "annotations.json").read_text())
    shapes = set()
    for name in train_aug + val + pre:
        mask = read_mask(layout.mask_path(name))
        image = read_image(layout.image_path(name))
        shapes.add(image.shape)
        assert mask.shape == image.shape[:2]
        assert labels[name].dtype == np.float32 and labels[name].sum() >= 1
        np.testing.assert_array_equal(labels[name], synthetic.label_vector(mask))
        assert {o["class"] for o in ann[name]["objects"]} == {synthetic.CLASSES[i] for i in np.flatnonzero(labels[name])}
        assert ann[name]["background"] in synthetic.BACKGROUNDS
    assert len({s[:2] for s in shapes}) > 1 and any(h != w for h, w, _ in shapes)  # varied, non-square


def test_synthetic_deterministic_and_idempotent(syn_root, tmp_path):
    other = tmp_path / "again"
    synthetic.generate(other, seed=3, **SMALL)
    for name in Layout(other).read_list("val"):
        np.testing.assert_array_equal(read_mask(Layout(other).mask_path(name)), read_mask(Layout(syn_root).mask_path(name)))
    marker = other / ".complete"
    stamp = marker.stat().st_mtime_ns
    synthetic.generate(other, seed=3, **SMALL)  # same parameters: nothing happens
    assert marker.stat().st_mtime_ns == stamp
    synthetic.generate(other, seed=4, **{**SMALL, "num_train_aug": 10, "num_train": 5})
    assert json.loads(marker.read_text())["seed"] == 4
    assert len(list((other / "JPEGImages").glob("*.jpg"))) == 10 + 8 + 4  # stale images removed


def test_synthetic_ignore_border_and_captions():
    _, mask, entry = synthetic.make_sample(0, 5, ignore_border=1)
    assert 255 in mask
    _, mask0, _ = synthetic.make_sample(0, 5)
    assert 255 not in mask0
    e = {"background": "water", "objects": [{"class": "boat"}, {"class": "fish"}, {"class": "boat"}]}
    assert synthetic.caption(e) == "a photo of a boat and a fish on water."
    assert synthetic.object_caption("cow", "grass") == "a photo of a cow on grass."


# Smoke-size trees (SMOKE_OVERRIDES' counts; no pretrain split is needed to measure areas).
SMOKE_TREE = dict(num_train_aug=48, num_train=16, num_tune=12, num_val=12, num_pretrain=0)
SMALL_BOUND = 0.08    # median foreground share per image: the small tree's below, the default's above


def test_small_object_tree_has_small_foreground(tmp_path):
    """data.synthetic.object_scale: the small-object setting puts most images' foreground at a
    few % of the image, the default's well above; only the small tree's marker records it."""
    default, small = tmp_path / "default", tmp_path / "small"
    synthetic.generate(default, seed=5, **SMOKE_TREE)
    synthetic.generate(small, seed=5, object_scale=synthetic.SMALL_OBJECT_SCALE, **SMOKE_TREE)
    fd = synthetic.foreground_fractions(default, "train_aug")
    fs = synthetic.foreground_fractions(small, "train_aug")
    assert len(fd) == len(fs) == 48 and (fs > 0).all()          # every small image still has an object
    assert np.median(fs) < SMALL_BOUND < np.median(fd)
    assert "object_scale" not in json.loads((default / ".complete").read_text())
    assert json.loads((small / ".complete").read_text())["object_scale"] == list(synthetic.SMALL_OBJECT_SCALE)


@pytest.mark.parametrize("scale", [[0.3, 0.1], [0.0, 0.5], [0.2, 1.5], [0.2, 0.2], [0.1]])
def test_object_scale_is_validated(scale, tmp_path):
    from dfa.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.synthetic.object_scale"):
        load_config(None, [f"data.synthetic.object_scale={scale}"])
    with pytest.raises(ValueError, match="object_scale"):
        synthetic.generate(tmp_path / "bad", object_scale=scale, **SMALL)
    assert load_config(None, ["data.synthetic.object_scale=[0.1, 1.0]"]).data.synthetic.object_scale == [0.1, 1.0]


def test_synthetic_cooccurrence():
    # The preferred background shows up far above chance (1/5) for the first class.
    hits, n = 0, 120
    for i in range(n):
        _, _, entry = synthetic.make_sample(1, i)
        first = entry["objects"][0]["class"]
        hits += entry["background"] == synthetic.PREFERRED_BACKGROUND[first]
    assert hits / n > 0.5


# ----------------------------------------------------------------------------- io
def test_read_image_grayscale_cmyk_and_truncated(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("L").save(tmp_path / "g.jpg")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    assert read_image(tmp_path / "g.jpg").shape == (30, 41, 3)
    assert read_image(tmp_path / "c.jpg").shape == (30, 41, 3)
    data = (tmp_path / "c.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.jpg"):
        read_image(tmp_path / "t.jpg")
    with pytest.raises(DataError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    Image.fromarray(np.full((5, 7), 3, np.uint8)).save(tmp_path / "l.png")  # grayscale index mask
    assert read_mask(tmp_path / "l.png").tolist() == np.full((5, 7), 3).tolist()
    write_mask(tmp_path / "p.png", np.array([[0, 1], [20, 255]], np.uint8))
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert read_mask(tmp_path / "p.png").tolist() == [[0, 1], [20, 255]]


# ----------------------------------------------------------------------------- checker on broken trees
def _corrupt(root: Path, how: str) -> Path:
    """Apply one corruption; return the file the report must name."""
    layout = Layout(root, "synthetic")
    names = layout.read_list("train_aug")
    if how == "truncated":
        p = layout.image_path(names[1])
        p.write_bytes(p.read_bytes()[:200])
        return p
    if how == "out_of_range":
        p = layout.mask_path(names[2])
        m = read_mask(p)
        m[0, 0] = 42
        write_mask(p, m)
        return p
    if how == "size_mismatch":
        p = layout.image_path(names[3])
        Image.fromarray(read_image(p)).resize((13, 17)).save(p)
        return layout.mask_path(names[3])
    if how == "missing_image":
        p = layout.image_path(names[4])
        p.unlink()
        return p
    if how == "empty_list":
        p = layout.list_path("val")
        p.write_text("\n")
        return p
    if how == "missing_mask":
        p = layout.mask_path(names[5])
        p.unlink()
        return p
    raise ValueError(how)


HOW = ["truncated", "out_of_range", "size_mismatch", "missing_image", "empty_list", "missing_mask"]


@pytest.mark.parametrize("how", HOW)
def test_checker_reports_each_problem_naming_the_file(syn_copy, how):
    path = _corrupt(syn_copy, how)
    problems = check_tree(Layout(syn_copy, "synthetic"), 9)
    assert problems and any(str(path) in p for p in problems), problems
    if how == "out_of_range":
        assert any("42" in p for p in problems)


def test_checker_reports_all_problems_at_once(syn_copy, capsys):
    layout = Layout(syn_copy, "synthetic")
    paths = [_corrupt(syn_copy, how) for how in HOW]
    names = layout.read_list("train_aug")
    gray, cmyk = layout.image_path(names[6]), layout.image_path(names[7])
    Image.open(gray).convert("L").save(gray)      # fine: read as RGB
    Image.open(cmyk).convert("CMYK").save(cmyk)
    problems = check_tree(layout, 9)
    for p in paths:
        assert any(str(p) in line for line in problems), (p, problems)
    assert not any(str(gray) in line or str(cmyk) in line for line in problems)
    assert check_data_main(syn_copy, "synthetic") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(str(p) in err for p in paths)


def test_checker_labels_and_missing_split(syn_copy):
    layout = Layout(syn_copy, "synthetic")
    labels = np.load(layout.labels_path(), allow_pickle=True).item()
    names = layout.read_list("train_aug")
    del labels[names[0]]
    labels[names[1]] = np.zeros(5, np.float32)
    flipped = labels[names[2]].copy()
    flipped[:] = 1 - flipped
    labels[names[2]] = flipped
    _save_labels(syn_copy, labels)
    problems = check_tree(layout, 9, splits=["train_aug", "nosuch"], expected_counts={"train_aug": 99})
    text = "\n".join(problems)
    assert f"no image-level label for {names[0]}" in text
    assert f"label of {names[1]} has length 5" in text
    assert f"label of {names[2]} lacks" in text and f"label of {names[2]} has class" in text
    assert "nosuch.txt" in text and "expected 99" in text
    layout.labels_path().write_bytes(b"garbage")
    assert any("cls_labels_onehot.npy" in p for p in check_tree(layout, 9))


# ----------------------------------------------------------------------------- hand-made VOC and COCO trees
def test_voc_layout_tree(tmp_path, capsys):
    rng = np.random.default_rng(0)
    layout = Layout(tmp_path / "VOC2012", "voc")
    items = {"2007_000032": _item(37, 53, [1, 15], 20, rng, band=True),
             "2007_000039": _item(60, 41, [20], 20, rng, band=True),
             "2008_000002": _item(45, 45, [7, 9, 12], 20, rng)}
    _make_tree(layout, {"train_aug": ["2007_000032", "2007_000039"], "train": ["2007_000032"],
                        "val": ["2008_000002"]}, items)
    assert check_tree(layout, 21) == []
    assert check_data_main(layout.root, "voc") == 1  # 2 images is not VOC's 10582
    assert "10582" in capsys.readouterr().err
    ds = WSSSDataset(layout, "train_aug")
    item = ds[1]
    assert item["image"].shape == (3, 60, 41) and item["mask"].shape == (60, 41)
    assert item["raw"].dtype == torch.uint8 and item["raw"].shape == (60, 41, 3)
    assert item["label"].shape == (20,) and item["label"][19] == 1 and item["label"].sum() == 1
    assert item["mask"].dtype == torch.long and 255 in item["mask"].unique().tolist()
    ds = WSSSDataset(layout, "train", TrainTransform(32, generator=torch.Generator().manual_seed(0)))
    assert ds[0]["image"].shape == (3, 32, 32) and ds[0]["mask"].shape == (32, 32)
    ds = WSSSDataset(layout, "val", EvalTransform((32, 48)), with_mask=False)
    assert "mask" not in ds[0] and ds[0]["image"].shape == (3, 32, 48)


def test_coco_layout_tree(tmp_path):
    rng = np.random.default_rng(1)
    layout = Layout(tmp_path / "coco", "coco")
    tr, va = "COCO_train2014_000000000009", "COCO_val2014_000000000042"
    items = {tr: _item(40, 57, [1, 80], 80, rng), va: _item(51, 33, [45], 80, rng)}
    _make_tree(layout, {"train": [tr], "val": [va]}, items)
    assert layout.image_path(tr) == layout.root / "JPEGImages" / "train2014" / f"{tr}.jpg"
    assert layout.mask_path(va) == layout.root / "SegmentationClass" / "val2014" / f"{va}.png"
    assert check_tree(layout, 81) == []
    assert check_tree(layout, 21) != []  # 80 is out of range for VOC's 21 classes
    item = WSSSDataset(layout, "val", num_fg=80)[0]
    assert item["label"].shape == (80,) and item["label"][44] == 1
    assert item["image"].shape == (3, 51, 33)


def test_a_coco_tune_split_is_kept_apart_from_val_not_from_train(tmp_path):
    """COCO's seeds are scored on val (profiles/coco.yaml): its tune, drawn from train2014, may not
    meet val, and may lie anywhere in train (the VOC rule, tune outside `train`, would refuse every
    COCO tune split: the rehearsal of a COCO run stopped there)."""
    rng = np.random.default_rng(2)
    layout = Layout(tmp_path / "coco", "coco")
    trs = [f"COCO_train2014_{i:012d}" for i in range(4)]
    va = "COCO_val2014_000000000042"
    items = {n: _item(40, 57, [1], 80, rng) for n in trs} | {va: _item(51, 33, [45], 80, rng)}
    _make_tree(layout, {"train": trs, "val": [va], "tune": trs[:2]}, items)
    assert check_tree(layout, 81, ["train", "val", "tune"]) == []
    (layout.list_path("tune")).write_text(f"{trs[0]}\n{va}\n")
    problems = check_tree(layout, 81, ["train", "val", "tune"])
    assert any("also in" in p and "the reported seed and evaluation split" in p for p in problems), problems
    assert sum("also in" in p for p in problems) == 1          # val is both roles: one line, not two
    # the same tree read with VOC's roles (seeds on train) refuses the tune split drawn from train
    voc_roles = {"train": "train", "seed": "train", "evaluation": "val"}
    (layout.list_path("tune")).write_text(f"{trs[0]}\n")
    assert any("the reported seed split" in p for p in check_tree(layout, 81, ["train", "val", "tune"], roles=voc_roles))


def test_labels_come_from_npy_not_mask(tmp_path):
    rng = np.random.default_rng(2)
    layout = Layout(tmp_path / "t", "custom")
    image, mask, _ = _item(30, 40, [3], 20, rng)
    npy_label = np.zeros(20, np.float32)
    npy_label[4] = 1  # says class 5, the mask shows class 3
    _make_tree(layout, {"train_aug": ["a"], "train": ["a"], "val": ["a"]}, {"a": (image, mask, npy_label)})
    item = WSSSDataset(layout, "train_aug")[0]
    assert item["label"].tolist() == npy_label.tolist()
    problems = check_tree(layout, 21, splits=["train_aug"])
    assert any("lacks class(es) 3" in p for p in problems) and any("has class(es) 5" in p for p in problems)
    _save_labels(layout.root, {})
    with pytest.raises(DataError, match="cls_labels_onehot.npy"):
        WSSSDataset(layout, "train_aug")
    layout.list_path("val").write_text("")
    with pytest.raises(DataError, match="val.txt"):
        layout.read_list("val")


def test_read_list_formats(tmp_path):
    layout = Layout(tmp_path, "voc")
    layout.list_path("train").parent.mkdir(parents=True)
    layout.list_path("train").write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n\nb.c\n")
    assert layout.read_list("train") == ["2007_000032", "b.c"]
    with pytest.raises(DataError, match="val.txt"):
        layout.read_list("val")
    with pytest.raises(DataError, match="nowhere"):
        Layout(tmp_path, "coco").image_path("nowhere_000001")
    Image.new("RGB", (4, 3)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png"):
        read_mask(tmp_path / "rgb.png")


# ----------------------------------------------------------------------------- transforms
def test_train_transform_shapes_and_padding():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (20, 30), dtype=np.uint8)
    t = TrainTransform(48, scale_range=(1.0, 1.0), flip=False, generator=torch.Generator().manual_seed(0))
    img, m, raw = t(image, mask)
    assert img.shape == (3, 48, 48) and m.shape == (48, 48) and raw.shape == (48, 48, 3)
    pad = m == 255
    assert pad.sum() == 48 * 48 - 20 * 30
    assert torch.all(img[:, pad] == 0)  # mean padding normalises to exactly 0
    assert raw[pad].tolist()[0] == [round(v) for v in IMAGENET_MEAN]
    assert set(m[~pad].unique().tolist()) <= set(range(5))
    # Same generator seed -> same sample; big images are cropped without padding.
    big = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    a = TrainTransform(32, generator=torch.Generator().manual_seed(5))(big, None)
    b = TrainTransform(32, generator=torch.Generator().manual_seed(5))(big, None)
    assert torch.equal(a[0], b[0]) and a[1] is None and a[0].shape == (3, 32, 32)
    t = TrainTransform(16, scale_range=(1.0, 1.0), generator=torch.Generator().manual_seed(1))
    img, m, raw = t(big, np.zeros((90, 70), np.uint8))
    assert (m == 255).sum() == 0


def test_eval_transform_keeps_mask_size():
    image = np.zeros((25, 35, 3), np.uint8)
    mask = np.ones((25, 35), np.uint8)
    img, m, raw = EvalTransform((16, 24))(image, mask)
    assert img.shape == (3, 16, 24) and raw.shape == (16, 24, 3) and m.shape == (25, 35)
    img, m, raw = EvalTransform()(image, None)
    assert img.shape == (3, 25, 35) and m is None


def test_checker_reports_image_without_foreground_label(syn_copy):
    labels = np.load(syn_copy / "cls_labels_onehot.npy", allow_pickle=True).item()
    name = sorted(labels)[0]
    labels[name] = np.zeros_like(labels[name])
    np.save(syn_copy / "cls_labels_onehot.npy", labels, allow_pickle=True)
    problems = check_tree(Layout(syn_copy, "synthetic"), 9)
    assert any("no foreground class" in p and name in p for p in problems)


# --- the tune split (method.md §12) ------------------------------------------------------

def test_synthetic_tune_split_is_disjoint_from_train_and_val(syn_root):
    layout = Layout(syn_root, "synthetic")
    lists = {s: layout.read_list(s) for s in ("train_aug", "train", "tune", "val")}
    tune = set(lists["tune"])
    assert len(tune) == len(lists["train"]) == 8                       # the size of train
    assert tune <= set(lists["train_aug"])
    assert not tune & set(lists["train"]) and not tune & set(lists["val"])


def test_checker_flags_a_tune_split_that_leaks(syn_copy):
    layout = Layout(syn_copy, "synthetic")
    train = layout.read_list("train")
    layout.list_path("tune").write_text("\n".join(layout.read_list("tune")[:-1] + [train[0]]) + "\n")
    problems = check_tree(layout, 9)
    assert any("tune.txt" in p and "train.txt" in p for p in problems)


def test_prepare_draws_a_tune_split_for_a_real_tree(tmp_path):
    """A VOC/custom tree without tune.txt gets one: disjoint from train and val, inside
    train_aug, the size of train, the same on every call."""
    from dfa.data.splits import draw_tune, ensure_tune
    rng = np.random.default_rng(0)
    layout = Layout(tmp_path, "custom")
    names = [f"im{i:03d}" for i in range(30)]
    items = {n: _item(16, 20, [1], 2, rng) for n in names}
    _make_tree(layout, {"train_aug": names[:24], "train": names[:6], "val": names[24:]}, items)
    assert ensure_tune(layout, "train_aug", "train", "val")
    tune = layout.read_list("tune")
    assert len(tune) == 6 and not set(tune) & set(names[:6]) and set(tune) <= set(names[:24])
    assert not ensure_tune(layout, "train_aug", "train", "val")        # never overwritten
    assert tune == draw_tune(names[:24], names[:6], names[24:], 6, 0)
    with pytest.raises(DataError):
        draw_tune(names[:8], names[:6], [], 6)
# ----------------------------------------------------------------------------- check-data without --kind
def test_check_data_guesses_synthetic_and_custom(syn_copy, capsys):
    from dfa.data.checker import guess_kind

    assert guess_kind(syn_copy) == ("synthetic", "classes.json lists the embedded benchmark's 8 classes")
    # The case: a custom tree with its own classes.json was called "synthetic".
    spec = load_class_spec(syn_copy)
    renamed = ClassSpec([f"thing{i}" for i in range(len(spec.classes))], {}, spec.background)
    write_class_spec(syn_copy, renamed)
    assert guess_kind(syn_copy)[0] == "custom"
    assert check_data_main(syn_copy) == 0
    out = capsys.readouterr().out
    assert out.startswith("assumed --kind custom: classes.json lists 8 classes of its own\n")
    assert f"OK: {syn_copy} (custom, 9 classes incl. background)" in out


def test_check_data_guesses_voc_and_coco_by_their_layout(tmp_path, capsys):
    from dfa.data.checker import guess_kind

    rng = np.random.default_rng(0)
    voc = Layout(tmp_path / "VOC2012", "voc")
    _make_tree(voc, {"train_aug": ["2007_000032"], "train": ["2007_000032"], "val": ["2008_000002"]},
               {"2007_000032": _item(37, 53, [1, 15], 20, rng), "2008_000002": _item(45, 45, [7], 20, rng)})
    kind, why = guess_kind(voc.root)
    assert kind == "voc" and "train, train_aug, val" in why
    assert check_data_main(voc.root) == 1  # checked as VOC: 1 image is not VOC's 10582
    captured = capsys.readouterr()
    assert captured.out.startswith("assumed --kind voc") and "expected 10582" in captured.err
    coco = Layout(tmp_path / "coco2014", "coco")
    _make_tree(coco, {"train": ["COCO_train2014_000000000009"]},
               {"COCO_train2014_000000000009": _item(30, 40, [3], 80, rng)})
    assert guess_kind(coco.root) == ("coco", "JPEGImages/train2014/ is the COCO 2014 layout")


def test_check_data_without_a_clue_asks_for_kind(tmp_path, capsys):
    from dfa.data.checker import guess_kind

    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DataError, match="cannot tell the dataset kind.*--kind"):
        guess_kind(tmp_path)
    assert check_data_main(tmp_path) == 1
    assert "pass --kind" in capsys.readouterr().err
    assert check_data_main(tmp_path / "missing") == 1
    assert "dataset folder not found" in capsys.readouterr().err


def test_check_data_cli_says_the_guessed_kind(syn_copy, dfa_cli, tmp_path):
    """``dfa check-data ROOT`` ignores params' data.name (synthetic) and names the guessed kind."""
    from tests.conftest import REPO

    write_class_spec(syn_copy, ClassSpec(["a", "b", "c", "d", "e", "f", "g", "h"], {}, ["floor"]))
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    out = dfa_cli(tmp_path, "check-data", str(syn_copy)).stdout
    assert "assumed --kind custom" in out and "(custom, 9 classes" in out and "(synthetic" not in out
    out = dfa_cli(tmp_path, "check-data", str(syn_copy), "--kind", "synthetic").stdout
    assert "assumed" not in out and "(synthetic, 9 classes" in out
