"""Frequency-guided CAM generation by entropic optimal transport. method.md §5 (v2).

Tokens are assigned to the columns ``[background | present classes]`` by a plan scored with
both affinities:

* :func:`scoring_matrix` — O (``ot.score``: ``fixed`` | ``literal``);
* :func:`normalize_scores` — O scaled per column (``class``) or per image (``image``);
* :func:`prior` — the column prior b (``ot.prior``: ``cam_area`` | ``cam_area_scaled`` | ``softmax_sum`` |
  ``tempered`` | ``uniform`` | ``decoder`` | ``oracle``, mixed by ``ot.prior_mix``);
* :func:`transport` — the plan T (``ot.formulation``: ``balanced`` | ``relaxed`` |
  ``dustbin``; ``reweight`` is :func:`reweight_scores`), rows exactly 1/N;
* :func:`readout` — token scores (``ot.readout``: ``posterior`` P = N·T | ``colmax``
  M_r = T / max_i T);
* :func:`sinkhorn` — the batched solver under all of them (balanced, semi-relaxed and
  free columns are one scaling iteration with a per-column exponent).

params.yaml options: ``ot.score``, ``ot.lambda_l`` (1.0), ``ot.lambda_h`` (0.1),
``ot.normalize``, ``ot.prior``, ``ot.prior_mix`` (0.2), ``ot.tau`` (0.1, ``tempered``),
``ot.formulation``, ``ot.reg_m`` (τ_m), ``ot.readout``, ``ot.epsilon`` (0.1),
``ot.max_iters`` (100), ``ot.tol`` (1e-6).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch

from .cam import cam_labels

__all__ = ["FORMULATIONS", "PRIORS", "READOUTS", "NORMALIZE", "SCORES", "sinkhorn", "scoring_matrix",
           "normalize_scores", "prior", "column_exponent", "transport", "plan_diagnostics", "readout",
           "reweight_scores"]

FORMULATIONS = ("balanced", "relaxed", "dustbin", "reweight")
PRIORS = ("cam_area", "cam_area_scaled", "softmax_sum", "tempered", "uniform", "decoder", "refined", "oracle")
READOUTS = ("posterior", "colmax")
NORMALIZE = ("class", "image")
SCORES = ("fixed", "literal")

# Largest (row cost range) / ε for which the plain scaling form is used: the kernel
# exp(−(C − min_row C)/ε) then stays ≥ e^−limit, far from underflow, and the scalings far
# from overflow (fp32 max ≈ e^88, fp64 max ≈ e^709). Above it the solver switches to the
# log domain automatically.
_PLAIN_LIMIT = {torch.float32: 50.0, torch.float64: 500.0}

# Largest K + Kᵀ (bytes) solved in one piece on CPU: about an L2/L3 share (see sinkhorn).
_CHUNK_BYTES = 8 << 20


def _check_marginal(name: str, m: torch.Tensor) -> torch.Tensor:
    """Validate one marginal; returns its per-problem mass (...,)."""
    if bool(torch.isnan(m).any()):
        raise ValueError(f"sinkhorn: marginal {name} contains NaN")
    if bool((m < 0).any()) or bool(torch.isinf(m).any()):
        raise ValueError(f"sinkhorn: marginal {name} must be finite and non-negative")
    mass = m.sum(dim=-1)
    if bool((mass <= 0).any()):
        raise ValueError(f"sinkhorn: marginal {name} sums to 0 for at least one problem "
                         "(an image without rows/columns to transport)")
    return mass


def sinkhorn(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, epsilon: float,
             max_iters: int = 100, tol: float = 1e-6, log_domain: bool = False,
             return_info: bool = False, check_every: int = 1,
             col_exponent: Optional[torch.Tensor] = None,
             ) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, float]]]:
    r"""Batched entropic optimal transport (Sinkhorn–Knopp). method.md §5.

    Solves, independently for every leading index,

    .. math::
        T^* = \arg\min_{T \ge 0} \langle T, C \rangle - \varepsilon H(T)
        \quad \text{s.t.} \quad T \mathbf{1} = a, \; T^\top \mathbf{1} = b,

    with :math:`H(T) = -\sum_{ij} T_{ij} \log T_{ij}` — the problem of POT's
    ``ot.sinkhorn(a, b, M, reg)``. The solution is :math:`T = \mathrm{diag}(u) K
    \mathrm{diag}(v)` with :math:`K = e^{-C/\varepsilon}`; the scalings are updated as
    :math:`u = a / K v`, :math:`v = b / K^\top u`.

    **Semi-relaxed columns** (``col_exponent`` φ, method.md §5 ``relaxed``/``dustbin``): rows
    stay exact and column c is KL-penalised towards :math:`b_c` with strength τ_m,

    .. math::
        \min_{T \ge 0,\ T\mathbf 1 = a} \langle T, C\rangle - \varepsilon H(T)
        + \tau_m \mathrm{KL}(T^\top \mathbf 1 \,\|\, b),

    whose column update is :math:`v = (b / K^\top u)^{φ}` with φ = τ_m / (τ_m + ε) — the
    problem of POT's ``ot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, reg_m=(inf, τ_m),
    reg_type="entropy")``. φ = 1 is a balanced column, φ = 0 a free one (v ≡ 1, the
    dustbin). τ_m → 0 gives the row softmax of −C/ε.

    Numerics:

    * Plain scaling form (default). ``K v`` and ``Kᵀ u`` are row-vector × matrix products
      against contiguous K and Kᵀ, measured 2.5–3× faster on CPU than the
      broadcast-multiply-and-sum form that perf-anchors §2 recommends (itself faster than
      matrix × column-vector ``bmm``). The kernel is row-stabilised,
      ``K = exp(−(C − min_j C_ij)/ε)``: the row factor is absorbed exactly by u, and every
      row of K has a 1 in it.
    * Log domain (``logsumexp`` updates of the potentials f = ε log u, g = ε log v) when
      ``log_domain=True``, and **automatically** when the largest row range of the cost
      divided by ε exceeds 50 (fp32) / 500 (fp64) (per cache block on CPU), where the plain kernel would underflow
      or the scalings overflow. ``info['log_domain']`` tells which ran.

    Stopping: the marginal error ``err = ‖T1 − a‖₁ + ‖Tᵀ1 − b‖₁``, worst problem of the batch,
    is checked every ``check_every`` iterations (default every iteration; each check is one
    host sync on a GPU) and the loop stops when ``err < tol``. After each iteration the
    column marginal is met to rounding, so err is essentially the row error. ``tol <= 0``
    runs exactly ``max_iters`` iterations with no checks.

    Zero entries of ``b`` (padding columns of images with fewer classes) give all-zero
    columns of T; zero entries of ``a`` give zero rows. With an all-equal cost the result is
    the independent coupling ``a bᵀ / Σa`` (after one iteration).

    Args:
        cost: (..., N, C) cost matrix C, finite.
        a: (..., N) row marginal, ≥ 0.
        b: (..., C) column marginal, ≥ 0, same total mass as a (per problem); a relative
            gap up to 1e-4 (rounding, e.g. fp32 marginals cast to fp64) is removed by
            rescaling b to the mass of a, a larger one raises.
        epsilon: entropic regularisation ε > 0 (POT's ``reg``).
        max_iters: iteration cap (one iteration = one u and one v update).
        tol: marginal-error threshold.
        log_domain: force the log-domain solver (see above for the automatic switch).
        return_info: also return ``dict(iters=int, err=float, log_domain=bool)`` (the batch's
            worst) and, per problem (shape ``...``), ``problem_err`` (its final marginal error),
            ``problem_iters`` (the first checked iteration at which its own error was below
            ``tol``, else the iterations run) and ``converged`` (final error < ``tol``; never
            with ``tol <= 0``). They are kept on the device: no host sync beyond the stopping
            rule's one per check.
        check_every: check the stopping rule every this many iterations.
        col_exponent: (..., C) φ per column in [0, 1]; None = all balanced. The stopping
            rule then counts the row error and the error of the balanced (φ = 1) columns.
    Returns:
        T: (..., N, C) plan in float32 (float64 for float64 input; half inputs are promoted
        to float32). With ``return_info``: ``(T, info)``.
    Raises:
        ValueError: mismatched shapes, ε ≤ 0, non-finite cost, a marginal with NaN / negative
            entries / zero mass, or total masses of a and b that differ.
    """
    if cost.dim() < 2:
        raise ValueError(f"sinkhorn: cost must be (..., N, C), got {tuple(cost.shape)}")
    lead, (n, c) = cost.shape[:-2], cost.shape[-2:]
    if tuple(a.shape) != (*lead, n) or tuple(b.shape) != (*lead, c):
        raise ValueError(f"sinkhorn: shapes do not match: cost {tuple(cost.shape)} needs a "
                         f"{(*lead, n)} and b {(*lead, c)}, got a {tuple(a.shape)}, "
                         f"b {tuple(b.shape)}")
    if not epsilon > 0:
        raise ValueError(f"sinkhorn: epsilon must be > 0, got {epsilon!r}")
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    cost, a, b = cost.to(dtype), a.to(dtype), b.to(dtype)
    phi = None if col_exponent is None else col_exponent.to(dtype).expand(b.shape)
    if phi is not None and bool(((phi < 0) | (phi > 1)).any()):
        raise ValueError("sinkhorn: col_exponent must lie in [0, 1]")
    balanced = phi is None or bool((phi == 1).all())
    mass_a = _check_marginal("a", a)
    if balanced:
        mass_b = _check_marginal("b", b)
        rel = ((mass_a - mass_b).abs() / mass_a.maximum(mass_b)).max()
        if float(rel) > 1e-4:
            raise ValueError(f"sinkhorn: marginals a and b have different total mass "
                             f"(relative gap {float(rel):.3g})")
        b = b * (mass_a / mass_b)[..., None]      # remove rounding-level mass gaps exactly
        phi = None
    elif bool(torch.isnan(b).any()) or bool((b < 0).any()):
        raise ValueError("sinkhorn: marginal b must be finite and non-negative")

    # Row minima (the kernel's row stabilisation); NaN propagates through amin and amax, and
    # ±inf makes a row minimum or a row range non-finite, so non-finite costs are caught below.
    row_min = cost.amin(dim=-1, keepdim=True) if cost.numel() else cost.new_zeros(*cost.shape[:-1], 1)
    if not bool(torch.isfinite(row_min).all()):
        raise ValueError("sinkhorn: cost contains NaN or inf")
    check_every = max(1, int(check_every))

    def solve(shifted, a_, b_, phi_, out=None):
        """One block of problems: plain or log domain by the block's largest row range / ε."""
        spread = float(shifted.amax()) / epsilon if shifted.numel() else 0.0
        if not math.isfinite(spread):
            raise ValueError("sinkhorn: cost contains NaN or inf")
        use_log = bool(log_domain) or spread > _PLAIN_LIMIT[dtype]
        solver = _sinkhorn_log if use_log else _sinkhorn_plain
        return (*solver(shifted, a_, b_, epsilon, max_iters, tol, check_every, out, phi_), use_log)

    # Cache blocking (CPU): each iteration streams K and Kᵀ once; a batch whose kernels outgrow
    # the cache is re-read from DRAM every iteration. Blocks are independent problems, so the
    # result is the same; iters / err are the worst block's. Each block shifts its rows, builds
    # its kernel and writes its plan into the output while they are in cache (dfa bench).
    # On the GPU the whole batch is one block.
    flat, fmin = cost.reshape(-1, n, c), row_min.reshape(-1, n, 1)
    fa, fb = a.reshape(-1, n), b.reshape(-1, c)
    fphi = None if phi is None else phi.reshape(-1, c)
    step = (max(1, _CHUNK_BYTES // max(1, 2 * n * c * flat.element_size())) if cost.device.type == "cpu"
            else max(1, flat.shape[0]))
    plan = torch.empty_like(flat)
    p_err = flat.new_zeros(flat.shape[0])                          # per problem, on the device
    p_iters = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
    p_conv = torch.zeros(flat.shape[0], dtype=torch.bool, device=flat.device)
    iters, use_log = 0, bool(log_domain)
    for i in range(0, flat.shape[0], step):
        j = slice(i, i + step)
        _, it, p_err[j], p_iters[j], p_conv[j], lg = solve(flat[j] - fmin[j], fa[j], fb[j],
                                                           None if fphi is None else fphi[j], out=plan[j])
        iters, use_log = max(iters, it), use_log or lg
    err = _worst(p_err) if max_iters > 0 else float("nan")            # no iteration: no error
    plan = plan.reshape(cost.shape)
    if return_info:
        return plan, {"iters": iters, "err": err, "log_domain": use_log, "problem_err": p_err.reshape(lead),
                      "problem_iters": p_iters.reshape(lead), "converged": p_conv.reshape(lead)}
    return plan


def _marginal_error(row: torch.Tensor, a: torch.Tensor, col: torch.Tensor,
                    b: torch.Tensor, phi: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-problem ``‖row − a‖₁ + ‖col − b‖₁`` (...,) (columns with φ < 1 are not constrained).
    method.md §5. A tensor, so tracking it costs no host sync; the stopping rule takes its max."""
    col_err = (col - b).abs()
    if phi is not None:
        col_err = col_err * (phi == 1)
    return (row - a).abs().sum(-1) + col_err.sum(-1)


def _worst(err: torch.Tensor) -> float:
    """The batch's worst marginal error (one host sync)."""
    return float(err.max()) if err.numel() else 0.0


class _Progress:
    """Per-problem convergence bookkeeping of one block, on the device (no host sync).

    ``done_at`` is the first checked iteration at which a problem's own error fell below
    ``tol`` (0 = not yet): the iteration count it would have needed alone."""

    def __init__(self, err_like: torch.Tensor):
        self.done_at = torch.zeros(err_like.shape, dtype=torch.long, device=err_like.device)

    def update(self, err: torch.Tensor, tol: float, iters: int) -> None:
        self.done_at.masked_fill_((self.done_at == 0) & (err < tol), iters)

    def result(self, err: torch.Tensor, tol: float, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(iterations used per problem, converged per problem: final error < tol)."""
        used = torch.where(self.done_at > 0, self.done_at, torch.full_like(self.done_at, iters))
        return used, err < tol


def _sinkhorn_plain(cost, a, b, epsilon, max_iters, tol, check_every, out=None, phi=None):
    """Scaling form, K = exp(−cost/ε) with cost row-shifted to min 0. method.md §5.

    ``K v`` and ``Kᵀ u`` are computed as row-vector × matrix products ``vᵀ Kᵀ`` and ``uᵀ K``
    against contiguous copies of K and Kᵀ: on CPU this was 2.5–3× faster than the
    broadcast-multiply-and-sum form of perf-anchors §2 (which is faster than the
    matrix × column-vector ``bmm`` measured there).
    """
    tiny = torch.finfo(cost.dtype).tiny
    kernel = torch.exp(cost / -epsilon)                       # (..., N, C), row max 1
    kernel_t = kernel.transpose(-1, -2).contiguous()          # (..., C, N)

    def k_v(v):                                               # K v   → (..., N)
        return (v[..., None, :] @ kernel_t).squeeze(-2)

    def kt_u(u):                                              # Kᵀ u  → (..., C)
        return (u[..., None, :] @ kernel).squeeze(-2)

    v = torch.ones_like(b)
    kv = k_v(v)
    u = a / kv.clamp_min(tiny)
    ktu = kt_u(u)
    iters = 0
    track = _Progress(a[..., 0])
    for iters in range(1, max_iters + 1):
        u = a / kv.clamp_min(tiny)
        ktu = kt_u(u)
        v = b / ktu.clamp_min(tiny)
        if phi is not None:
            v = v.pow(phi)                                    # semi-relaxed / free columns
        kv = k_v(v)
        if tol > 0 and (iters % check_every == 0 or iters == max_iters):
            err = _marginal_error(u * kv, a, v * ktu, b, phi)
            track.update(err, tol, iters)
            if _worst(err) < tol:
                break
    err = (_marginal_error(u * kv, a, v * ktu, b, phi) if max_iters > 0
           else torch.full_like(a[..., 0], float("nan")))
    plan = torch.mul(kernel, u[..., :, None], out=out)        # T = diag(u) K diag(v), in place
    return plan.mul_(v[..., None, :]), iters, err, *track.result(err, tol, iters)


def _sinkhorn_log(cost, a, b, epsilon, max_iters, tol, check_every, out=None, phi=None):
    """Log-domain form on scaled potentials f̃ = f/ε, g̃ = g/ε. method.md §5.

    ``f̃ = log a − lse_j(g̃_j − C_ij/ε)``, ``g̃ = log b − lse_i(f̃_i − C_ij/ε)``; zero marginal
    entries give −inf potentials and exactly zero rows/columns of T.
    """
    neg = cost / -epsilon                                     # −C/ε  (..., N, C)
    neg_t = neg.transpose(-1, -2).contiguous()                # (..., C, N): contiguous lse
    log_a, log_b = a.log(), b.log()
    g = torch.zeros_like(b)
    lse_row = torch.logsumexp(neg + g[..., None, :], dim=-1)  # (..., N)
    f = log_a - lse_row
    lse_col = torch.zeros_like(b)
    iters = 0
    track = _Progress(a[..., 0])
    for iters in range(1, max_iters + 1):
        f = log_a - lse_row
        lse_col = torch.logsumexp(neg_t + f[..., None, :], dim=-1)
        g = log_b - lse_col
        if phi is not None:                                   # φ·(log b − lse); φ = 0 gives g = 0
            g = torch.where(phi > 0, phi * g, torch.zeros_like(g))
        lse_row = torch.logsumexp(neg + g[..., None, :], dim=-1)
        if tol > 0 and (iters % check_every == 0 or iters == max_iters):
            err = _marginal_error((f + lse_row).exp(), a, (g + lse_col).exp(), b, phi)
            track.update(err, tol, iters)
            if _worst(err) < tol:
                break
    err = (_marginal_error((f + lse_row).exp(), a, (g + lse_col).exp(), b, phi)
           if max_iters > 0 else torch.full_like(a[..., 0], float("nan")))
    plan = torch.exp(neg + f[..., :, None] + g[..., None, :], out=out)
    return plan, iters, err, *track.result(err, tol, iters)


def _row_normalize(a: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return a / a.sum(dim=-1, keepdim=True).clamp_min(eps)


def scoring_matrix(a_la: torch.Tensor, a_ha: torch.Tensor, s: torch.Tensor, mode: str = "fixed",
                   lambda_l: float = 1.0, lambda_h: float = 0.1) -> torch.Tensor:
    """OT scoring matrix O. method.md §5 (params.yaml ``ot.score``).

    * ``fixed`` (default): ``O = λ_l·A_la Ŝ + λ_h·rownorm(A_ha) Ŝ``.
    * ``literal``: the paper's printed form ``O_ic = λ_l·(A_la Ŝ)_ic + λ_h·Ā_ha^i`` with
      ``Ā_ha^i`` = row mean of rownorm(A_ha), broadcast over classes. A per-row constant is
      absorbed by the row scaling of any plan with fixed rows, so HFAR would be a no-op.

    Args:
        a_la: (B, N, N) low-frequency aligned affinity.
        a_ha: (B, N, N) high-frequency rectified affinity, ≥ 0.
        s: (B, N, C) class scores Ŝ (background column included).
    Returns:
        (B, N, C).
    """
    low = lambda_l * (a_la @ s)
    if mode == "fixed":
        return low + lambda_h * (_row_normalize(a_ha) @ s)
    if mode == "literal":
        row_term = _row_normalize(a_ha).mean(dim=-1, keepdim=True)        # (B, N, 1)
        return low + lambda_h * row_term
    raise ValueError(f"scoring_matrix mode must be one of {SCORES}, got {mode!r}")


def normalize_scores(o: torch.Tensor, valid: torch.Tensor, mode: str = "class") -> torch.Tensor:
    """O scaled to [0, 1] before transport. method.md §5 (``ot.normalize``).

    * ``class`` (default): each valid column min-maxed over the image's tokens. Propagation
      through a squared, Sinkhorn-normalised affinity leaves each column nearly constant
      (within-column spread 0.05 of the image's for attention, 0.0007 for v1's A_la); a
      per-image scale then makes the plan uniform within each column and even ground-truth
      areas give only 9–30 mIoU (benchmark.md, second probe).
    * ``image``: one min-max over the image's valid entries (v1's ``global``).

    Invalid (absent) columns are 0. Args: o (B, N, C), valid (B, C) bool. Returns (B, N, C).
    """
    valid3 = valid.bool()[:, None, :].expand_as(o)
    big = torch.finfo(o.dtype).max
    dims = -2 if mode == "class" else (-2, -1)
    if mode not in NORMALIZE:
        raise ValueError(f"normalize mode must be one of {NORMALIZE}, got {mode!r}")
    lo = torch.where(valid3, o, big).amin(dim=dims, keepdim=True)
    hi = torch.where(valid3, o, -big).amax(dim=dims, keepdim=True)
    out = ((o - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return out * valid3


def _renormalize(b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    b = b * valid
    return b / b.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(b.dtype).tiny)


def prior(kind: str, scores: torch.Tensor, valid: torch.Tensor, mix: float = 0.2, tau: float = 0.1,
          areas: Optional[torch.Tensor] = None, normalize: str = "class") -> torch.Tensor:
    """Column prior b (B, C), summing to 1 over the valid columns. method.md §5 (``ot.prior``).

    * ``cam_area`` (the spec's): the share of tokens of each column in the unrefined CAM's
      labels, :func:`dfa.cam.cam_labels` of ``scores`` = Ŝ = [s_bg | S] as §1 builds it (the
      raw-CAM row's rule), floored at 1/N, mixed with uniform by ``mix`` (``ot.prior_mix``),
      renormalised.
    * ``cam_area_scaled`` (the rule before issue 17, kept so its numbers can be reproduced):
      the same count on Ŝ first put through O's scaling (:func:`normalize_scores` with
      ``normalize``), which also min-maxes s_bg. With ``normalize: class`` and the identity
      affinity, balanced OT at ε → 0 returns exactly this argmax; it differs from the raw
      CAM's labels wherever the stretched s_bg overtakes a class.
    * ``softmax_sum``: the paper's literal ``softmax_c(Σ_i Ŝ_ic)`` (nearly one-hot at N = 400).
    * ``tempered`` (v1): ``softmax_c(mean_i Ŝ_ic / τ)``.
    * ``uniform``.
    * ``decoder``: ``areas`` (B, C) predicted by the decoder, floored and mixed as ``cam_area``.
    * ``refined`` [choice, issue 17]: ``areas`` (B, C) counted on the E(⊙) read-out of the row's
      own learned affinities (:meth:`dfa.model.DFA.refined_areas`), floored and mixed as
      ``cam_area``.
    * ``oracle``: ``areas`` = ground-truth areas, used as given (a ceiling row, §11).

    Absent columns get 0.
    """
    valid = valid.bool()
    vf = valid.to(scores.dtype)
    n = scores.shape[-2]
    uniform = vf / vf.sum(dim=-1, keepdim=True).clamp_min(1)
    if kind in ("cam_area", "cam_area_scaled", "decoder", "refined"):
        if kind not in ("decoder", "refined"):
            counted = normalize_scores(scores, valid, normalize) if kind == "cam_area_scaled" else scores
            lab = cam_labels(counted, valid)                                            # (B, N)
            share = torch.nn.functional.one_hot(lab, scores.shape[-1]).to(scores.dtype).mean(dim=-2)
        else:
            if areas is None:
                raise ValueError(f"prior {kind!r} needs areas (B, C)")
            share = areas.to(scores.dtype)
        share = _renormalize(share.clamp_min(1.0 / n), valid)
        return _renormalize((1 - mix) * share + mix * uniform, valid)
    if kind == "softmax_sum":
        return torch.softmax(scores.sum(dim=-2).masked_fill(~valid, float("-inf")), dim=-1)
    if kind == "tempered":
        return torch.softmax((scores.mean(dim=-2) / tau).masked_fill(~valid, float("-inf")), dim=-1)
    if kind == "uniform":
        return uniform
    if kind == "oracle":
        if areas is None:
            raise ValueError("prior 'oracle' needs the ground-truth areas")
        return _renormalize(areas.to(scores.dtype).clamp_min(1e-6), valid)
    raise ValueError(f"prior must be one of {PRIORS}, got {kind!r}")


def column_exponent(formulation: str, valid: torch.Tensor, epsilon: float, reg_m: float) -> torch.Tensor:
    """φ per column (B, C) for :func:`sinkhorn`. method.md §5 (``ot.formulation``).

    ``balanced`` 1; ``relaxed`` τ_m/(τ_m + ε) everywhere; ``dustbin`` 0 (free mass) for the
    background column 0 and τ_m/(τ_m + ε) for the classes. With balanced class columns the
    dustbin plan would equal the balanced one (fixing one column's scaling is only a gauge:
    rows and class columns exact leave the background column exactly b_bg), so its class
    columns are relaxed. Invalid columns get 1 (b = 0 keeps them empty).
    """
    relaxed = reg_m / (reg_m + epsilon) if math.isfinite(reg_m) else 1.0
    phi = torch.full(valid.shape, 1.0)
    if formulation == "relaxed":
        phi.fill_(relaxed)
    elif formulation == "dustbin":
        phi.fill_(relaxed)
        phi[:, 0] = 0.0
    elif formulation != "balanced":
        raise ValueError(f"transport formulation must be balanced, relaxed or dustbin, got {formulation!r}")
    return torch.where(valid.bool().cpu(), phi, torch.ones_like(phi)).to(valid.device)


@torch.no_grad()
def transport(o_hat: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, formulation: str = "balanced",
              epsilon: float = 0.1, reg_m: float = 0.3, max_iters: int = 100, tol: float = 1e-6,
              return_info: bool = False):
    """The plan T (B, N, C) of tokens onto columns. method.md §5.

    Cost ``1 − Ô`` (Ô from :func:`normalize_scores`, in [0, 1]; ε is relative to that
    range), rows exactly 1/N, columns by ``formulation`` towards ``b``. Absent columns carry
    no mass. Runs in float32 under ``no_grad`` with autocast off. ``info`` adds the column
    sums (B, C) and :func:`plan_diagnostics` per image, so a failure is visible (``ot.debug``).
    """
    with torch.autocast(device_type=o_hat.device.type, enabled=False):
        o = o_hat.float()
        valid = valid.bool()
        cost = torch.where(valid[:, None, :], 1.0 - o, torch.ones_like(o))
        n = o.shape[-2]
        a = torch.full(o.shape[:-1], 1.0 / n, dtype=o.dtype, device=o.device)
        b = _renormalize(b.float(), valid)
        phi = None if formulation == "balanced" else column_exponent(formulation, valid, epsilon, reg_m)
        plan, info = sinkhorn(cost, a, b, epsilon, max_iters=max_iters, tol=tol, return_info=True,
                              col_exponent=phi)
        info.update(plan_diagnostics(plan, b, valid, phi))
    info["column_sums"] = plan.sum(dim=-2)
    return (plan, info) if return_info else plan


def plan_diagnostics(plan: torch.Tensor, b: torch.Tensor, valid: torch.Tensor,
                     phi: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Per image, what a plan with rows 1/N says about its own failure. method.md §5.

    * ``row_err`` (B,): ``max_i |N·Σ_c T_ic − 1|``, the row marginal's relative error, the
      one balanced Sinkhorn leaves when it stops early (its columns are met after every
      iteration);
    * ``col_err`` (B,): ``max_c |Σ_i T_ic − b_c| / b_c`` over the valid balanced columns
      (φ = 1; relaxed columns are not constrained);
    * ``prior`` (B, C): b as transported;
    * ``argmax_area`` (B, C): the share of tokens whose posterior P = N·T has its argmax in
      each valid column. Balanced columns always carry exactly b, so a collapse shows only
      here: a column with mass b but no token it wins;
    * ``empty`` (B, C) bool: valid columns that win no token (seed collapse when a present
      class's).

    Args: plan (B, N, C) with rows 1/N; b (B, C); valid (B, C); phi (B, C) or None (balanced).
    """
    valid = valid.bool()
    n = plan.shape[-2]
    row_err = (plan.sum(dim=-1) * n - 1.0).abs().amax(dim=-1)
    col = plan.sum(dim=-2)
    balanced = valid & (b > 0) if phi is None else valid & (b > 0) & (phi == 1)
    col_rel = (col - b).abs() / b.clamp_min(torch.finfo(b.dtype).tiny)
    col_err = torch.where(balanced, col_rel, torch.zeros_like(col_rel)).amax(dim=-1)
    lab = plan.masked_fill(~valid[:, None, :], float("-inf")).argmax(dim=-1)        # (B, N)
    cols = torch.arange(plan.shape[-1], device=plan.device)
    area = (lab[..., None] == cols).to(plan.dtype).mean(dim=-2) * valid    # not one_hot: it syncs on CUDA
    return {"row_err": row_err, "col_err": col_err, "prior": b, "argmax_area": area, "empty": valid & (area == 0)}


def readout(plan: torch.Tensor, valid: torch.Tensor, mode: str = "posterior") -> torch.Tensor:
    """Token scores (B, N, C) from the plan. method.md §5 (``ot.readout``).

    * ``posterior`` (default): ``P = N·T``, a distribution over the columns per token (rows
      of T are exactly 1/N).
    * ``colmax`` (v1): ``M_r = T / max_i T`` per column; the caller replaces the background
      column by ``1 − max_c M_r`` (the anchors' rule), as v1 did.
    """
    valid3 = valid.bool()[:, None, :]
    if mode == "posterior":
        return plan * plan.shape[-2] * valid3
    if mode == "colmax":
        m = plan / plan.amax(dim=-2, keepdim=True).clamp_min(torch.finfo(plan.dtype).tiny)
        return m * valid3
    raise ValueError(f"readout must be one of {READOUTS}, got {mode!r}")


@torch.no_grad()
def reweight_scores(o_hat: torch.Tensor, valid: torch.Tensor, epsilon: float = 0.1, max_iters: int = 100,
                    tol: float = 1e-6) -> torch.Tensor:
    """DHR-style reweighting (ECCV'24; ``ot.formulation: reweight``). method.md §5.

    OT over the present classes only (the background column 0 excluded) with equal shares;
    each class column of ``o_hat`` is multiplied by its plan column min-maxed over tokens.
    Images with a single present class keep their scores. The caller takes the background
    as ``1 − max`` of the returned class scores.

    Args:
        o_hat: (B, N, 1 + C) normalised scores; valid (B, 1 + C).
    Returns:
        (B, N, C) class scores in [0, 1].
    """
    fg, vfg = o_hat[..., 1:].float(), valid[:, 1:].bool()
    multi = vfg.sum(dim=-1) > 1
    if not bool(multi.any()):
        return fg * vfg[:, None, :]
    plan = transport(fg[multi], vfg[multi].float(), vfg[multi], "balanced", epsilon, max_iters=max_iters, tol=tol)
    lo = plan.amin(dim=-2, keepdim=True)
    hi = plan.amax(dim=-2, keepdim=True)
    weight = (plan - lo) / (hi - lo).clamp_min(1e-12)
    out = fg.clone()
    out[multi] = fg[multi] * weight
    return out * vfg[:, None, :]
