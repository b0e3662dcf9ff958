"""The only place that knows about ranks (dinov2-style). Everything here falls back to one process.

* ``get_rank`` / ``get_world_size`` / ``is_main_process`` / ``barrier``: 0 / 1 / True / no-op without a group.
* ``all_gather_with_grad``: gather a batch from every rank so the contrastive loss sees the global batch
  (METHOD.md §2); the gradient flows back to the local slice.
* ``step_sizes`` / ``known_batch_sizes``: every rank's batch size, exchanged once per training step (it also says
  whether every rank still has a batch), so the step's gathers need not exchange sizes again.
* ``column_logsumexp``: log Σ exp over the rows of every rank's score matrix, per column, with gradient (L_NC's
  v→a denominators without gathering the B·C·h·w visual maps).
* ``gather_to_main`` / ``broadcast_from_main``: tensors to rank 0 and back (the relabel rounds that solve on one
  process: FAISS k-means, the actor pool).
* ``make_reduce``: the ``reduce(t, op)`` callable that ``avdet.sinkhorn`` takes (all-reduce of small tensors).
* ``setup_logging``: rank 0 logs INFO, the other ranks only WARNING and above.
* ``backend_for``: the process-group backend of CPU or GPU workers (``cpu:gloo,cuda:nccl`` on GPUs, so the CPU-side
  collectives — step flags, index and label gathers — keep working beside NCCL).
* ``init_group`` / ``local_rendezvous`` / ``spawn_loopback`` / ``ensure_dist_env`` / ``free_port``: gloo groups
  that stay on loopback on one machine (tests, the relabel actor pool).
"""
from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from distributed.cluster.net import LOOPBACK, free_port

log = logging.getLogger(__name__)

Reduce = Callable[[torch.Tensor, str], torch.Tensor]


def is_dist() -> bool:
    """True when a torch.distributed process group is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank; 0 without a process group."""
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """Number of processes in the default group; 1 without a process group."""
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank; no-op in one process."""
    if get_world_size() > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------------------------
# collectives


class _AllGatherGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces (sums) the gradient of the gathered tensor and returns this rank's
    slice: d(Σ_r loss_r)/d(x_local). Works on gloo (no reduce_scatter needed) and NCCL."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.batch = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch:(ctx.rank + 1) * ctx.batch]


_STEP_SIZES: ContextVar[tuple[int, ...] | None] = ContextVar("avdet_step_sizes", default=None)


def step_sizes(n: int) -> tuple[int, ...]:
    """Every rank's batch size this step (``n`` here; 0 = this rank's stream has ended): one all_gather of one int.
    One process: ``(n,)``."""
    if get_world_size() == 1:
        return (n,)
    parts = [torch.zeros(1, dtype=torch.int64) for _ in range(get_world_size())]
    dist.all_gather(parts, torch.tensor([n], dtype=torch.int64))
    return tuple(int(p) for p in parts)


@contextmanager
def known_batch_sizes(sizes: tuple[int, ...]):
    """Within the block, :func:`all_gather_with_grad` of a tensor with this rank's row count takes the ranks' sizes
    from ``sizes`` (:func:`step_sizes`, exchanged once per step) instead of gathering them for every tensor."""
    token = _STEP_SIZES.set(tuple(sizes))
    try:
        yield
    finally:
        _STEP_SIZES.reset(token)


def all_gather_with_grad(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Gather ``t`` (B, ...) from every rank along dim 0 -> (gathered (ΣB_r, ...), offset of this rank's rows).

    Autograd-aware: gradients reaching the gathered tensor from every rank's loss are summed onto the local slice
    (so with DeepSpeed/DDP gradient averaging, a loss that is a mean over the global batch gets the right scale).
    Equal batch sizes are the fast path; unequal sizes are padded to the largest and the padding is dropped. The
    sizes come from :func:`known_batch_sizes` when the step exchanged them, else from one extra all_gather. One
    process: returns ``(t, 0)``.
    """
    world = get_world_size()
    if world == 1:
        return t, 0
    rank = dist.get_rank()
    known = _STEP_SIZES.get()
    if known is not None and len(known) == world and known[rank] == t.shape[0]:
        counts = list(known)
    else:
        sizes = torch.tensor([t.shape[0]], dtype=torch.int64)
        all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
        dist.all_gather(all_sizes, sizes)
        counts = [int(s) for s in all_sizes]
    top = max(counts)
    padded = t
    if t.shape[0] < top:
        pad = t.new_zeros((top - t.shape[0],) + tuple(t.shape[1:]))
        padded = torch.cat([t, pad], dim=0)
    gathered = _AllGatherGrad.apply(padded)
    if min(counts) != top:
        gathered = torch.cat([gathered[r * top:r * top + c] for r, c in enumerate(counts)], dim=0)
    return gathered, sum(counts[:rank])


class _AllReduceSumGrad(torch.autograd.Function):
    """all_reduce(SUM) whose backward all-reduces the gradient: every rank's loss that reads the sum sends its
    gradient to every rank's input (the adjoint of a sum over ranks)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def column_logsumexp(s: torch.Tensor) -> torch.Tensor:
    """log Σ exp(s) over the rows of every rank's ``s`` (B_r, M), per column -> (M,), with gradient to every rank's
    rows: ``torch.logsumexp(s, 0)`` of the rows stacked over ranks, without moving them. Two all-reduces of M values
    (the max, then the shifted sums); −inf entries (masked pairs) add nothing. One process: ``logsumexp(s, 0)``."""
    if get_world_size() == 1:
        return torch.logsumexp(s, dim=0)
    top = s.detach().amax(dim=0)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return top + torch.log(_AllReduceSumGrad.apply(torch.exp(s - top).sum(dim=0)))


def gather_to_main(t: torch.Tensor) -> list[torch.Tensor] | None:
    """Every rank's ``t`` (n_r, ...) (sizes may differ) on rank 0, in rank order; ``None`` on the other ranks.
    Tensors only (no pickling); one process: ``[t]``."""
    world = get_world_size()
    if world == 1:
        return [t]
    t = t.contiguous()
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.int64))
    counts = [int(s) for s in sizes]
    top = max(counts)
    padded = torch.cat([t, t.new_zeros((top - t.shape[0],) + tuple(t.shape[1:]))]) if t.shape[0] < top else t
    parts = [torch.empty_like(padded) for _ in range(world)] if dist.get_rank() == 0 else None
    dist.gather(padded, parts, dst=0)
    return [p[:c] for p, c in zip(parts, counts)] if parts is not None else None


def broadcast_from_main(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (the others pass a tensor of the same shape and dtype); in place, returned."""
    if get_world_size() > 1:
        dist.broadcast(t, src=0)
    return t


_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> int:
    """All-reduce-average ``module``'s floating-point buffers (BatchNorm running mean / var) over the ranks, in
    place; returns how many were averaged. Each rank's BatchNorm otherwise tracks its own batches, so the ranks
    would score with different models and a checkpoint (rank 0's buffers) would resume other ranks on statistics
    that are not theirs. No-op in one process."""
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    if get_world_size() == 1 or not bufs:
        return 0
    flat = torch.cat([b.reshape(-1) for b in bufs])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= get_world_size()
    pos = 0
    for b in bufs:
        b.copy_(flat[pos:pos + b.numel()].view_as(b))
        pos += b.numel()
    return len(bufs)


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``t`` (sizes may differ) concatenated in rank order, without gradient: the one way to
    all-gather indices, labels and (index, label) pairs. One process: ``t``."""
    with torch.no_grad():
        return all_gather_with_grad(t)[0]


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable, small), in rank order; ``[obj]`` without a process group."""
    if get_world_size() == 1:
        return [obj]
    out: list = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def make_reduce(group=None) -> Reduce:
    """``reduce(t, op)`` for ``avdet.sinkhorn``: all-reduce a small tensor (op "sum", "max" or "min") over ``group``
    (default: the world) and return the result. Identity when no process group exists (or world size 1).
    The tensor is reduced on a copy, so the caller's tensor is untouched."""
    def reduce(t: torch.Tensor, op: str) -> torch.Tensor:
        if op not in _OPS:
            raise ValueError(f"reduce: op must be 'sum', 'max' or 'min', got {op!r}")
        if not is_dist() or dist.get_world_size(group) == 1:
            return t
        out = t.detach().clone().contiguous()
        dist.all_reduce(out, op=_OPS[op], group=group)
        return out
    return reduce


# ---------------------------------------------------------------------------------------------------------------
# process groups on one machine


GPU_BACKEND = "cpu:gloo,cuda:nccl"


def backend_for(use_gpu: bool) -> str:
    """The process group's backend: gloo on CPU workers; on GPU workers NCCL for CUDA tensors and gloo for the CPU
    tensors the layer also exchanges (an NCCL-only group fails on those)."""
    return GPU_BACKEND if use_gpu else "gloo"


def _pin_gloo_to_loopback(master_addr: str) -> None:
    """Gloo binds the interface its hostname resolves to unless told; on one machine keep it on loopback."""
    if master_addr.startswith("127.") and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"


def local_rendezvous() -> str:
    """A fresh ``file://`` init_method for a group whose processes share this machine's /tmp. Unlike a tcp://
    rendezvous (torch's TCPStore listens on ALL interfaces whatever host it is given) it opens no port."""
    fd, path = tempfile.mkstemp(prefix="avdet-pg-", suffix=".store")
    os.close(fd)
    os.unlink(path)                     # FileStore wants a missing or empty file; it deletes it when done
    return f"file://{path}"


def remove_rendezvous(init_method: str) -> None:
    """Delete a ``file://`` rendezvous's store if it is still there (FileStore removes it only when every member
    tore its group down cleanly); other init methods are left alone."""
    if init_method.startswith("file://"):
        Path(init_method[len("file://"):]).unlink(missing_ok=True)


def init_group(rank: int, world_size: int, init_method: str, backend: str = "gloo",
               timeout_s: float = 300.0) -> None:
    """Join a process group at ``init_method`` (``file://`` from ``local_rendezvous`` on one machine, or
    ``tcp://host:port`` across nodes, rank 0 hosting the store). On one machine gloo is pinned to loopback."""
    if init_method.startswith("file://") or init_method.startswith(f"tcp://{LOOPBACK}"):
        _pin_gloo_to_loopback(LOOPBACK)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def ensure_dist_env() -> bool:
    """Make a plain ``python script.py`` look like a launched world of one for DeepSpeed (which otherwise tries
    MPI discovery and fails on mpi4py): set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1 and a free
    MASTER_PORT where absent. Does nothing inside an existing process group. Returns True if it set anything."""
    if is_dist():
        return False
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": LOOPBACK}
    changed = False
    for key, value in defaults.items():
        if key not in os.environ:
            os.environ[key], changed = value, True
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"], changed = str(free_port()), True
    _pin_gloo_to_loopback(os.environ["MASTER_ADDR"])
    return changed


def _spawned(rank: int, fn: Callable, world_size: int, init_method: str, args: tuple, backend: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))     # share the machine's cores
    if backend != "gloo":
        torch.cuda.set_device(rank)                                          # one GPU per process
    init_group(rank, world_size, init_method, backend=backend)
    try:
        fn(rank, world_size, *args)
        dist.barrier()                      # every rank done with its collectives before any tears the group down
    finally:
        dist.destroy_process_group()


def spawn_loopback(fn: Callable, nprocs: int, *args, backend: str = "gloo") -> None:
    """Run ``fn(rank, world_size, *args)`` in ``nprocs`` fresh processes joined in a loopback group (tests and
    one-machine benchmarks; ``backend`` other than gloo, e.g. :func:`backend_for` (True): process r on GPU r).
    ``fn`` must be importable (module level). Each process gets cpu_count // nprocs torch threads (oversubscribed
    OpenMP threads slow small ops by 100x). Raises if any fails."""
    import torch.multiprocessing as mp
    init_method = local_rendezvous()
    try:
        mp.spawn(_spawned, args=(fn, nprocs, init_method, args, backend), nprocs=nprocs, join=True)
    finally:
        remove_rendezvous(init_method)      # left behind when a process died before tearing the group down


# ---------------------------------------------------------------------------------------------------------------
# logging


class RankFilter(logging.Filter):
    """Drop records below ``min_level`` on ranks other than 0; prefix every record with ``[rank r]``."""

    def __init__(self, rank: int, min_level: int = logging.WARNING):
        super().__init__()
        self.rank, self.min_level = rank, min_level

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return self.rank == 0 or record.levelno >= self.min_level


def setup_logging(rank: int | None = None, level: int = logging.INFO) -> logging.Handler:
    """Root logger at ``level`` with one stream handler filtered by rank (default: this process's rank).
    Idempotent: replaces the handler it installed before."""
    rank = get_rank() if rank is None else rank
    root = logging.getLogger()
    for h in list(root.handlers):
        # ours from an earlier call, and plain console handlers (a Ray worker installs one): each record once
        if getattr(h, "_avdet_rank_handler", False) or type(h) is logging.StreamHandler:
            root.removeHandler(h)
    handler = logging.StreamHandler()
    handler._avdet_rank_handler = True
    handler.addFilter(RankFilter(rank))
    handler.setFormatter(logging.Formatter("%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    return handler
