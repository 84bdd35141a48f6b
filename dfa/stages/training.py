"""The training loop of DFA (method.md §6), shared by ``dfa train``, ``dfa search``'s trials,
the ablation's cells and ``dfa bench``; and :func:`load_trained`, the model it writes.

Each step: features of a batch of views (from the cache, or the frozen CLIP online with
full augmentation when ``cache.enabled`` is false) → affinities → pseudo-labels by the
configured CAM path (no gradient) → L = L_seg + λ₁·L_a + λ₂·L_r → AdamW step.

Exact resume (issue 6): the resume checkpoint holds model, optimiser, scheduler, step,
the α accumulator (a model buffer) and every RNG state; it is written every
``train.checkpoint_interval`` steps and on SIGINT/SIGTERM. Batches are drawn from a
seeded generator whose state is saved, so a resumed run ends bit-identical to an
uninterrupted one on CPU. A NaN/Inf loss stops training naming the step and the term,
after saving the last good state.
"""
from __future__ import annotations

import hashlib
import signal
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from dfa.config import Config
from dfa.data.dataset import WSSSDataset
from dfa.data.transforms import TrainTransform
from dfa.errors import NumericalError, WorkbenchError
from dfa.features_cache import CachedViews, fingerprint
from dfa.io import save_torch
from dfa.losses import token_labels
from dfa.model import DFA, decoder_areas
from dfa.stages.common import class_spec, console, data_errors, layout_of, progress, setup
from dfa.stages.views import cache_fingerprint, extractor, normalise

TRAIN_KEYS = ("seed", "clip", "affinity", "frequency", "loss", "ot", "refine", "decoder", "train", "ablation")


def train_fingerprint(cfg: Config) -> str:
    d = cfg.to_dict()
    return fingerprint({k: d[k] for k in TRAIN_KEYS} | {"data": d["data"], "cache": d["cache"]["enabled"]})


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the trainable weights (names and bytes), for checking resume from outside."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def lr_lambda(cfg: Config):
    t = cfg.train

    def f(step: int) -> float:
        if step < t.warmup:
            return (step + 1) / t.warmup
        return max(0.0, 1 - (step - t.warmup) / max(1, t.steps - t.warmup)) ** t.power
    return f


class Batches:
    """Seeded batch source; its generator state is part of the checkpoint.

    From the cache, batch indices are drawn here, in order, and the reads (memory-mapped
    shards, pinned on CUDA) run ``cache.prefetch`` batches ahead on a background thread. The
    checkpointed generator state is the one right after the last *consumed* batch's draw,
    so a resumed run sees the same batches with or without read-ahead.
    """

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.gen = torch.Generator().manual_seed(cfg.seed)
        spec = class_spec(cfg)
        layout = layout_of(cfg)
        self.cached = cfg.cache.enabled
        self._ahead: deque = deque()          # (future of a read, generator state after its draw)
        self._state_after: torch.Tensor | None = None
        self._reader: ThreadPoolExecutor | None = None
        if self.cached:
            with data_errors():
                names = layout.read_list(cfg.data.train_split)
            self.views = CachedViews(cfg.cache.dir, cache_fingerprint(cfg, names))
            self.n = len(self.views)
            meta = self.views.meta
            if meta["classes"] != spec.classes:
                raise WorkbenchError(f"{cfg.cache.dir}: cached classes differ from the dataset's")
            self.grid = tuple(meta["grid"])
            self.logit_scale = float(meta.get("logit_scale", 100.0))
            if cfg.cache.prefetch > 0:
                self._reader = ThreadPoolExecutor(1, thread_name_prefix="dfa-cache-reader")
        else:
            if cfg.ablation.ceiling in ("teacher", "labels"):
                raise WorkbenchError(f"ablation.ceiling={cfg.ablation.ceiling} trains from the ground truth of the "
                                     "cached views: set cache.enabled=true")
            self.extract = extractor(cfg, spec, device)
            self.logit_scale = self.extract.logit_scale
            with data_errors():
                self.data = WSSSDataset(layout, cfg.data.train_split, with_mask=False, num_fg=len(spec.classes),
                                        transform=TrainTransform(cfg.data.crop_size, tuple(cfg.data.scale_range),
                                                                 mean=cfg.data.mean, std=cfg.data.std,
                                                                 generator=self.gen))
            self.n = len(self.data)

    # ----------------------------------------------------------------- generator state
    def generator_state(self) -> torch.Tensor:
        """State after the last consumed batch (read-ahead draws excluded)."""
        return self._state_after if self._state_after is not None else self.gen.get_state()

    def set_generator_state(self, state: torch.Tensor) -> None:
        self._drop_ahead()
        self.gen.set_state(state)

    def reseed(self, seed: int) -> None:
        self._drop_ahead()
        self.gen.manual_seed(seed)

    def _drop_ahead(self) -> None:
        for job, _ in self._ahead:
            job.cancel()
        self._ahead.clear()
        self._state_after = None

    def close(self) -> None:
        self._drop_ahead()
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)

    # ----------------------------------------------------------------- batches
    def _read(self, idx: list[int]) -> dict[str, torch.Tensor]:
        """Runs on the reader thread: copies out of the memory map, pinned for a CUDA copy."""
        b = self.views.batch(idx)
        return {k: v.pin_memory() for k, v in b.items()} if self.device.type == "cuda" else b

    def _draw(self) -> list[int]:
        return torch.randint(self.n, (self.cfg.train.batch_size,), generator=self.gen).tolist()

    def next(self) -> dict[str, torch.Tensor]:
        if self.cached:
            if self._reader is None:                  # cache.prefetch = 0: read in this thread
                b = self._read(self._draw())
            else:
                while len(self._ahead) < self.cfg.cache.prefetch:
                    idx = self._draw()
                    self._ahead.append((self._reader.submit(self._read, idx), self.gen.get_state()))
                job, self._state_after = self._ahead.popleft()
                b = job.result()
            dev = {k: v.to(self.device, non_blocking=True) for k, v in b.items()}
            heads = dev["heads"].float() if "heads" in dev else None   # a per-head cache stores no layer maps
            return {"tokens": dev["tokens"].float(), "attn": heads.mean(2) if heads is not None else dev["attn"].float(),
                    "heads": heads, "cos": dev["cos"].float(),
                    "cos_bg": dev["cos_bg"].float(), "present": dev["label"].bool(), "mask": dev["mask"].long(),
                    "image": normalise(dev["image"], self.cfg), "grid": self.grid}
        with data_errors():
            items = [self.data[i] for i in self._draw()]
        images = torch.stack([it["image"] for it in items])
        present = torch.stack([it["label"] for it in items]) > 0
        f = self.extract(images, present)
        return {"tokens": f.tokens, "attn": f.attn, "heads": f.heads, "cos": f.cos, "cos_bg": f.cos_bg,
                "present": present, "image": images, "grid": f.grid}


def build_model(cfg: Config, batch: dict, num_classes: int) -> DFA:
    heads = batch.get("heads")
    return DFA(cfg, num_blocks=batch["tokens"].shape[1], in_dim=batch["tokens"].shape[-1], num_classes=num_classes,
               num_heads=None if heads is None else heads.shape[2])


def rng_state(batches: Batches) -> dict:
    import random
    return {"torch": torch.get_rng_state(), "gen": batches.generator_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def set_rng_state(state: dict, batches: Batches) -> None:
    import random
    torch.set_rng_state(state["torch"])
    batches.set_generator_state(state["gen"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def train_step(model: DFA, batch: dict, device: torch.device, logit_scale: float,
               active: bool = True) -> dict[str, torch.Tensor]:
    """One forward pass: affinities, decoder, pseudo-labels (no gradient), losses.

    ``active``: past the warm-up (``loss.align_start``): L_a and L_r on, and the decoder's
    areas feed ``ot.prior: decoder``. The ``teacher`` / ``labels`` ceilings (§11) read the
    view's ground truth at token resolution.
    """
    cfg = model.cfg
    grid = tuple(batch["grid"])
    image = batch["image"].to(device)
    tokens = batch["tokens"].to(device)
    heads = batch.get("heads") if model.uses_heads else None
    aff = model.affinities(batch["attn"].to(device), grid, tokens=tokens,
                           heads=None if heads is None else heads.to(device))
    for name, t in (("affinity A_s", aff.s), ("affinity A_inv", aff.inv)):
        if t is not None and not torch.isfinite(t).all():  # the OT solver would reject it anyway
            return {name: t.sum()}
    s_hat, valid = model.class_scores(batch["cos"].to(device), batch["cos_bg"].to(device),
                                      batch["present"].to(device), logit_scale)
    logits, f_d = model.run_decoder(tokens, grid)
    areas, prior_kind = None, None
    if cfg.ot.prior == "decoder":  # before the warm-up ends the decoder knows nothing: CAM areas
        if active:
            areas = decoder_areas(logits.detach(), valid)
        else:
            prior_kind = "cam_area"
    refined = model.refine(aff, s_hat, valid, image, grid, areas=areas, prior_kind=prior_kind,
                           bg_power=float(model.train_bg_power))
    gt = None
    if cfg.ablation.ceiling in ("teacher", "labels"):
        gt = token_labels(batch["mask"].to(device), grid, model.num_classes, "majority")
    return model.losses(logits, f_d, aff, refined, grid, active, gt)


def fit(cfg: Config, run, callback=None, ext=None) -> dict:
    """Train (resuming from ``train.dir``-resume if its fingerprint matches); returns metrics.

    ``callback(step, model)`` runs every ``search.report_every`` steps (Optuna pruning).
    ``ext``: the frozen extractor for the step-0 calibration on ``tune`` (the ablation passes
    its memo, which already holds those views); None builds one from ``cfg``.
    Writes ``train.dir/model.pt``; reports are the caller's business.
    """
    device = setup(cfg)
    spec = class_spec(cfg)
    out_dir = Path(cfg.train.dir)
    resume_path = out_dir.with_name(out_dir.name + "-resume") / "last.pt"
    fp = train_fingerprint(cfg)
    batches = Batches(cfg, device)
    first = batches.next()
    model = build_model(cfg, first, spec.num_classes).to(device)
    if cfg.train.compile:
        model.decoder.compile()
    opt = torch.optim.AdamW(model.trainable_groups(), weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    batches.reseed(cfg.seed)  # the probe batch above must not shift the data order
    torch.manual_seed(cfg.seed)
    start = 0
    curve: list[dict] = []
    if resume_path.exists():
        state = torch.load(resume_path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") == fp:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"], batches)
            start, curve = state["step"], state["curve"]
            console.print(f"resuming training from step {start} ({resume_path})")
        else:
            console.print(f"{resume_path}: made with other params; starting afresh")

    def keep_last_good(step: int) -> str:
        """Save the current state if it is finite, else keep the last checkpoint.

        Buffers count too: the failing forward has already updated the running α.
        """
        if all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()):
            save_resume(step)
            return f"last good state saved to {resume_path} (step {step})"
        if resume_path.exists():
            last = torch.load(resume_path, map_location="cpu", weights_only=False)["step"]
            return f"weights are no longer finite; last good state is {resume_path} (step {last})"
        return "weights are no longer finite and no checkpoint was written yet"

    def save_resume(step: int) -> None:
        save_torch(resume_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(), "rng": rng_state(batches), "step": step,
                                 "curve": curve, "fingerprint": fp})

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if start == 0 and cfg.refine.calibrate:
        model.train_bg_power.fill_(training_bg_power(cfg, model, device, ext))
        torch.manual_seed(cfg.seed)                      # calibration must not shift the training draws
    console.print(f"training pseudo-labels: background power {float(model.train_bg_power):g}"
                  + (" (chosen on the tune split)" if cfg.refine.calibrate else ""))
    sizes = resolved_sizes(model, first["grid"])
    run.log_params({f"resolved.{k}": v for k, v in sizes.items()})
    warmup = round(cfg.loss.align_start * cfg.train.steps)
    model.train()
    try:
        with progress() as bar:
            task = bar.add_task("train DFA", total=cfg.train.steps, completed=start, info="")
            for step in range(start, cfg.train.steps):
                batch = batches.next()
                losses = train_step(model, batch, device, batches.logit_scale, active=step >= warmup)
                bad = [k for k, v in losses.items() if not torch.isfinite(v)]
                if bad:
                    raise NumericalError(f"non-finite loss at step {step}: term '{bad[0]}' = "
                                         f"{float(losses[bad[0]])}; {keep_last_good(step)}")
                opt.zero_grad(set_to_none=True)
                losses["total"].backward()
                opt.step()
                sched.step()
                row = {"step": step + 1, "lr": opt.param_groups[0]["lr"], "alpha": float(model.alpha),
                       **{f"loss_{k}": v.item() for k, v in losses.items()}}
                curve.append(row)
                if (step + 1) % cfg.train.log_interval == 0 or step + 1 == cfg.train.steps:
                    run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step + 1)
                bar.update(task, advance=1, info=f"L {row['loss_total']:.3f} seg {row['loss_seg']:.3f} "
                                                f"a {row['loss_align']:.3f} r {row['loss_rect']:.3f}")
                if (step + 1) % cfg.train.checkpoint_interval == 0:
                    save_resume(step + 1)
                if stop["signal"] is not None:
                    save_resume(step + 1)
                    raise KeyboardInterrupt(f"stopped by signal {stop['signal']} at step {step + 1}; "
                                            f"re-run the same command to resume")
                if callback is not None and (step + 1) % cfg.search.report_every == 0:
                    model.eval()
                    callback(step + 1, model)
                    model.train()
    finally:
        batches.close()
        for s, h in old.items():
            signal.signal(s, h)
    digest = state_digest(model)
    save_torch(out_dir / "model.pt", {"model": model.state_dict(), "fingerprint": fp, "step": cfg.train.steps,
                                      "num_blocks": first["tokens"].shape[1], "in_dim": first["tokens"].shape[-1],
                                      "classes": spec.classes, "state_digest": digest,
                                      **({"num_heads": model.num_heads} if model.uses_heads else {})})
    save_resume(cfg.train.steps)
    return {"final_step": cfg.train.steps, "state_digest": digest, "curve": curve, "alpha": float(model.alpha),
            "final_loss": float(np.mean([r["loss_total"] for r in curve[-20:]])) if curve else None,
            "grid": list(first["grid"]), "attention_layers": int(first["attn"].shape[1]),  # K of §1, as used
            "resolved": sizes, "train_bg_power": float(model.train_bg_power)}


@torch.no_grad()
def training_bg_power(cfg: Config, model: DFA, device: torch.device, ext=None) -> float:
    """The background power of the row's pseudo-labels, chosen on the tune split with the
    untrained model at step 0 (method.md §5: every row's background rule is calibrated; the
    decoder prior is not there yet, so ``ot.prior: decoder`` uses CAM areas, as in the warm-up)."""
    from dfa.data.dataset import load_labels
    from dfa.stages.common import limit
    from dfa.stages.seeds import calibrate

    layout = layout_of(cfg)
    with data_errors():
        names = limit(layout.read_list(cfg.data.tune_split), cfg.refine.calibrate_images)
        labels = load_labels(layout.labels_path())
    ext = ext if ext is not None else extractor(cfg, class_spec(cfg), device)
    was = model.training
    model.eval()
    try:
        bg = calibrate(cfg, model, ext, layout, names, labels,
                       prior_kind="cam_area" if cfg.ot.prior == "decoder" else None)
    finally:
        model.train(was)
    return float(bg["seed"])


def resolved_sizes(model: DFA, grid) -> dict[str, str]:
    """The §10 sizes on this grid (``auto`` resolved), as logged with the run: "h×w" per axis."""
    return {f"{k}": "×".join(map(str, v)) for k, v in model.sizes(tuple(grid)).items()}


def load_trained(cfg: Config, device: torch.device) -> DFA:
    """The trained model of ``train.dir`` (checked against the dataset's classes)."""
    path = Path(cfg.train.dir) / "model.pt"
    if not path.exists():
        raise WorkbenchError(f"{path}: no trained model (run `dfa train`)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    spec = class_spec(cfg)
    if state["classes"] != spec.classes:
        raise WorkbenchError(f"{path}: trained on classes {state['classes']}, dataset has {spec.classes}")
    try:
        model = DFA(cfg, state["num_blocks"], state["in_dim"], spec.num_classes, state.get("num_heads"))
    except ValueError as exc:   # a layers model read with affinity.channels=heads
        raise WorkbenchError(f"{path}: does not match the configured model ({exc})") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise WorkbenchError(f"{path}: does not match the configured model ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval()

