"""Typed configuration: ``params.yaml`` becomes these dataclasses once, at the edge.

Every open choice of ``method.md`` is a named field here with the spec's default; the
docstring of each section names the ``method.md`` section it configures. Loading rejects
unknown keys, wrong types and out-of-range values with one message naming the key.
Overrides use dotted keys, ``-S train.steps=100``, parsed as YAML scalars like
``dvc exp run -S``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


# Autocast choices of the encoder and the decoder (issue 5): bf16 runs only on CUDA; the OT
# step and the losses always run in fp32.
PRECISIONS = ("auto", "fp32", "bf16")


def bf16_autocast(precision: str, device_type: str) -> bool:
    """Whether a ``*.precision`` choice runs under bf16 autocast on this device type."""
    return device_type == "cuda" and precision != "fp32"


class ConfigError(ValueError):
    """A bad key, type or value in params or overrides; the message names the key."""


CEILINGS = ("none", "teacher", "labels", "areas", "grid")


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
        _positive("data.crop_size", self.crop_size)
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(f"data.scale_range: need [low, high] with 0 < low <= high, got {self.scale_range}")


@dataclass
class ClipConfig:
    """Frozen CLIP backbone (method.md §1).

    ``model``/``pretrained``: open_clip names (``ViT-B-16``/``openai`` on VOC/COCO), or the
    project's ``dfa-tiny-vit`` pretrained by ``dfa pretrain-clip`` into ``checkpoint``.
    ``similarity`` (choice ``cam.similarity``): surgery | maskclip | raw | gradcam.
    """
    model: str = "dfa-tiny-vit"
    pretrained: str | None = None
    checkpoint: str | None = "checkpoints/clip/model.pt"
    last_k: int = 4
    similarity: str = "surgery"
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16: autocast of the frozen encoder
    # Blocks whose patch tokens feed the decoder (and the cache); null = every block (§6).
    # On VOC, e.g. [-4, -3, -2, -1] cuts the cache's tokens from 7.4 to 2.5 MB per view.
    decoder_layers: list[int] | None = None

    def check(self) -> None:
        _positive("clip.last_k", self.last_k)
        _choice("clip.similarity", self.similarity, ("surgery", "maskclip", "raw", "gradcam"))
        _choice("clip.precision", self.precision, PRECISIONS)


@dataclass
class PretrainConfig:
    """Contrastive pretraining of the embedded benchmark's small CLIP (benchmark.md)."""
    image_size: int = 64
    patch_size: int = 8
    width: int = 192
    layers: int = 6
    heads: int = 3
    embed_dim: int = 128
    pool: str = "avg"
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 2
    context_length: int = 16
    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    object_crop_prob: float = 0.5

    def check(self) -> None:
        for k in ("image_size", "patch_size", "width", "layers", "heads", "embed_dim", "steps", "batch_size"):
            _positive(f"pretrain.{k}", getattr(self, k))
        _choice("pretrain.pool", self.pool, ("avg", "tok"))
        _range("pretrain.object_crop_prob", self.object_crop_prob, 0.0, 1.0)


@dataclass
class CacheConfig:
    """Frozen-encoder feature cache (issue 3 item 6, issue 5 item 1)."""
    enabled: bool = True
    dir: str = "cache/features"
    dtype: str = "float16"
    flip: bool = True
    shard_size: int = 256
    # Batches read ahead by a background thread while the current step runs (pinned host
    # memory on CUDA); 0 reads each batch synchronously. Same batches either way.
    prefetch: int = 2

    def check(self) -> None:
        _choice("cache.dtype", self.dtype, ("float16", "float32"))
        _positive("cache.shard_size", self.shard_size)
        if self.prefetch < 0:
            raise ConfigError(f"cache.prefetch: must be >= 0, got {self.prefetch!r}")


@dataclass
class CamConfig:
    """The raw CAM's columns (method.md §1): ``background`` = residual | prompts | prompt_minmax."""
    background: str = "residual"

    def check(self) -> None:
        _choice("cam.background", self.background, ("residual", "prompts", "prompt_minmax"))


@dataclass
class AffinityConfig:
    """Dual-path affinity (method.md §2). ``inverse``: spatial (v2) | operator (v1)."""
    inverse: str = "spatial"
    hidden: int = 32
    # How the heads start. ``mean`` (v2): each head is a monotone map of the layer mean of its
    # input (A_s: log(N·W), the geometric layer mean of the attention; A_inv: N·W_inv), so
    # row 1 uses a meaningful untrained high-pass affinity. ``attention`` (v1): A_s only.
    # ``random``: PyTorch's default (an untrained head is then a near-constant map).
    head_init: str = "mean"
    # ``pointwise`` (§2): the heads see the K attention maps entry by entry. ``bilinear`` (not in the
    # paper): one more channel, cos(P x_i, P x_j) of the last block's frozen tokens (P: D → ``rank``),
    # starting silent, so a head can learn a relation the attention lacks (dfa.affinity.TokenRelation).
    head: str = "pointwise"
    rank: int = 64
    renorm_rows: bool = True  # §1 v2: attention rows sum to 1 again after dropping CLS (v1: false)
    sinkhorn_rounds: int = 3
    square: bool = True

    def check(self) -> None:
        _choice("affinity.inverse", self.inverse, ("operator", "spatial"))
        _choice("affinity.head_init", self.head_init, ("mean", "attention", "random"))
        _choice("affinity.head", self.head, ("pointwise", "bilinear"))
        _positive("affinity.rank", self.rank)
        _positive("affinity.hidden", self.hidden)
        _positive("affinity.sinkhorn_rounds", self.sinkhorn_rounds)


@dataclass
class FrequencyConfig:
    """Frequency split and relation maps (method.md §3-4, §10).

    ``box``: ``auto`` (the ``box_rule`` applied to the grid, §10) or an odd width in tokens;
    ``box_rule``: odd (v2) | v1; ``relation``: softmax (v2) | centred (v1) | raw (paper).
    """
    ratio: float = 0.25
    box: int | str = "auto"
    box_rule: str = "odd"
    relation: str = "softmax"
    temperature: float = 0.1

    def check(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"frequency.ratio: must lie in (0, 1], got {self.ratio}")
        _auto_or_positive("frequency.box", self.box)
        _choice("frequency.box_rule", self.box_rule, ("odd", "v1"))
        _choice("frequency.relation", self.relation, ("softmax", "centred", "raw"))
        _positive("frequency.temperature", self.temperature)


@dataclass
class LossConfig:
    """LFAA / HFAR losses and weights (method.md §3, §4, §6, §10).

    ``radius``/``window``: ``auto`` (§10: round(0.4·n), the odd number nearest 0.45·n) or tokens.
    ``align_mask``: alpha (v2) | alpha_v1 | topk; ``align_form``: renormalized (v2) | row (the
    student normalised over its whole row) | printed (v1) | generalized; ``token_labels``: majority (v2) | nearest (v1).
    """
    lambda_align: float = 0.1
    lambda_rect: float = 0.2
    alpha_init: float = 0.5
    alpha_momentum: float = 0.9
    align_mask: str = "alpha"
    align_keep: float = 0.25
    align_form: str = "renormalized"
    align_start: float = 0.2       # fraction of train.steps before L_a and L_r switch on
    radius: int | str = "auto"
    window: int | str = "auto"
    hist_cos: float = 0.5
    token_labels: str = "majority"
    label_margin: float = 0.1
    hfar_diagonal: bool = False    # v1 kept the diagonal pairs and S̄_h over all N² pairs

    def check(self) -> None:
        _nonneg("loss.lambda_align", self.lambda_align)
        _nonneg("loss.lambda_rect", self.lambda_rect)
        _range("loss.alpha_momentum", self.alpha_momentum, 0.0, 1.0)
        _range("loss.alpha_init", self.alpha_init, 0.0, 1.0)
        _choice("loss.align_mask", self.align_mask, ("alpha", "alpha_v1", "topk"))
        _range("loss.align_keep", self.align_keep, 0.0, 1.0)
        _choice("loss.align_form", self.align_form, ("renormalized", "row", "printed", "generalized"))
        _range("loss.align_start", self.align_start, 0.0, 1.0)
        _auto_or_positive("loss.radius", self.radius)
        _auto_or_positive("loss.window", self.window)
        _choice("loss.token_labels", self.token_labels, ("majority", "nearest"))
        _range("loss.label_margin", self.label_margin, 0.0, 1.0)


@dataclass
class OTConfig:
    """Frequency-guided CAM generation by optimal transport (method.md §5, v2).

    ``formulation``: balanced | relaxed | dustbin | reweight; ``prior``: cam_area |
    softmax_sum | tempered | uniform | decoder | oracle (the ``areas`` ceiling only);
    ``readout``: posterior | colmax (v1); ``normalize``: class | image; ``score``: fixed |
    literal. ``reg_m`` is τ_m of the relaxed columns; ``tau`` the ``tempered`` prior's
    temperature. ``debug``: ``dfa pseudo`` writes every image's plan column sums (background
    first, absent classes null) to ``outputs/pseudo/ot_columns.json``, so a collapse is visible.
    """
    score: str = "fixed"
    formulation: str = "balanced"
    prior: str = "cam_area"
    prior_mix: float = 0.2
    tau: float = 0.1
    reg_m: float = 0.3
    readout: str = "posterior"
    normalize: str = "class"
    epsilon: float = 0.1
    max_iters: int = 100
    tol: float = 1e-6
    lambda_l: float = 1.0
    lambda_h: float = 0.1
    debug: bool = False

    def check(self) -> None:
        _choice("ot.score", self.score, ("fixed", "literal"))
        _choice("ot.formulation", self.formulation, ("balanced", "relaxed", "dustbin", "reweight"))
        _choice("ot.prior", self.prior, ("cam_area", "softmax_sum", "tempered", "uniform", "decoder", "oracle"))
        _choice("ot.readout", self.readout, ("posterior", "colmax"))
        _choice("ot.normalize", self.normalize, ("class", "image"))
        _range("ot.prior_mix", self.prior_mix, 0.0, 1.0)
        _positive("ot.tau", self.tau)
        _positive("ot.reg_m", self.reg_m)
        _positive("ot.epsilon", self.epsilon)
        _positive("ot.max_iters", self.max_iters)
        _nonneg("ot.lambda_l", self.lambda_l)
        _nonneg("ot.lambda_h", self.lambda_h)


@dataclass
class RefineConfig:
    """Background score and PAR (method.md §5). ``bg_power`` is the exponent of the background
    channel; ``bg_grid`` the values ``dfa pseudo`` and the ablation choose it from on the
    ``tune`` split for every row (§5, §12) when ``calibrate`` is on. Training calibrates its
    own pseudo-labels the same way when it starts, on ``calibrate_images`` tune images."""
    bg_power: float = 1.0
    calibrate: bool = True
    calibrate_images: int = 100   # tune images the training labels' power is chosen on at step 0 (0: all)
    bg_grid: list[float] = field(default_factory=lambda: [0.1, 0.15, 0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 3.0, 4.0])
    par_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 12, 24])
    par_iters: int = 20
    # PAR on the image resized by this factor, the result resized back: the anchors' default
    # (WeCLIP / ToCo ``refine_cams_with_bkg_v2(..., down_scale=2)``), 4x less work than 1.0.
    par_scale: float = 0.5

    def check(self) -> None:
        _positive("refine.bg_power", self.bg_power)
        if not self.bg_grid or any(not v > 0 for v in self.bg_grid):
            raise ConfigError(f"refine.bg_grid: need positive values, got {self.bg_grid}")
        if not 0 < self.par_scale <= 1:
            raise ConfigError(f"refine.par_scale: must lie in (0, 1], got {self.par_scale!r}")


@dataclass
class DecoderConfig:
    """Segmentation decoder (method.md §6)."""
    width: int = 256
    layers: int = 3
    heads: int = 8
    dropout: float = 0.1
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16: autocast of the decoder

    def check(self) -> None:
        _choice("decoder.precision", self.precision, PRECISIONS)


@dataclass
class TrainConfig:
    """Single-stage training (method.md §6)."""
    steps: int = 1000
    batch_size: int = 4
    lr: float = 2e-4
    decoder_lr_mult: float = 10.0
    # The affinity heads' lr is lr × head_lr_mult (§6: 1, over 30k steps). Not in the paper: on a
    # schedule of a few hundred steps the heads otherwise end within a few hundredths of their init.
    head_lr_mult: float = 1.0
    weight_decay: float = 0.01
    warmup: int = 50
    power: float = 1.0
    checkpoint_interval: int = 250
    log_interval: int = 10
    dir: str = "checkpoints/dfa"
    compile: bool = False  # torch.compile the decoder (nn.Module.compile keeps state_dict keys)

    def check(self) -> None:
        _positive("train.steps", self.steps)
        _positive("train.batch_size", self.batch_size)
        _positive("train.lr", self.lr)
        _positive("train.head_lr_mult", self.head_lr_mult)
        _nonneg("train.weight_decay", self.weight_decay)
        _nonneg("train.warmup", self.warmup)
        _positive("train.checkpoint_interval", self.checkpoint_interval)


@dataclass
class CRFConfig:
    """DenseCRF parameters (method.md §6 inference)."""
    enabled: bool = True
    iters: int = 10
    gauss_sxy: float = 1.0
    gauss_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0


@dataclass
class EvalConfig:
    """Evaluation (method.md §6, §8)."""
    scales: list[float] = field(default_factory=lambda: [1.0, 1.2, 1.5])
    flip: bool = True
    workers: int = 2
    crf: CRFConfig = field(default_factory=CRFConfig)
    grid_images: int = 6

    def check(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"eval.scales: need positive scales, got {self.scales}")
        _positive("eval.workers", self.workers)


@dataclass
class AblationConfig:
    """Ablation rows of method.md §7 and the toggles behind them.

    ``row`` (0-4) sets the toggles; ``null`` keeps the individual toggles as given.
    ``ceiling`` (§11): none | teacher (LFAA's S_l from ground truth) | labels (HFAR's Y from
    ground truth) | areas (OT's prior = ground-truth areas) | grid (the ground truth's
    majority per token, upsampled and refined by PAR). ``seeds``: the seeds of every table cell (§12).
    """
    row: int | None = 4
    learned_s: bool = True      # A_s from the trained MLP head (LFAA) instead of raw attention
    use_inverse: bool = True    # include the high-pass branch A_inv / A_ha
    align: bool = True          # L_a (LFAA) on
    rectify: bool = True        # L_r (HFAR) on
    combination: str = "ot"     # product = E(⊙) propagation; ot = FG scoring + Sinkhorn OT
    ceiling: str = "none"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    ROWS = {
        0: dict(learned_s=False, use_inverse=False, align=False, rectify=False, combination="product"),
        1: dict(learned_s=False, use_inverse=True, align=False, rectify=False, combination="product"),
        2: dict(learned_s=True, use_inverse=False, align=True, rectify=False, combination="product"),
        3: dict(learned_s=True, use_inverse=True, align=True, rectify=True, combination="product"),
        4: dict(learned_s=True, use_inverse=True, align=True, rectify=True, combination="ot"),
    }
    PAPER_SEED_MIOU = {0: 64.8, 1: 67.2, 2: 75.1, 3: 77.9, 4: 79.1}

    def check(self) -> None:
        if self.row is not None:
            if self.row not in self.ROWS:
                raise ConfigError(f"ablation.row: must be one of 0-4 or null, got {self.row}")
            for k, v in self.ROWS[self.row].items():
                setattr(self, k, v)
        _choice("ablation.combination", self.combination, ("product", "ot"))
        _choice("ablation.ceiling", self.ceiling, CEILINGS)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"ablation.seeds: need distinct seeds, got {self.seeds}")

    def describe(self) -> tuple[str, str]:
        """(affinity used, combination) as in method.md §7's table."""
        s = "A_la" if self.learned_s else "A_s"
        inv = ("A_ha" if self.rectify else "A_inv") if self.use_inverse else None
        if self.combination == "ot":
            return (f"{s}, {inv}" if inv else s), "FG (OT scoring)"
        return (f"{s} ⊙ {inv}" if inv else s), "E(⊙)"


@dataclass
class TrackingConfig:
    """MLflow tracking (issue 4). Relative sqlite paths resolve from the repository root."""
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "dfa"


@dataclass
class SearchConfig:
    """Optuna studies (issue 4) and their parallel workers (issue 13).

    ``storage``: an RDB URL; SQLite (one writer at a time) for one process, ``postgresql://``
    (psycopg 3) for ``--workers`` > 1 or workers on several machines. ``devices``: one
    ``CUDA_VISIBLE_DEVICES`` value per worker, round-robin (empty: workers inherit it).
    A worker that stops sending heartbeats every ``heartbeat_s`` for ``grace_s`` seconds has
    its trial failed and re-queued, at most ``max_retry`` times per trial.
    """
    storage: str = "sqlite:///optuna.db"
    train_steps: int = 300
    report_every: int = 100
    devices: list[int | str] = field(default_factory=list)
    heartbeat_s: int = 60
    grace_s: int = 180
    max_retry: int = 3

    def check(self) -> None:
        _positive("search.heartbeat_s", self.heartbeat_s)
        if not self.grace_s > self.heartbeat_s:
            raise ConfigError(f"search.grace_s: must be > search.heartbeat_s ({self.heartbeat_s}), got {self.grace_s}")
        _nonneg("search.max_retry", self.max_retry)


@dataclass
class Config:
    device: str = "auto"
    seed: int = 0
    # torch's intra-op threads. Fixed, because how a sum is split over threads changes its
    # rounding: 0 (torch's default, one per core) makes the numbers depend on the machine.
    threads: int = 2
    # torch.use_deterministic_algorithms (warn-only); on CUDA also a fixed cuBLAS workspace.
    deterministic: bool = True
    # A folder that takes every fixed artifact (reports/, outputs/, mlartifacts/) of a run that
    # must not touch the default run's: "" = the repository itself. The second embedded
    # benchmark runs with out_root=runs/alt (make ablation-table-alt); --smoke uses smoke/.
    out_root: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    frequency: FrequencyConfig = field(default_factory=FrequencyConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ot: OTConfig = field(default_factory=OTConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    smoke: bool = False
    # Where each value came from (dfa.profiles); set by load_config, outside the dataclass fields
    # so that to_dict/flat (fingerprints, MLflow params) do not carry it.
    provenance: typing.ClassVar = None

    def check(self) -> None:
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _nonneg("threads", self.threads)
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if hasattr(sub, "check"):
                sub.check()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, for MLflow params and fingerprints."""
        return flatten(self.to_dict())

    def out(self, path: str | Path) -> Path:
        """Where this run writes a stage's fixed artifact (``reports/metrics/train.json``,
        ``outputs/pseudo``, ...): see :func:`out_path`; ``out_root`` moves them all."""
        return Path(self.out_root) / path if self.out_root else out_path(path, self.smoke)


# ---------------------------------------------------------------------------- loading

SMOKE_OVERRIDES = {
    # --smoke: seconds, not minutes (tests and CI); everything else unchanged.
    "data.synthetic.num_train_aug": 48,
    "data.synthetic.num_train": 16,
    "data.synthetic.num_tune": 12,
    "data.synthetic.num_val": 12,
    "data.crop_size": 64,
    "data.synthetic.num_pretrain": 64,
    "data.max_seed_images": 16,
    "data.max_eval_images": 8,
    "pretrain.width": 64,
    "pretrain.layers": 2,
    "pretrain.heads": 2,
    "pretrain.embed_dim": 64,
    "pretrain.text_width": 64,
    "pretrain.text_layers": 1,
    "pretrain.steps": 20,
    "pretrain.batch_size": 16,
    "pretrain.warmup": 5,
    "clip.last_k": 2,
    "decoder.width": 32,
    "decoder.layers": 1,
    "decoder.heads": 2,
    "train.steps": 12,
    "train.batch_size": 2,
    "train.warmup": 2,
    "train.checkpoint_interval": 5,
    "eval.scales": [1.0, 1.2],
    "eval.grid_images": 2,
    "search.train_steps": 6,
    "search.report_every": 3,
    "refine.par_iters": 5,
    "refine.bg_grid": [0.5, 1.0, 2.0],
    "ablation.seeds": [0, 1],
}


# --smoke writes under smoke/ only, mirroring the normal layout, and logs to its own MLflow
# experiment (``<tracking.experiment>-smoke``), so checking an install never touches a real
# run's results. What the pipeline derives from the data goes there for every dataset ...
SMOKE_ROOT = Path("smoke")
SMOKE_PATHS = {
    "cache.dir": "smoke/cache/features",
    "train.dir": "smoke/checkpoints/dfa",
    "search.storage": "sqlite:///smoke/optuna.db",
}
# ... and on the embedded benchmark the dataset and the small CLIP are made by the pipeline
# too. A real dataset (voc, coco, custom) and its CLIP are inputs: read where they are.
SMOKE_SYNTHETIC_PATHS = {
    "data.root": "smoke/data/synthetic",
    "clip.checkpoint": "smoke/checkpoints/clip/model.pt",
}


def out_path(path: str | Path, smoke: bool) -> Path:
    """A fixed artifact path as a run writes it: unchanged, or under ``smoke/`` with ``--smoke``.

    For the paths stages write without a params key (``reports/...``, ``outputs/...``, the
    ablation and search checkpoints); the keyed ones are moved by ``SMOKE_PATHS``.
    """
    return SMOKE_ROOT / path if smoke else Path(path)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` → (``a.b``, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse {raw!r} ({exc})") from None
    return key, value


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    node = d
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; a missing or bad file is a ConfigError naming it."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: {what} not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return raw


def load_config(path: str | Path | None = "params.yaml", overrides: list[str] | tuple[str, ...] = (),
                smoke: bool = False) -> Config:
    """Read params (if the file exists), apply the profile, ``--smoke``, then ``-S`` overrides,
    validate; ``cfg.provenance`` says where each value came from (:mod:`dfa.profiles`)."""
    from dfa import profiles

    raw: dict[str, Any] = read_yaml_mapping(path, "params file") if path is not None else {}
    parsed = [parse_override(t) for t in overrides]
    # ``profile`` (top level, or -S profile=NAME / --profile NAME) picks a params layer; it is
    # not a Config field, so the fingerprints and MLflow params of a run without one are unchanged.
    profile = raw.pop("profile", None)
    profile = next((v for k, v in reversed(parsed) if k == "profile"), profile)
    parsed = [(k, v) for k, v in parsed if k != "profile"]
    if profile is not None and not isinstance(profile, str):
        raise ConfigError(f"profile: expected a profile name, got {profile!r}")
    layers: list[tuple[str, dict[str, Any]]] = []
    if profile:
        try:
            values = profiles.read_profile(profile, set(Config().flat()))
        except profiles.ProfileError as exc:
            raise ConfigError(str(exc)) from None
        for k, v in values.items():
            set_dotted(raw, k, v)
        layers.append((f"profile:{profile}", values))
    if smoke:
        name = dict(parsed).get("data.name", (raw.get("data") or {}).get("name", "synthetic"))
        experiment = (raw.get("tracking") or {}).get("experiment", TrackingConfig.experiment)
        values = {**SMOKE_OVERRIDES, **SMOKE_PATHS, **(SMOKE_SYNTHETIC_PATHS if name == "synthetic" else {}),
                  "tracking.experiment": f"{experiment}-smoke", "smoke": True}
        for k, v in values.items():
            set_dotted(raw, k, v)
        layers.append(("smoke", values))
    for k, v in parsed:
        set_dotted(raw, k, v)
    layers.append(("override", dict(parsed)))
    cfg = build(Config, raw, "")
    cfg.check()
    cfg.provenance = profiles.Provenance(profile or None, profiles.sources(cfg.flat(), layers,
                                                                           profiles.study_sources()))
    return cfg


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'params'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names & set(raw):
        kwargs[name] = _coerce(hints[name], raw[name], prefix + name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: must be one of {', '.join(allowed)}, got {value!r}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


def _nonneg(key: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{key}: must be >= 0, got {value}")


def _auto_or_positive(key: str, value: Any) -> None:
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: must be auto or a positive integer (tokens), got {value!r}")


def _range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{key}: must lie in [{lo}, {hi}], got {value}")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
