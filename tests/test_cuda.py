"""The CUDA path (issue 5): same results as the CPU path, bf16 where the spec allows it.

Every test here needs a CUDA device and is skipped, with that reason, where there is none
(CI never has one). On a GPU machine: ``pytest tests/test_cuda.py``.
"""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from dfa.config import load_config
from dfa.model import DFA
from dfa.ot import normalize_scores, prior, readout, sinkhorn, transport
from dfa.refine import PAR
from dfa.stages.bench.sinkhorn import ot_problems
from dfa.stages.bench.workload import bench_encoder, bench_spec, synthetic_views
from dfa.stages.training import train_step

from tests.conftest import REPO

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is present")]

CUDA = torch.device("cuda")


def smoke_cfg(*overrides: str):
    return load_config(REPO / "params.yaml", ["tracking.enabled=false", *overrides], smoke=True)


def test_sinkhorn_cuda_matches_cpu():
    cost, a, b = ot_problems(16, 400, 21)
    # fp32 marginal errors plateau near 1e-7 (summation order differs on the GPU): stop at 1e-6.
    cpu, info_cpu = sinkhorn(cost, a, b, 0.1, max_iters=500, tol=1e-6, return_info=True)
    gpu, info_gpu = sinkhorn(cost.to(CUDA), a.to(CUDA), b.to(CUDA), 0.1, max_iters=500, tol=1e-6,
                             return_info=True)
    assert gpu.device.type == "cuda"
    assert info_cpu["err"] < 1e-6 and info_gpu["err"] < 1e-6
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-3, atol=1e-8)
    assert abs(info_gpu["iters"] - info_cpu["iters"]) <= 5


def test_transport_stays_fp32_under_autocast():
    score = torch.rand(4, 64, 5, device=CUDA)
    valid = torch.tensor([[1, 1, 0, 0, 0]] * 4, dtype=torch.bool, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        o = normalize_scores(score.bfloat16(), valid, "class")
        plan = transport(o, prior("uniform", o.float(), valid), valid)
    assert plan.dtype == torch.float32
    o_cpu = normalize_scores(score.bfloat16().cpu(), valid.cpu(), "class")
    ref = transport(o_cpu, prior("uniform", o_cpu.float(), valid.cpu()), valid.cpu())
    assert torch.allclose(readout(plan, valid).cpu(), readout(ref, valid.cpu()), atol=1e-4)


def test_par_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    image, masks = torch.rand(2, 3, 48, 48, generator=g), torch.rand(2, 4, 48, 48, generator=g)
    par = PAR((1, 2, 4), iters=5)
    assert torch.allclose(par.to(CUDA)(image.to(CUDA), masks.to(CUDA)).cpu(), par.cpu()(image, masks), atol=1e-5)


@pytest.fixture(scope="module")
def cached_batch():
    """The smoke tiny-CLIP features of 2 views, as the cache would hold them (CPU tensors)."""
    cfg = smoke_cfg()
    from dfa.backbone.dense import DenseExtractor
    clip, crop, _ = bench_encoder(cfg, smoke=True)
    spec = bench_spec()
    images, present = synthetic_views(2, crop, spec.num_fg, "cpu")
    f = DenseExtractor(clip, spec, cfg.clip.templates, "fp32")(images, present)
    batch = {"tokens": f.tokens, "attn": f.attn, "cos": f.cos, "cos_bg": f.cos_bg, "present": present,
             "image": images, "grid": f.grid}
    return cfg, clip, spec, batch


def _losses(model, batch, device):
    torch.manual_seed(0)
    return {k: v.item() for k, v in train_step(model, batch, device, 100.0).items()}


@pytest.fixture
def no_tf32():
    """Plain fp32 on the GPU (cuDNN convolutions default to TF32 on Ampere and later)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_train_step_cuda_fp32_matches_cpu(cached_batch, no_tf32):
    cfg, clip, spec, batch = cached_batch
    cfg = copy.deepcopy(cfg)
    cfg.clip.last_k, cfg.decoder.precision, cfg.decoder.dropout = clip.last_k, "fp32", 0.0
    model = DFA(cfg, batch["tokens"].shape[1], batch["tokens"].shape[-1], spec.num_classes).train()
    cpu = _losses(model, batch, torch.device("cpu"))
    gpu = _losses(copy.deepcopy(model).to(CUDA), batch, CUDA)
    for k in cpu:
        assert gpu[k] == pytest.approx(cpu[k], rel=1e-3, abs=1e-5), k


def test_train_step_cuda_bf16_decoder(cached_batch):
    """decoder.precision=auto runs the decoder in bf16 on CUDA; losses stay fp32 and close."""
    cfg, clip, spec, batch = cached_batch
    cfg = copy.deepcopy(cfg)
    cfg.clip.last_k, cfg.decoder.dropout = clip.last_k, 0.0
    assert cfg.decoder.precision == "auto"
    model = DFA(cfg, batch["tokens"].shape[1], batch["tokens"].shape[-1], spec.num_classes).to(CUDA).train()
    losses = train_step(model, batch, CUDA, 100.0)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    fp32 = copy.deepcopy(model)
    fp32.cfg = copy.deepcopy(cfg)
    fp32.cfg.decoder.precision = "fp32"
    assert train_step(fp32, batch, CUDA, 100.0)["seg"].item() == pytest.approx(losses["seg"].item(), rel=0.05)


def test_encoder_bf16_close_to_fp32(cached_batch):
    from dfa.backbone.dense import DenseExtractor
    cfg, clip, spec, batch = cached_batch
    clip = clip.to(CUDA)
    images = batch["image"].to(CUDA)
    f32 = DenseExtractor(clip, spec, cfg.clip.templates, "fp32")(images)
    bf16 = DenseExtractor(clip, spec, cfg.clip.templates, "auto")(images)
    assert bf16.cos.dtype == torch.float32 and bf16.attn.dtype == torch.float32
    assert (bf16.cos - f32.cos).abs().max() < 0.1
    assert (bf16.attn - f32.attn).abs().max() < 0.05


def test_smoke_pipeline_on_cuda(smoke_workspace, smoke_evaluated, dfa_cli, tmp_path):
    """cache → train → pseudo → evaluate with ``device=cuda`` (CRF is CPU code, tested elsewhere)
    reaches the numbers of the same pipeline on the CPU (the session's ``smoke_evaluated``), up to
    float round-off: the frozen-CLIP CAM nearly exactly, the trained seeds and decoder closely."""
    ws = tmp_path / "ws"
    shutil.copytree(smoke_workspace, ws)
    args = ["--smoke", "-S", "tracking.enabled=false", "-S", "device=cuda", "-S", "eval.crf.enabled=false"]
    for stage in ("cache", "train", "pseudo", "evaluate"):
        dfa_cli(ws, stage, *args)
    pseudo = json.loads((ws / "smoke/reports/metrics/pseudo.json").read_text())
    ev = json.loads((ws / "smoke/reports/metrics/eval.json").read_text())
    cpu_pseudo = json.loads((smoke_evaluated / "smoke/reports/metrics/pseudo.json").read_text())
    cpu_ev = json.loads((smoke_evaluated / "smoke/reports/metrics/eval.json").read_text())
    assert pseudo["images"] == cpu_pseudo["images"] > 0
    assert pseudo["cam_miou"] == pytest.approx(cpu_pseudo["cam_miou"], abs=1.0)
    assert pseudo["seed_miou"] == pytest.approx(cpu_pseudo["seed_miou"], abs=5.0)
    assert ev["seg_miou"] == pytest.approx(cpu_ev["seg_miou"], abs=10.0)     # seg_miou: the decoder, no CRF
