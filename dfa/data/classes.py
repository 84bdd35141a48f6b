"""Class names, synonyms and background prompts of a dataset.

Index convention everywhere in the workbench: 0 = background, 1..K = ``classes`` in order,
255 = ignore. ``num_classes`` therefore counts the background (VOC: 21, COCO: 81).

A tree may carry its own ``classes.json`` =
``{"classes": [...], "synonyms": {name: [words]}, "background": [prompts]}``;
it overrides the built-ins (see :func:`spec_for`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dfa.io import write_json


@dataclass(frozen=True)
class ClassSpec:
    """Foreground class names (index i+1), their synonyms and the background prompts."""

    classes: list[str]
    synonyms: dict[str, list[str]] = field(default_factory=dict)
    background: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Foreground classes + 1 (background at index 0)."""
        return len(self.classes) + 1

    @property
    def num_fg(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict:
        return {"classes": list(self.classes), "synonyms": {k: list(v) for k, v in self.synonyms.items()},
                "background": list(self.background)}


# [anchor] the CLIP-ES / WeCLIP / ExCEL background prompt list (method.md §1).
VOC_BACKGROUND = ["ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water",
                  "river", "sea", "railway", "railroad", "keyboard", "helmet", "cloud", "house",
                  "mountain", "ocean", "road", "rock", "street", "valley", "bridge", "sign"]
COCO_BACKGROUND = [b for b in VOC_BACKGROUND if b not in ("keyboard", "sign")]  # both are COCO-ish objects

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
VOC_SYNONYMS = {"bird": ["avian"], "chair": ["seat"], "person": ["person with clothes", "people", "human"],
                "tvmonitor": ["screen"]}

# COCO 2014 in the order of the 80 category ids, spelled as the VOC-style COCO anchors spell them.
COCO_CLASSES = [
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "sofa", "pottedplant", "bed",
    "diningtable", "toilet", "tvmonitor", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush"]

VOC_SPEC = ClassSpec(VOC_CLASSES, VOC_SYNONYMS, VOC_BACKGROUND)
COCO_SPEC = ClassSpec(COCO_CLASSES, dict(VOC_SYNONYMS), COCO_BACKGROUND)


def _bad(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: {why}")


def load_class_spec(root: str | Path) -> ClassSpec:
    """Read and validate ``root/classes.json``; ValueError naming the file on bad content."""
    path = Path(root) / "classes.json"
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise _bad(path, "missing (a custom/synthetic tree needs classes.json)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise _bad(path, f"unreadable JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _bad(path, "expected a JSON object with 'classes', 'synonyms', 'background'")
    classes = obj.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise _bad(path, "'classes' must be a non-empty list of non-empty strings")
    if len(set(classes)) != len(classes):
        raise _bad(path, "'classes' has duplicate names")
    synonyms = obj.get("synonyms", {})
    if not isinstance(synonyms, dict) or not all(
            k in classes and isinstance(v, list) and all(isinstance(w, str) for w in v)
            for k, v in synonyms.items()):
        raise _bad(path, "'synonyms' must map class names listed in 'classes' to lists of strings")
    background = obj.get("background", [])
    if not isinstance(background, list) or not all(isinstance(b, str) and b for b in background):
        raise _bad(path, "'background' must be a list of non-empty strings")
    return ClassSpec(list(classes), {k: list(v) for k, v in synonyms.items()}, list(background))


def write_class_spec(root: str | Path, spec: ClassSpec) -> None:
    """Write ``root/classes.json`` atomically."""
    write_json(Path(root) / "classes.json", spec.to_json())


def spec_for(name: str, root: str | Path | None = None) -> ClassSpec:
    """The class spec of a dataset kind; a ``classes.json`` in ``root`` always wins."""
    if root is not None and (Path(root) / "classes.json").exists():
        return load_class_spec(root)
    builtin = {"voc": VOC_SPEC, "coco": COCO_SPEC}
    if name in builtin:
        return builtin[name]
    if name in ("synthetic", "custom"):
        if root is None:
            raise ValueError(f"dataset kind {name!r} needs a root with classes.json")
        return load_class_spec(root)
    raise ValueError(f"unknown dataset kind {name!r} (voc, coco, synthetic, custom)")
