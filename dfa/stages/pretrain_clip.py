"""``dfa pretrain-clip``: contrastive pretraining of the embedded benchmark's small CLIP.

A stand-in for web-scale CLIP pretraining (benchmark.md): the registered open_clip config
``dfa-tiny-vit`` (ViT image tower with average pooling, text transformer) is trained with a
symmetric InfoNCE loss on the generated ``pretrain`` split, which is disjoint from every
WSSS split. Captions come from ``annotations.json`` ("a photo of a boat and a fish on
water."); with probability ``pretrain.object_crop_prob`` a sample is an object-centred crop
with its one-object caption, as web image-text pairs often are. Images whose captions are
identical are all positives of each other (a multi-positive target), since with 8 classes
and 5 backgrounds a batch holds many equal captions. Then the model stays frozen.

On real data (``data.name`` voc/coco) this stage does nothing but say so.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dfa.backbone.clip import TINY_NAME, FrozenCLIP, build_tiny, tiny_config
from dfa.config import Config
from dfa.data.io import read_image
from dfa.data.synthetic import caption, object_caption
from dfa.errors import WorkbenchError
from dfa.io import save_torch, write_json
from dfa.stages.common import class_spec, console, data_errors, layout_of, progress, setup, write_metrics
from dfa.stages.views import normalise, square_view
from dfa.tracking import stage_run

METRICS = Path("reports/metrics/clip.json")
MANIFEST = Path("checkpoints/clip/backbone.json")  # the stage's DVC output on every dataset


def _crop(img: np.ndarray, bbox: list[int], rng: np.random.Generator) -> np.ndarray:
    """Object-centred square crop around ``bbox`` with a random margin."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = bbox
    side = max(x1 - x0, y1 - y0) * rng.uniform(1.1, 1.6)
    cx, cy = (x0 + x1) / 2 + rng.uniform(-0.1, 0.1) * side, (y0 + y1) / 2 + rng.uniform(-0.1, 0.1) * side
    a, b = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    c, d = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    return img[b:max(d, b + 2), a:max(c, a + 2)]


class CaptionedImages:
    """The pretraining pairs, held in memory (a few thousand small images)."""

    def __init__(self, root: Path, names: list[str], annotations: dict, size: int):
        self.images = [read_image(root / "JPEGImages" / f"{n}.jpg") for n in names]
        self.entries = [annotations[n] for n in names]
        self.size = size
        self.captions: dict[str, int] = {}

    def caption_id(self, text: str) -> int:
        return self.captions.setdefault(text, len(self.captions))

    def sample(self, i: int, rng: np.random.Generator, object_prob: float) -> tuple[np.ndarray, str]:
        img, entry = self.images[i], self.entries[i]
        if entry["objects"] and rng.random() < object_prob:
            obj = entry["objects"][rng.integers(len(entry["objects"]))]
            img, text = _crop(img, obj["bbox"], rng), object_caption(obj["class"], entry["background"])
        else:
            text = caption(entry)
        img = square_view(img, self.size)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        return img, text


def multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with the same caption id is a positive."""
    logits = scale * img @ txt.t()
    target = (ids[:, None] == ids[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean())


@torch.no_grad()
def zero_shot(model, tokenizer, data: CaptionedImages, classes: list[str], templates: list[str],
              cfg: Config) -> dict[str, float]:
    """Zero-shot accuracy: object crops (top-1 over classes) and whole images (top-1 is present)."""
    clip = FrozenCLIP(model, tokenizer, last_k=1)
    text = clip.encode_prompts([[t.format(c) for t in templates] for c in classes])
    rng = np.random.default_rng(1)
    crops, crop_y, whole, whole_y = [], [], [], []
    for img, entry in zip(data.images, data.entries):
        whole.append(square_view(img, data.size))
        whole_y.append([classes.index(o["class"]) for o in entry["objects"]])
        for obj in entry["objects"]:
            crops.append(square_view(_crop(img, obj["bbox"], rng), data.size))
            crop_y.append(classes.index(obj["class"]))

    def predict(batch: list[np.ndarray]) -> torch.Tensor:
        out = []
        for i in range(0, len(batch), 256):
            x = normalise(np.stack(batch[i:i + 256]), cfg).to(text.device)
            f = model.encode_image(x, normalize=True)
            out.append((f @ text.t()).argmax(1).cpu())
        return torch.cat(out)

    crop_pred = predict(crops)
    whole_pred = predict(whole)
    return {
        "zero_shot_acc": float((crop_pred == torch.tensor(crop_y)).float().mean() * 100),
        "zero_shot_whole_image_acc": float(np.mean([int(p) in y for p, y in zip(whole_pred.tolist(), whole_y)]) * 100),
    }


def pretrain_clip(cfg: Config, args=None) -> int:
    if cfg.data.name != "synthetic":
        console.print(f"pretrain-clip: data.name={cfg.data.name} uses the real CLIP "
                      f"({cfg.clip.model}/{cfg.clip.pretrained or cfg.clip.checkpoint}); nothing to pretrain.")
        write_json(cfg.out(MANIFEST), {"model": cfg.clip.model, "pretrained": cfg.clip.pretrained,
                              "checkpoint": cfg.clip.checkpoint, "pretrained_here": False})
        write_metrics(cfg, METRICS, {"skipped": True, "model": cfg.clip.model})
        return 0
    if cfg.clip.model != TINY_NAME or not cfg.clip.checkpoint:
        raise WorkbenchError(f"pretrain-clip trains {TINY_NAME}: set clip.model={TINY_NAME} and clip.checkpoint")
    device = setup(cfg)
    p = cfg.pretrain
    layout = layout_of(cfg)
    spec = class_spec(cfg)
    ann_path = layout.root / "annotations.json"
    if not ann_path.exists():
        raise WorkbenchError(f"{ann_path}: missing; the synthetic set writes it (run `dfa prepare`)")
    annotations = json.loads(ann_path.read_text())
    with data_errors():
        train = CaptionedImages(layout.root, layout.read_list("pretrain"), annotations, p.image_size)
        held_out = CaptionedImages(layout.root, layout.read_list(cfg.data.eval_split), annotations, p.image_size)

    arch = tiny_config(p.width, p.layers, p.heads, p.patch_size, p.image_size, p.embed_dim, p.pool,
                       p.text_width, p.text_layers, p.text_heads, p.context_length)
    model = build_tiny(arch).to(device).train()
    import open_clip
    tokenizer = open_clip.get_tokenizer(TINY_NAME, context_length=p.context_length)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, p.warmup))
                                              * 0.5 * (1 + math.cos(math.pi * min(1.0, s / p.steps))))
    rng = np.random.default_rng(cfg.seed)
    token_cache: dict[str, torch.Tensor] = {}
    losses = []
    with stage_run(cfg, "pretrain_clip") as run, progress() as bar:
        task = bar.add_task("pretrain small CLIP", total=p.steps, info="")
        for step in range(p.steps):
            idx = rng.integers(len(train.images), size=p.batch_size)
            pairs = [train.sample(int(i), rng, p.object_crop_prob) for i in idx]
            images = normalise(np.stack([im for im, _ in pairs]), cfg).to(device)
            texts = [t for _, t in pairs]
            missing = [t for t in set(texts) if t not in token_cache]
            if missing:
                token_cache.update(zip(missing, tokenizer(missing)))
            tokens = torch.stack([token_cache[t] for t in texts]).to(device)
            ids = torch.tensor([train.caption_id(t) for t in texts], device=device)
            img = model.encode_image(images, normalize=True)
            txt = model.encode_text(tokens, normalize=True)
            loss = multi_positive_loss(img, txt, ids, model.logit_scale.exp().clamp(max=100))
            if not torch.isfinite(loss):
                raise WorkbenchError(f"pretrain-clip: non-finite contrastive loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if step % 10 == 0:
                run.log_metrics({"clip_loss": loss.item()}, step=step)
            bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
        model.eval()
        metrics = zero_shot(model, tokenizer, held_out, spec.classes, cfg.clip.templates, cfg)
        metrics["final_loss"] = float(np.mean(losses[-20:]))
        ckpt = {"config": arch, "state_dict": model.state_dict(), "classes": spec.classes,
                "background": spec.background, "metrics": metrics, "steps": p.steps}
        save_torch(cfg.clip.checkpoint, ckpt)
        write_metrics(cfg, METRICS, metrics)
        write_json(Path(cfg.clip.checkpoint).parent / MANIFEST.name, {"model": TINY_NAME, "checkpoint": cfg.clip.checkpoint, "pretrained_here": True,
                              "config": arch, "metrics": metrics})
        run.log_metrics(metrics)
        run.log_artifact(cfg.clip.checkpoint)
    console.print(f"small CLIP: zero-shot accuracy {metrics['zero_shot_acc']:.1f}% (object crops), "
                  f"{metrics['zero_shot_whole_image_acc']:.1f}% (whole images, top-1 present) "
                  f"→ {cfg.clip.checkpoint}")
    return 0
