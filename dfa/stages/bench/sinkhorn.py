"""``dfa bench`` section ``sinkhorn``: ``dfa.ot.sinkhorn`` vs POT's batched solver (torch) and
POT's per-problem ``ot.sinkhorn`` (numpy, fp64), same problems, ε, and a fixed 100 iterations
(tol 0), then each solver to the same tolerance by its own stopping rule.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from dfa.stages.bench.timing import med, race, ratio, span


def ot_problems(batch: int, n: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of CAM-like OT problems (perf-anchors §2), fp32.

    Similarity = 0.2 + N(0, 0.02²), + 0.1 on each token's class, 3 classes present per
    image; cost = 1 − sim, min-max scaled to [0, 1] per image. Rows uniform; columns
    ~ Dirichlet(0.5): non-uniform marginals need 2–3× the iterations of uniform ones.
    """
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    sim = 0.2 + 0.02 * torch.randn(batch, n, c, generator=g)
    for i in range(batch):
        classes = torch.randperm(c, generator=g)[:3]
        sim[i, torch.arange(n), classes[torch.randint(3, (n,), generator=g)]] += 0.1
    cost = 1 - sim
    lo, hi = cost.amin((1, 2), keepdim=True), cost.amax((1, 2), keepdim=True)
    cost = (cost - lo) / (hi - lo)
    a = torch.full((batch, n), 1.0 / n)
    b = torch.from_numpy(rng.dirichlet(np.full(c, 0.5), size=batch)).float()
    b = b / b.sum(-1, keepdim=True)
    return cost, a, b


def bench_sinkhorn(smoke: bool, epsilon: float, tol: float, device: torch.device = torch.device("cpu")) -> dict:
    """Ours vs POT (batched torch solver, per-problem ``ot.sinkhorn``), same problems, ε, device.

    Two comparisons: ``*_ms`` at a fixed 100 iterations for every solver (equal work), and
    ``*_to_tol_ms`` with every solver stopped by its own rule at the same tolerance ``tol``
    (what a user runs; ours checks ‖T1 − a‖₁ + ‖Tᵀ1 − b‖₁ every iteration, POT's loop the
    2-norm of the column error every 10 iterations, a weaker test). On CPU the loop runs POT's
    numpy backend in fp64 (its default); on CUDA it gets torch CUDA tensors.
    """
    import ot
    import ot.batch

    from dfa.ot import sinkhorn

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    iters, batch, repeats = 100, (4 if smoke else 64), (3 if smoke else 5)
    out: dict = {"device": str(device), "epsilon": epsilon, "iterations": iters, "batch": batch, "repeats": repeats,
                 "tol": tol, "pot_version": ot.__version__,
                 "dtype": {"ours": "float32 torch", "pot_batch": "float32 torch",
                           "pot_loop": "float32 torch (CUDA)" if cuda else "float64 numpy"},
                 "note": "*_ms: fixed 100 iterations (tol=0 / stopThr=0), equal work; *_to_tol_ms: each solver "
                         "stopped by its own rule at tol; pot_loop = ot.sinkhorn per problem; "
                         "pot_batch = ot.batch.solve_batch(method='sinkhorn'), torch backend"}
    for n, c in ((400, 21), (1600, 81)):
        cost, a, b = (t.to(device) for t in ot_problems(batch, n, c))
        if cuda:
            lc, la, lb = cost, a, b
        else:
            lc, la, lb = cost.double().numpy(), a.double().numpy(), b.double().numpy()
        loop_iters: list[int] = []

        def pot_loop(stop=0.0, max_iter=iters):
            loop_iters.clear()
            plans = []
            for i in range(batch):
                plan, log = ot.sinkhorn(la[i], lb[i], lc[i], epsilon, numItermax=max_iter, stopThr=stop, log=True)
                plans.append(plan)
                loop_iters.append(int(log.get("niter", max_iter)))
            return plans

        def pot_batch(stop=0.0, max_iter=iters):
            return ot.batch.solve_batch(cost, epsilon, a=a, b=b, max_iter=max_iter, tol=stop, method="sinkhorn").plan

        fixed = {"ours": lambda: sinkhorn(cost, a, b, epsilon, max_iters=iters, tol=0),
                 "pot_batch": pot_batch, "pot_loop": pot_loop}
        to_tol = {"ours": lambda: sinkhorn(cost, a, b, epsilon, max_iters=1000, tol=tol, return_info=True),
                  "pot_batch": lambda: pot_batch(tol, 1000), "pot_loop": lambda: pot_loop(tol, 1000)}
        try:
            pot_batch(0.0, 1)
        except RuntimeError as exc:  # POT 0.9.7's batched solver mixes devices on CUDA
            out["pot_batch_error"] = f"{type(exc).__name__}: {exc}"
            del fixed["pot_batch"], to_tol["pot_batch"]
        with warnings.catch_warnings():  # stopThr=0 makes POT warn "did not converge"
            warnings.simplefilter("ignore")
            times, plans = race(fixed, repeats, sync=sync)
            tol_times, tol_last = race(to_tol, repeats, sync=sync)
        ms = {k: med(v) for k, v in times.items()}
        tol_ms = {k: med(v) for k, v in tol_times.items()}
        loop_plan = torch.stack([torch.as_tensor(p) for p in plans["pot_loop"]]).to(device)
        ours_plan, batch_plan = plans["ours"], plans.get("pot_batch")
        if batch_plan is None:  # keep the keys; the batched peer is reported as missing
            ms["pot_batch"] = tol_ms["pot_batch"] = None
        out[f"{n}x{c}"] = {
            "ours_ms": ms["ours"], "ours_ms_range": span(times["ours"]),
            "pot_batch_ms": ms["pot_batch"], "pot_batch_ms_range": span(times["pot_batch"]) if ms["pot_batch"] else None,
            "pot_loop_ms": ms["pot_loop"], "pot_loop_ms_range": span(times["pot_loop"]),
            "speedup": ratio(min(x for x in (ms["pot_batch"], ms["pot_loop"]) if x), ms["ours"]),
            "speedup_vs_batch": ratio(ms["pot_batch"], ms["ours"]),
            "speedup_vs_loop": ratio(ms["pot_loop"], ms["ours"]),
            "max_plan_diff": None if batch_plan is None else float((ours_plan - batch_plan).abs().max()),
            # Plan entries are ~1/(N·C), so also give the difference relative to the largest entry.
            "max_plan_rel_diff": None if batch_plan is None else
            float((ours_plan - batch_plan).abs().max() / batch_plan.max()),
            "max_plan_diff_vs_loop": float((ours_plan.double() - loop_plan.double()).abs().max()),
            "ours_to_tol_ms": tol_ms["ours"], "ours_to_tol_ms_range": span(tol_times["ours"]),
            "pot_batch_to_tol_ms": tol_ms["pot_batch"], "pot_loop_to_tol_ms": tol_ms["pot_loop"],
            "ours_iters_to_tol": int(tol_last["ours"][1]["iters"]),
            "pot_loop_iters_to_tol": int(np.median(loop_iters)) if loop_iters else None,
            "speedup_to_tol": ratio(min(x for x in (tol_ms["pot_batch"], tol_ms["pot_loop"]) if x), tol_ms["ours"]),
            "speedup_vs_loop_to_tol": ratio(tol_ms["pot_loop"], tol_ms["ours"]),
        }
    return out
