"""Sinkhorn-Knopp self-labelling over the whole dataset (paper §3.1, eq. 3; SeLa/SeLaVi).

Labels y are chosen to maximise Σ_i log p(y_i | x_i) under a marginal constraint on the cluster sizes. The relaxed
problem is entropic optimal transport between rows (samples, mass 1/N each) and columns (clusters, mass c_k):

    Q = diag(u) · exp(A) · diag(v),   A = λ_sk · log p,   Q 1 = 1/N,   Qᵀ 1 = c        # eq. 3 (relaxed)

solved by alternating row and column scaling in the log domain. Rows may be spread over processes: a process holds
only its row shard of log p and its log u; the K-vector log v is global. ``reduce(t, op)`` (op "sum" or "max")
all-reduces a small tensor across processes and returns it (``None`` = one process). Only K-vectors and the scalar
N go through it. Every process takes the same decisions (convergence, stop) from the same reduced values, so the
processes stay in lockstep. Everything N×K or N-long is allocated on the rows' device (a GPU worker's scores stay on
its GPU; the K-vectors then travel over NCCL).

Memory: rows are processed in chunks; besides the input, only O(chunk × K) temporaries and the (N,) vectors
log u and labels are allocated. One pass over the rows per iteration computes the row scaling and the column
log-sums of the row-normalised plan at once (an online log-sum-exp with a per-column max shift).

Speed: plain Sinkhorn converges slowly when λ_sk·log p spans a wide range (confident networks). Three standard,
answer-preserving accelerations are on by default: an ε-scaling warm start (λ_sk/2^J, ..., λ_sk), an
over-relaxed column update (ω = 1.5) in its stages, and Anderson mixing of the column updates at the final λ_sk.
Convergence is always judged on the exact column sums of the final λ_sk.

Two domains. ``domain="log"`` does every pass in the log domain (two exp per element per pass; exact for any
range of log p). ``domain="auto"`` (default) does the passes SeLa-style on a *scaled* kernel held in memory (one extra
N×K in ``dtype``): a pass is two matrix-vector products (P v and Pᵀ r), memory-bandwidth bound instead of exp bound.
The kernel is stabilised by absorption (Schmitzer 2016, see ``_ScaledKernel``): the large part of log v is folded
into P, rebuilt with one exp pass only when λ changes or the rest of log v drifts by more than
SCALED_MAX_LOG_RANGE, so no float under- or overflows whatever the range of log p and log v, and the answer is the
log domain's to a relative K·e^-30. The rebuild decision uses the global log v only, so every process takes it
alike. A float32 solve asked for tol < 1e-5 stays in the log domain (SCALED_MIN_TOL).

Labels are the argmax of the transported plan, argmax_k (A_ik + log v_k) (the row scaling does not change it). The
plan meets the marginals to ``tol``; the argmax labels only approximately (see ``label_histogram``).
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import scipy.sparse
import torch

if TYPE_CHECKING:
    from avdet.config import SinkhornConfig

log = logging.getLogger(__name__)

Reduce = Callable[[torch.Tensor, str], torch.Tensor]

A_FLOOR = -1000.0      # floor of A = λ·log p: exp(-1000) is 0 in every float, but stays finite (no -inf arithmetic)
CHUNK_ELEMS = 1 << 22  # elements per chunk temporary (16 MiB in float32)
# exp() of max-shifted values is floored here: below it the result would be subnormal, which makes exp ~8x slower
# on x86 CPUs. The spurious mass (≤ N·e^-80 beside a max term of 1) is far below any tolerance.
EXP_FLOOR = {torch.float32: -80.0, torch.float64: -700.0}
LAMBDA_START = 1.0     # ε-scaling: the first λ of the warm-start schedule is in [1, 2)
STAGE_TOL = 0.1        # column error at which a warm-start stage hands over to the next λ
OVER_RELAX = 1.5       # ω of the warm-start stages' over-relaxed column update (1 = plain Sinkhorn)
ANDERSON_MEMORY = 5    # final stage: Anderson mixing of the last 5 + 1 column updates (0 = over-relaxation only)
ANDERSON_GUARD = 2.0   # an error above this factor times the best so far stops the mixing (see _Anderson)
SCALED_MAX_LOG_RANGE = 30.0  # domain="auto": rebuild the scaled kernel when log v − log v_abs spans more
PASS_CHUNK_ELEMS = 1 << 22   # scaled pass: rows per chunk × K. Few, large chunks: a chunk costs four ops (each a
                             # thread fork/join), and its float32 column sums (≤ 4M terms) stay within ~2e-6
                             # relative before they are added up in float64 (a whole-matrix Pᵀ r: 5e-5 at N = 1e6)
SCALED_FLOOR = -60.0   # log of the per-row floor of the scaled kernel P. With v' in [e^-15, e^15] (the residual
                       # potential centred, its span ≤ SCALED_MAX_LOG_RANGE) and r = 1/(P v') ≥ e^-15/K, every product
                       # a pass forms (P·v', P·r) is a normal float32 for K < e^12: a subnormal operand or result makes
                       # the BLAS threads several times slower, and set_flush_denormal reaches only the calling thread
# float32 matvecs round the column sums at ~1e-6 relative: asked for a tighter tol, a float32 solve stays in the
# log domain (whose f32 sums are within tol in the tests down to 1e-6)
SCALED_MIN_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
DOMAINS = ("auto", "log")


@dataclass
class SinkhornResult:
    """labels (N,) int64 local rows; log_u (N,) local row scaling; log_v (K,) float64 global column scaling;
    iters = number of passes over the rows; col_error = max_k |Σ_i Q_ik / c_k − 1| of the returned (u, v);
    lam = the λ the scalings belong to (λ_sk, unless max_iters ran out during the warm start)."""
    labels: torch.Tensor
    log_u: torch.Tensor
    log_v: torch.Tensor
    iters: int
    col_error: float
    converged: bool
    lam: float


def _local_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
    return t


def column_marginal(k: int, kind: str = "uniform", std: float = 0.5) -> torch.Tensor:
    """Target cluster proportions c (K,) float64, strictly positive, summing to 1.

    uniform: c_k = 1/K (eq. 3). gaussian (paper: AudioSet): sizes shaped like a half-Gaussian over cluster rank,
    c_r ∝ exp(−x_r² / (2·std²)) with x_r = (r + ½)/K ∈ (0, 1), r = 0 the largest cluster. ``std`` is relative to
    K: std = 0.5 gives a largest/smallest size ratio of about e² ≈ 7.4; larger std is closer to uniform. The
    vector is sorted by rank (descending); ``rank_marginal`` matches it to the clusters' current sizes.
    """
    if k < 1:
        raise ValueError(f"column_marginal: k must be >= 1, got {k}")
    if kind == "uniform":
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    if kind == "gaussian":
        if std <= 0:
            raise ValueError(f"column_marginal: std must be > 0, got {std}")
        x = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        w = torch.exp(-x * x / (2.0 * std * std))
        return w / w.sum()
    raise ValueError(f"column_marginal: kind must be 'uniform' or 'gaussian', got {kind!r}")


def rank_marginal(col_marginal: torch.Tensor, current_sizes: torch.Tensor) -> torch.Tensor:
    """Permute a rank-sorted marginal (K,) so the cluster that is currently largest gets the largest target.
    current_sizes (K,): e.g. the label histogram of the previous round (ties broken by cluster index)."""
    order = torch.argsort(current_sizes.to(torch.float64), descending=True, stable=True)
    sorted_c = torch.sort(col_marginal.to(torch.float64), descending=True).values
    out = torch.empty_like(sorted_c)
    out[order] = sorted_c
    return out


def _check_marginal(col_marginal: torch.Tensor, k: int) -> torch.Tensor:
    c = torch.as_tensor(col_marginal, dtype=torch.float64).flatten()
    if c.numel() != k:
        raise ValueError(f"sinkhorn: col_marginal has {c.numel()} entries, but there are {k} clusters")
    if not bool(torch.all(c > 0)) or abs(float(c.sum()) - 1.0) > 1e-6:
        raise ValueError(f"sinkhorn: col_marginal must be > 0 and sum to 1 (sum={float(c.sum()):.6g}, "
                         f"min={float(c.min()):.3g}); build it with column_marginal()")
    return c


def _exp_shifted_(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """In place: exp(max(x − shift, EXP_FLOOR)); shift ≥ x's max along the reduced dimension."""
    return x.sub_(shift).clamp_(min=EXP_FLOOR[x.dtype]).exp_()


def _row_chunks(n: int, width: int) -> Iterator[slice]:
    rows = max(1, CHUNK_ELEMS // max(1, width))
    for s in range(0, n, rows):
        yield slice(s, min(n, s + rows))


class _ColumnLSE:
    """Online per-column log-sum-exp over row chunks: running max M (K,) and Σ exp(· − M) (K,), float64."""

    def __init__(self, k: int, device: torch.device | str = "cpu"):
        self.m = torch.full((k,), -math.inf, dtype=torch.float64, device=device)
        self.s = torch.zeros(k, dtype=torch.float64, device=device)

    def add_max(self, chunk_max: torch.Tensor) -> torch.Tensor:
        """Raise the running max to include chunk_max (K,); returns the new max (to shift this chunk by)."""
        new = torch.maximum(self.m, chunk_max.to(torch.float64))
        self.s *= torch.exp(self.m - new).nan_to_num_(nan=0.0)
        self.m = new
        return new

    def global_lse(self, reduce: Reduce) -> torch.Tensor:
        """All-reduce: max of the shifts, then sum of the rescaled exp-sums. Returns log Σ_all exp (K,)."""
        m = reduce(self.m.clone(), "max")
        s = reduce(self.s * torch.exp(self.m - m).nan_to_num_(nan=0.0), "sum")
        return m + torch.log(s)


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.float32 / torch.float64, or their names as SinkhornConfig.dtype holds them."""
    out = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if out not in (torch.float32, torch.float64):
        raise ValueError(f"sinkhorn: dtype must be float32 or float64, got {dtype!r}")
    return out


def _global_count(n: int, reduce: Reduce) -> float:
    """N_total = Σ over processes of the local row count; raises if no process holds a row."""
    total = float(reduce(torch.tensor([float(n)], dtype=torch.float64), "sum")[0])
    if total <= 0:
        raise ValueError("sinkhorn: no rows on any process (N_total = 0)")
    return total


def _column_step(lse: torch.Tensor, log_v: torch.Tensor, log_c: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Column sums of the row-normalised plan Σ_i Q_ik = exp(log v_k + lse_k); returns (max relative error vs c,
    the column-rescaled log v). Raises if the sums are not finite (NaN in log p on some process)."""
    if not bool(torch.all(torch.isfinite(lse))):
        raise FloatingPointError("sinkhorn: column log-sums are not finite: log_p holds NaN or +inf on some rank")
    log_colsum = log_v + lse
    err = float(torch.max(torch.abs(torch.expm1(log_colsum - log_c))))
    return err, log_c - lse


def sinkhorn_knopp(log_p: torch.Tensor, lambda_sk: float, col_marginal: torch.Tensor, max_iters: int = 200,
                   tol: float = 1e-3, reduce: Reduce | None = None, dtype: torch.dtype | str = torch.float32,
                   anneal: bool = True, domain: str = "auto") -> SinkhornResult:
    """Self-labels from per-sample log-probabilities under a column marginal (eq. 3, SeLa's SK algorithm).

    log_p (N, K): this process's rows, e.g. (log_softmax(g^a) + log_softmax(g^v))/2; −inf allowed (floored so that
    A ≥ A_FLOOR). lambda_sk: inverse entropic regularisation λ_sk. col_marginal (K,): cluster proportions, > 0,
    sum 1. max_iters: passes over the rows in all. tol: max relative column error. dtype: precision of the N×K
    arithmetic (K-vectors are always float64). anneal: warm-start through λ_sk/2^j (see ``_solve``); the answer is
    the same, reached in fewer passes when λ_sk·log p spans a wide range. domain: "auto" (scaled kernel, log
    domain where needed; see the module docstring) or "log". N may be < K; a process may hold 0 rows.
    Returns labels (N,) = argmax_k (λ log p_ik + log v_k) and the scalings (see SinkhornResult).
    """
    reduce, dtype = reduce or _local_reduce, _as_dtype(dtype)
    if domain not in DOMAINS:
        raise ValueError(f"sinkhorn: domain must be one of {DOMAINS}, got {domain!r}")
    n, k = log_p.shape
    dev = log_p.device
    log_c = torch.log(_check_marginal(col_marginal, k)).to(dev)
    floor = A_FLOOR / lambda_sk
    log_n = math.log(_global_count(n, reduce))
    log_u = torch.empty(n, dtype=dtype, device=dev)
    labels = torch.empty(n, dtype=torch.int64, device=dev)
    kernel = _ScaledKernel(log_p, floor, dtype) if domain == "auto" and tol >= SCALED_MIN_TOL[dtype] else None

    def one_pass(lam: float, log_v: torch.Tensor) -> _ColumnLSE:
        if kernel is not None:
            return kernel.column_pass(lam, log_v, log_n)
        return _dense_pass(log_p, lam, floor, log_v.to(dtype), log_n, log_u, labels, dtype)
    log_v, it, err, lam = _solve(one_pass, lambda_sk, log_c, max_iters, tol, reduce, anneal, "sinkhorn_knopp")
    if kernel is not None:                              # the last pass left log u and labels to be read off
        kernel.finish(log_v, log_n, log_u, labels)
        log.debug("sinkhorn_knopp: %d passes, scaled kernel built %d times, squared %d times", it, kernel.rebuilds,
                  kernel.squares)
    return SinkhornResult(labels, log_u, log_v, it, err, err < tol and lam == lambda_sk, lam)


class _ScaledKernel:
    """The stabilised scaled kernel (absorption, Schmitzer 2016): P = exp(max(B − M, SCALED_FLOOR)) with
    B = A + log v_abs, M = rowmax B (N,) and log v_abs an absorbed column potential (K,). A pass uses the remaining
    v' = exp(log v − log v_abs − top) (top = the middle of its log range, so v' ∈ [e^-15, e^15]) and is two
    ``torch.mv`` over P. P is rebuilt (one exp
    pass, absorbing the current log v) when λ changes or log v − log v_abs spans more than SCALED_MAX_LOG_RANGE;
    as v converges that stops happening. Every row's largest term P_ik v'_k is then ≥ e^-15 and every v'_k ≤ e^15, so
    the floored entries (≤ e^-60) change a row sum by at most K·e^-30 relative (3e-10 at K = 3000)."""

    def __init__(self, log_p: torch.Tensor, floor: float, dtype: torch.dtype):
        self.log_p, self.floor, self.dtype = log_p, floor, dtype
        n, k = log_p.shape
        self.p = torch.empty((n, k), dtype=dtype, device=log_p.device)
        self.row_max = torch.empty(n, dtype=torch.float64, device=log_p.device)
        self.lam: float | None = None
        self.absorbed = torch.zeros(k, dtype=torch.float64, device=log_p.device)
        self.rebuilds = 0
        self.squares = 0
        self.row_sum: torch.Tensor | None = None
        self.top = 0.0

    def _build(self, lam: float, log_v: torch.Tensor) -> None:
        n, k = self.log_p.shape
        shift = log_v.to(self.dtype)
        for sl in _row_chunks(n, k):
            b = self.p[sl]
            b.copy_(self.log_p[sl]).clamp_(min=self.floor).mul_(lam).add_(shift)
            m = b.amax(dim=1)
            self.row_max[sl] = m
            b.sub_(m[:, None]).clamp_(min=SCALED_FLOOR).exp_()
        self.lam, self.absorbed = lam, shift.to(torch.float64)      # as rounded into P, so lse_k stays consistent
        self.rebuilds += 1

    def _square(self) -> None:
        """P at 2λ from P at λ, in place: B doubles with λ and the absorbed potential (the ε-stage carries log v
        doubled), so M doubles and exp(max(2(B − M), floor)) = max(P², e^floor): a multiply and a clamp per entry
        instead of a rebuild's exp, and the same kernel (the clamp also keeps squared tiny entries out of the
        subnormal range, where every later pass would slow down several-fold)."""
        floor = math.exp(SCALED_FLOOR)
        for sl in _row_chunks(*self.p.shape):
            self.p[sl].square_().clamp_(min=floor)
        self.row_max.mul_(2)
        self.absorbed = self.absorbed * 2
        self.lam = self.lam * 2
        self.squares += 1

    def _residual(self, lam: float, log_v: torch.Tensor) -> torch.Tensor:
        """log v − log v_abs (P squared when λ doubled; rebuilt when λ changed otherwise or the residual spans too
        much)."""
        if self.lam is not None and lam == 2 * self.lam:
            self._square()
        rest = log_v - self.absorbed
        if self.lam != lam or float(rest.max() - rest.min()) > SCALED_MAX_LOG_RANGE:
            self._build(lam, log_v)
            rest = torch.zeros_like(log_v)
        return rest

    def column_pass(self, lam: float, log_v: torch.Tensor, log_n: float) -> _ColumnLSE:
        """Row scaling r = 1 / (N · P v') and the column sums Pᵀ r, as the _ColumnLSE the log-domain pass gives
        (one chunk = two mv straight into the row sums and a reciprocal; the column sums added up in float64):
        lse_k = −log v_abs_k − top + log (Pᵀ r)_k."""
        rest = self._residual(lam, log_v)
        self.top, v = _centred(rest, self.dtype)
        n, k = self.p.shape
        self.row_sum = torch.empty(n, dtype=self.dtype, device=self.p.device)
        col = _ColumnLSE(k, self.p.device)
        col.m, col.s = -self.absorbed - self.top, torch.zeros(k, dtype=torch.float64, device=self.p.device)
        rows = max(1, PASS_CHUNK_ELEMS // k)
        r = torch.empty(min(n, rows), dtype=self.dtype, device=self.p.device)
        for s in range(0, n, rows):                # the second mv finds (most of) the chunk still in cache
            p, rs = self.p[s:s + rows], self.row_sum[s:s + rows]
            torch.mv(p, v, out=rs)
            torch.reciprocal(rs, out=r[:len(rs)])
            col.s += torch.mv(p.t(), r[:len(rs)])
        col.s *= math.exp(-log_n)
        return col

    def finish(self, log_v: torch.Tensor, log_n: float, log_u: torch.Tensor, labels: torch.Tensor) -> None:
        """For the last pass's log v: log u_i = −log N − M_i − top − log (P v')_i; labels = argmax_k P_ik v'_k."""
        n, k = self.p.shape
        v = torch.exp(log_v - self.absorbed - self.top).to(self.dtype)
        log_u.copy_(self.row_sum.double().log_().add_(self.row_max).add_(log_n + self.top).neg_())
        for sl in _row_chunks(n, k):
            labels[sl] = (self.p[sl] * v).argmax(dim=1)


def _centred(rest: torch.Tensor, dtype: torch.dtype) -> tuple[float, torch.Tensor]:
    """(top, v' = exp(rest − top)) with top the middle of rest's range: v' ∈ [e^-15, e^15] when the range is ≤ 30."""
    top = float(rest.max() + rest.min()) / 2
    return top, torch.exp(rest - top).to(dtype)


def _lambda_schedule(lambda_sk: float, anneal: bool) -> list[float]:
    """λ_sk/2^J, ..., λ_sk/2, λ_sk with λ_sk/2^J ≥ LAMBDA_START (just [λ_sk] without annealing)."""
    if not anneal or lambda_sk <= 2 * LAMBDA_START:
        return [lambda_sk]
    j = int(math.floor(math.log2(lambda_sk / LAMBDA_START)))
    return [lambda_sk / 2 ** i for i in range(j, -1, -1)]


def _solve(one_pass, lambda_sk, log_c, max_iters, tol, reduce, anneal, name):
    """Alternate row scaling (inside ``one_pass``) and column scaling until the columns are within ``tol``.

    ε-scaling warm start: solve at λ_sk/2^J to STAGE_TOL, carry the dual potential log v/λ to the next λ (log v is
    multiplied by the λ ratio), ..., and finish at λ_sk to ``tol``. The warm-start stages over-relax the column
    update, log v += ω·(log v* − log v) with ω = OVER_RELAX (back to 1 for good the first time the error grows);
    the final stage mixes the updates by Anderson acceleration (``_Anderson``). Clusters that receive no candidate
    mass at all (sparse only) keep log v = 0 and count as an error of 1. Returns (log_v, passes, col_error, λ of
    log_v)."""
    lams = _lambda_schedule(lambda_sk, anneal)
    stage, log_v, omega, mixer = 0, torch.zeros_like(log_c), OVER_RELAX, _Anderson(ANDERSON_MEMORY, reduce)
    err, it = math.inf, 0
    for it in range(1, max_iters + 1):
        lse = one_pass(lams[stage], log_v).global_lse(reduce)
        empty = torch.isneginf(lse)
        prev, (err, new_log_v) = err, _column_step(torch.where(empty, 0.0, lse), torch.where(empty, 0.0, log_v), log_c)
        err = max(err, 1.0) if bool(empty.any()) else err
        final = stage == len(lams) - 1
        if (final and err < tol) or it == max_iters:
            break
        new_log_v = torch.where(empty, 0.0, new_log_v)
        mixed = mixer.step(log_v, new_log_v, err) if final else None
        if mixed is None:
            omega = 1.0 if err > prev else omega                          # over-relaxation made it worse: stop it
            mixed = log_v + omega * (new_log_v - log_v)
        log_v = torch.where(empty, 0.0, mixed)
        if not final and err < max(tol, STAGE_TOL):
            log_v, stage, err = log_v * (lams[stage + 1] / lams[stage]), stage + 1, math.inf
    if not (stage == len(lams) - 1 and err < tol):
        log.warning("%s: not converged after %d passes (column error %.3g, tol %.3g, λ stage %d of %d)",
                    name, it, err, tol, stage + 1, len(lams))
    return log_v, it, err, lams[stage]


class _Anderson:
    """Anderson acceleration (type II, Walker & Ni 2011) of the column update x ↦ G(x) = log v* (x = log v).

    The next x is G(x) − (ΔX + ΔF) γ, with ΔX, ΔF the differences of the last ``memory`` + 1 iterates and of their
    residuals F = G(x) − x, and γ the least-squares solution of ΔF γ ≈ F: the combination of recent updates whose
    linearised residual is smallest. Same fixed point as Sinkhorn, in several times fewer passes when the plain
    iteration crawls (confident log p, a large λ_sk; measured in benchmarks/relabel.py). Safeguard: when an error
    exceeds ANDERSON_GUARD × the best error so far, the mixing stops for good and the plain update from the best
    iterate is taken (the caller over-relaxes from there). γ (a few numbers, solved on the CPU) goes through
    ``reduce`` ("max" of values that agree) so that every process holds bit-identical log v, and so takes the same
    stopping decision, even where their LAPACK builds round differently. ``step`` returns None when not mixing."""

    def __init__(self, memory: int, reduce: Reduce):
        self.memory, self.reduce = memory, reduce
        self.xs: list[torch.Tensor] = []
        self.fs: list[torch.Tensor] = []
        self.best_err, self.best_g, self.off = math.inf, None, memory < 1

    def step(self, x: torch.Tensor, g: torch.Tensor, err: float) -> torch.Tensor | None:
        if self.off:
            return None
        if err > ANDERSON_GUARD * self.best_err:
            self.off, self.xs, self.fs = True, [], []
            return self.best_g
        if err < self.best_err:
            self.best_err, self.best_g = err, g
        self.xs, self.fs = (self.xs + [x])[-self.memory - 1:], (self.fs + [g - x])[-self.memory - 1:]
        if len(self.xs) == 1:
            return g
        d_x = torch.stack([b - a for a, b in zip(self.xs, self.xs[1:])], 1).cpu()
        d_f = torch.stack([b - a for a, b in zip(self.fs, self.fs[1:])], 1).cpu()
        gamma = torch.linalg.lstsq(d_f, self.fs[-1].cpu()[:, None]).solution[:, 0]
        if not bool(torch.all(torch.isfinite(gamma))):
            return g
        gamma = self.reduce(gamma.to(g.device), "max").cpu()
        return g - ((d_x + d_f) @ gamma).to(g.device)


def _dense_pass(log_p, lam, floor, log_v, log_n, log_u, labels, dtype) -> _ColumnLSE:
    """One pass over row chunks: row scaling log u (in place), argmax labels (in place), and the online column
    log-sum-exp of A + log u (returned, local to this process)."""
    n, k = log_p.shape
    col = _ColumnLSE(k, log_p.device)
    for sl in _row_chunks(n, k):
        a = log_p[sl].to(dtype, copy=True).clamp_(min=floor)               # log p, floored (A = λ·a)
        b = torch.add(log_v, a, alpha=lam)                                 # A + log v
        m, idx = b.max(dim=1)
        labels[sl] = idx
        row_lse = m + _exp_shifted_(b, m[:, None]).sum(dim=1).log_()
        lu = -log_n - row_lse                                              # rows sum to 1/N
        log_u[sl] = lu
        torch.add(lu[:, None], a, alpha=lam, out=b)                        # A + log u
        shift = col.add_max(b.amax(dim=0)).to(dtype)
        col.s += _exp_shifted_(b, shift).sum(dim=0).to(torch.float64)
    return col


def plan_column_sums(log_p: torch.Tensor, lambda_sk: float, result: SinkhornResult,
                     reduce: Reduce | None = None) -> torch.Tensor:
    """Column sums (K,) float64 of the transported plan Q = diag(u) exp(λ log p) diag(v), over all processes
    (λ = result.lam; lambda_sk fixes the log p floor as in the solver). Meets the marginal to the result's
    col_error; used to check a solution."""
    reduce = reduce or _local_reduce
    n, k = log_p.shape
    floor, lam = A_FLOOR / lambda_sk, result.lam
    col = _ColumnLSE(k, log_p.device)
    lu = result.log_u.to(torch.float64)
    for sl in _row_chunks(n, k):
        b = log_p[sl].to(torch.float64, copy=True).clamp_(min=floor).mul_(lam).add_(lu[sl, None])
        shift = col.add_max(b.amax(dim=0))
        col.s += _exp_shifted_(b, shift).sum(dim=0)
    return torch.exp(col.global_lse(reduce) + result.log_v)


def label_histogram(labels: torch.Tensor, k: int, reduce: Reduce | None = None) -> torch.Tensor:
    """Global label counts (K,) float64 over all processes."""
    reduce = reduce or _local_reduce
    return reduce(torch.bincount(labels, minlength=k).to(torch.float64), "sum")


def sparse_sinkhorn_knopp(cand_idx: torch.Tensor, cand_log_p: torch.Tensor, num_clusters: int, lambda_sk: float,
                          col_marginal: torch.Tensor, max_iters: int = 200, tol: float = 1e-3,
                          reduce: Reduce | None = None, dtype: torch.dtype | str = torch.float32,
                          anneal: bool = True, domain: str = "auto") -> SinkhornResult:
    """Sinkhorn-Knopp with each sample's plan restricted to its candidate clusters (zero mass elsewhere).

    cand_idx (N, k) int64 cluster ids in [0, num_clusters) (e.g. FAISS top-k centroids), no repeats within a row;
    cand_log_p (N, k) their log-probabilities. Same algorithm, scalings and reduce contract as ``sinkhorn_knopp``;
    labels = cand_idx[i, argmax_j (A_ij + log v[cand_idx_ij])]. With k = K and cand_idx = arange it equals the
    dense solver. A cluster that is nobody's candidate cannot receive mass: the marginal is then infeasible and
    the solver reports non-convergence (its log v stays 0). ``domain`` "auto": the scaled kernel in CSR form
    (:class:`_SparseScaledKernel`: two sparse matvecs per pass), "log": the log-domain pass (scatter per pass).
    """
    reduce, dtype = reduce or _local_reduce, _as_dtype(dtype)
    if domain not in DOMAINS:
        raise ValueError(f"sparse_sinkhorn_knopp: domain must be one of {DOMAINS}, got {domain!r}")
    n, kk = cand_log_p.shape
    if cand_idx.shape != cand_log_p.shape:
        raise ValueError(f"sparse_sinkhorn_knopp: cand_idx {tuple(cand_idx.shape)} and cand_log_p "
                         f"{tuple(cand_log_p.shape)} must have the same shape")
    dev = cand_log_p.device
    log_c = torch.log(_check_marginal(col_marginal, num_clusters)).to(dev)
    floor = A_FLOOR / lambda_sk
    log_n = math.log(_global_count(n, reduce))
    log_u = torch.empty(n, dtype=dtype, device=dev)
    labels = torch.empty(n, dtype=torch.int64, device=dev)
    kernel = (_SparseScaledKernel(cand_idx, cand_log_p, num_clusters, floor, dtype)
              if domain == "auto" and tol >= SCALED_MIN_TOL[dtype] else None)

    def one_pass(lam: float, log_v: torch.Tensor) -> _ColumnLSE:
        if kernel is not None:
            return kernel.column_pass(lam, log_v, log_n)
        return _sparse_pass(cand_idx, cand_log_p, lam, floor, log_v.to(dtype), log_n, log_u, labels, dtype)
    log_v, it, err, lam = _solve(one_pass, lambda_sk, log_c, max_iters, tol, reduce, anneal,
                                 "sparse_sinkhorn_knopp")
    if kernel is not None:
        kernel.finish(log_v, log_n, log_u, labels)
    return SinkhornResult(labels, log_u, log_v, it, err, err < tol and lam == lambda_sk, lam)


class _SparseScaledKernel(_ScaledKernel):
    """:class:`_ScaledKernel` over each row's candidates only, held as CSR with int32 indices: P_ij =
    exp(max(B_ij − M_i, SCALED_FLOOR)) for the k candidates of row i (B = A + log v_abs[cand]). A pass is two sparse
    matvecs: the row sums P v' (torch CSR) and the column sums Pᵀ r. On the CPU, Pᵀ r is scipy's CSC matvec over the
    same arrays (``csr_matrix.T``: a sequential read scattering into K sums that stay in cache; no transposed copy,
    so no sort of the N·k entries). On a GPU it is a torch CSR matvec over the transposed structure, built once (the
    candidates never change) with values that follow P at every rebuild or square."""

    def __init__(self, cand_idx: torch.Tensor, cand_log_p: torch.Tensor, num_clusters: int, floor: float,
                 dtype: torch.dtype, transposed: bool | None = None):
        """transposed: build the transposed torch CSR for Pᵀ r (default: only off the CPU)."""
        n, kk = cand_log_p.shape
        dev, itype = cand_log_p.device, torch.int32 if n * kk < 2 ** 31 - 1 else torch.int64
        self.log_p, self.idx, self.floor, self.dtype = cand_log_p, cand_idx, floor, dtype
        self.num_clusters, self.width = num_clusters, kk
        flat = cand_idx.reshape(-1)
        self.crow = torch.arange(0, n * kk + 1, kk, dtype=itype, device=dev)
        self.col = flat.to(itype)
        self.p = torch.empty(n * kk, dtype=dtype, device=dev)
        self.p_t: torch.Tensor | None = None
        if dev.type != "cpu" if transposed is None else transposed:
            self.perm = torch.argsort(flat, stable=True)                 # CSR order -> transposed-CSR order
            self.crow_t = torch.zeros(num_clusters + 1, dtype=itype, device=dev)
            self.crow_t[1:] = torch.cumsum(torch.bincount(flat, minlength=num_clusters), 0).to(itype)
            self.row_t = torch.div(self.perm, kk, rounding_mode="floor").to(itype)
            self.p_t = torch.empty(n * kk, dtype=dtype, device=dev)
        self.row_max = torch.empty(n, dtype=torch.float64, device=dev)
        self.lam: float | None = None
        self.absorbed = torch.zeros(num_clusters, dtype=torch.float64, device=dev)
        self.rebuilds = self.squares = 0
        self.row_sum: torch.Tensor | None = None
        self.top = 0.0

    def _matrices(self, permute: bool = True) -> None:
        n = self.row_max.numel()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                              # "sparse CSR support is in beta"
            self.csr = torch.sparse_csr_tensor(self.crow, self.col, self.p, (n, self.num_clusters))
            if self.p_t is None:                                          # CPU: Pᵀ as scipy's CSC view of P
                self.csr_t = scipy.sparse.csr_matrix((self.p.numpy(), self.col.numpy(), self.crow.numpy()),
                                                     shape=(n, self.num_clusters), copy=False).T
                return
            if permute:
                self.p_t.copy_(self.p[self.perm])
            self.csr_t = torch.sparse_csr_tensor(self.crow_t, self.row_t, self.p_t, (self.num_clusters, n))

    def _at_candidates(self, vec: torch.Tensor, rows: slice) -> torch.Tensor:
        """vec (K,) at the candidates of ``rows``, (rows, k): index_select on the int32 ids (several times faster
        than advanced indexing with the int64 ids)."""
        kk = self.width
        return torch.index_select(vec, 0, self.col[rows.start * kk:rows.stop * kk]).view(-1, kk)

    def _build(self, lam: float, log_v: torch.Tensor) -> None:
        n, kk = self.log_p.shape
        shift = log_v.to(self.dtype)
        p = self.p.view(n, kk)
        for sl in _row_chunks(n, kk):
            b = p[sl]
            b.copy_(self.log_p[sl]).clamp_(min=self.floor).mul_(lam).add_(self._at_candidates(shift, sl))
            m = b.amax(dim=1)
            self.row_max[sl] = m
            b.sub_(m[:, None]).clamp_(min=SCALED_FLOOR).exp_()
        self.lam, self.absorbed = lam, shift.to(torch.float64)
        self.rebuilds += 1
        self._matrices()

    def _square(self) -> None:
        floor = math.exp(SCALED_FLOOR)
        for values in (self.p, self.p_t):                                  # both orders of the same entries
            for sl in _row_chunks(0 if values is None else values.numel(), 1):
                values[sl].square_().clamp_(min=floor)
        self.row_max.mul_(2)
        self.absorbed = self.absorbed * 2
        self.lam = self.lam * 2
        self.squares += 1
        self._matrices(permute=False)

    def column_pass(self, lam: float, log_v: torch.Tensor, log_n: float) -> _ColumnLSE:
        rest = self._residual(lam, log_v)
        self.top, v = _centred(rest, self.dtype)
        self.row_sum = torch.mv(self.csr, v)
        col = _ColumnLSE(self.num_clusters, self.p.device)
        col.m = -self.absorbed - self.top
        r = self.row_sum.reciprocal().mul_(math.exp(-log_n))
        if self.p_t is None:
            col.s = torch.from_numpy(self.csr_t @ r.numpy()).to(torch.float64)
        else:
            col.s = torch.mv(self.csr_t, r).to(torch.float64)
        return col

    def finish(self, log_v: torch.Tensor, log_n: float, log_u: torch.Tensor, labels: torch.Tensor) -> None:
        n, kk = self.log_p.shape
        v = torch.exp(log_v - self.absorbed - self.top).to(self.dtype)
        log_u.copy_(self.row_sum.double().log_().add_(self.row_max).add_(log_n + self.top).neg_())
        p = self.p.view(n, kk)
        for sl in _row_chunks(n, kk):
            labels[sl] = self.idx[sl].gather(1, (p[sl] * self._at_candidates(v, sl)).argmax(dim=1, keepdim=True))[:, 0]


def _sparse_pass(cand_idx, cand_log_p, lam, floor, log_v, log_n, log_u, labels, dtype) -> _ColumnLSE:
    """The sparse analogue of ``_dense_pass``: column reductions by scatter (amax) and index_add (sum)."""
    n, kk = cand_log_p.shape
    col = _ColumnLSE(log_v.numel(), cand_log_p.device)
    for sl in _row_chunks(n, kk):
        idx = cand_idx[sl]
        a = cand_log_p[sl].to(dtype, copy=True).clamp_(min=floor)
        b = torch.add(log_v[idx], a, alpha=lam)                            # A + log v[idx]
        m, j = b.max(dim=1)
        labels[sl] = idx.gather(1, j[:, None])[:, 0]
        lu = -log_n - (m + _exp_shifted_(b, m[:, None]).sum(dim=1).log_())
        log_u[sl] = lu
        torch.add(lu[:, None], a, alpha=lam, out=b)                        # A + log u
        flat_idx, flat_b = idx.reshape(-1), b.reshape(-1)
        cmax = torch.full((log_v.numel(),), -math.inf, dtype=dtype, device=b.device)
        cmax.scatter_reduce_(0, flat_idx, flat_b, reduce="amax")
        shift = col.add_max(cmax).to(dtype)
        e = _exp_shifted_(flat_b, shift[flat_idx])
        col.s.index_add_(0, flat_idx, e.to(torch.float64))
    return col


def target_marginal(marginal: str, num_clusters: int, gaussian_std: float = 0.5,
                    prev_sizes: torch.Tensor | None = None) -> torch.Tensor:
    """The round's column marginal (K,): :func:`column_marginal`, and a Gaussian one matched to the previous round's
    cluster sizes ``prev_sizes`` (largest cluster gets the largest target, :func:`rank_marginal`) when given."""
    c = column_marginal(num_clusters, marginal, gaussian_std)
    if marginal == "gaussian" and prev_sizes is not None:
        c = rank_marginal(c, torch.as_tensor(prev_sizes))
    return c


def solve(log_p: torch.Tensor, cfg: "SinkhornConfig", col_marginal: torch.Tensor,
          reduce: Reduce | None = None) -> SinkhornResult:
    """Dense Sinkhorn-Knopp on the rows ``log_p`` (n, K) as ``cfg`` (``avdet.config.SinkhornConfig``) says,
    reducing K-vectors over processes with ``reduce``."""
    return sinkhorn_knopp(torch.as_tensor(log_p), cfg.lambda_sk, col_marginal, cfg.max_iters, cfg.tol,
                          reduce=reduce, dtype=getattr(torch, cfg.dtype), domain=cfg.domain)
