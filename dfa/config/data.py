"""Section ``data`` (and ``data.synthetic``): the dataset and its views (method.md §6, §8)."""
from __future__ import annotations

from dataclasses import dataclass, field

from dfa.config.checks import ConfigError, _choice, _positive


IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class SyntheticConfig:
    """The embedded benchmark (shared/benchmark.md)."""
    seed: int = 0
    num_train_aug: int = 3000
    num_train: int = 300
    num_tune: int = 300
    num_val: int = 300
    num_pretrain: int = 4000
    size_range: list[int] = field(default_factory=lambda: [64, 112])
    variant: str = "base"   # base | alt: the second benchmark (other classes, shapes, sizes; issue 11)
    # Object size (equivalent diameter) as a fraction of the image's short side, drawn uniformly
    # in [lo, hi]; the small-object benchmark (make ablation-table-small) uses [0.1, 0.3].
    object_scale: list[float] = field(default_factory=lambda: [0.12, 0.7])


@dataclass
class DataConfig:
    """Dataset and views (method.md §6, §8). ``name``: synthetic | voc | coco | custom.
    ``download``: for voc, fetch VOC 2012 + SBD and build ``root`` if it lacks the layout (needs internet)."""
    name: str = "synthetic"
    root: str = "data/synthetic"
    download: bool = False
    train_split: str = "train_aug"
    seed_split: str = "train"
    tune_split: str = "tune"     # method.md §12: defaults and calibrations are chosen here only
    eval_split: str = "val"
    crop_size: int = 64
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    workers: int = 0
    max_seed_images: int = 0  # 0 = the whole seed split
    max_eval_images: int = 0  # 0 = the whole evaluation split
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def check(self) -> None:
        _choice("data.name", self.name, ("synthetic", "voc", "coco", "custom"))
        _choice("data.synthetic.variant", self.synthetic.variant, ("base", "alt"))
        scale = self.synthetic.object_scale
        if len(scale) != 2 or not 0 < scale[0] < scale[1] <= 1:
            raise ConfigError(f"data.synthetic.object_scale: need [lo, hi] with 0 < lo < hi <= 1 "
                              f"(fractions of the image's short side), got {scale}")
        _positive("data.crop_size", self.crop_size)
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(f"data.scale_range: need [low, high] with 0 < low <= high, got {self.scale_range}")
