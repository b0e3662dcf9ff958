"""distributed.cluster.dist: single-process fallbacks, and the collectives in a real 2-process gloo group on loopback."""
import logging
from pathlib import Path

import pytest
import torch

import distributed
from distributed.cluster import dist as D
def test_import_distributed_is_ours():
    """A top-level ``distributed`` package would clash with Dask's; it must resolve to this repo's."""
    assert Path(distributed.__file__).resolve().parent == Path(D.__file__).resolve().parents[1]
    assert (Path(distributed.__file__).resolve().parent.parent / "avdet").is_dir()


def test_single_process_fallbacks():
    assert not D.is_dist()
    assert D.get_rank() == 0 and D.get_world_size() == 1 and D.is_main_process()
    D.barrier()
    x = torch.randn(3, 4, requires_grad=True)
    gathered, offset = D.all_gather_with_grad(x)
    assert gathered is x and offset == 0
    reduce = D.make_reduce()
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(reduce(t, "sum"), t) and torch.equal(reduce(t, "max"), t)
    with pytest.raises(ValueError, match="op must be"):
        reduce(t, "mean")


def test_rank_filter_only_rank0_logs_info():
    rec_info = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    rec_warn = logging.LogRecord("x", logging.WARNING, __file__, 1, "careful", None, None)
    assert D.RankFilter(0).filter(rec_info)
    assert not D.RankFilter(1).filter(rec_info)
    assert D.RankFilter(1).filter(rec_warn)
    root = logging.getLogger()
    before = list(root.handlers)
    h1 = D.setup_logging(rank=1)
    h2 = D.setup_logging(rank=0)            # idempotent: replaces its own handler
    assert h1 not in root.handlers and h2 in root.handlers
    root.removeHandler(h2)
    assert root.handlers == before


def test_free_port_is_loopback_bindable():
    import socket
    port = D.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def _collectives_worker(rank: int, world: int, out_dir: str) -> None:
    """Per rank: gather with grad (equal and unequal batches) and make_reduce; saves what it saw."""
    d = 4
    w = torch.arange(world * 3 * d, dtype=torch.float64).reshape(world * 3, d)
    x = torch.full((3, d), float(rank + 1), dtype=torch.float64, requires_grad=True)
    gathered, offset = D.all_gather_with_grad(x)
    (gathered * w).sum().backward()
    rows = 3 - rank                                              # unequal: rank 0 has 3 rows, rank 1 has 2
    y = torch.full((rows, d), float(rank + 1), dtype=torch.float64, requires_grad=True)
    gy, off_y = D.all_gather_with_grad(y)
    (gy * w[:gy.shape[0]]).sum().backward()
    reduce = D.make_reduce()
    t = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(float(rank))                          # rank 0: 0, rank 1: 1 -> 0.5 on both
    bn.running_var.fill_(2.0 + 2 * rank)                        # 2 and 4 -> 3
    averaged = D.average_buffers(bn)
    torch.save({"bn_mean": bn.running_mean, "bn_var": bn.running_var, "bn_n": averaged,
                "bn_tracked": bn.num_batches_tracked, "gathered": gathered.detach(), "offset": offset, "grad": x.grad, "gy": gy.detach(),
                "off_y": off_y, "grad_y": y.grad, "sum": reduce(t, "sum"), "max": reduce(t, "max"), "t": t,
                "rank": D.get_rank(), "world": D.get_world_size()}, f"{out_dir}/rank{rank}.pt")


def test_collectives_two_process_gloo(tmp_path):
    D.spawn_loopback(_collectives_worker, 2, str(tmp_path))
    world, d = 2, 4
    w = torch.arange(world * 3 * d, dtype=torch.float64).reshape(world * 3, d)
    for rank in range(world):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert r["rank"] == rank and r["world"] == world
        expected = torch.cat([torch.full((3, d), 1.0), torch.full((3, d), 2.0)]).double()
        assert torch.equal(r["gathered"], expected) and r["offset"] == 3 * rank
        # every rank's loss Σ gathered·w contributes w[slice] to this rank's rows: grad = world · w[slice]
        assert torch.equal(r["grad"], world * w[3 * rank:3 * rank + 3])
        assert r["gy"].shape == (5, d) and r["off_y"] == (0 if rank == 0 else 3)
        sl = slice(r["off_y"], r["off_y"] + 3 - rank)
        assert torch.equal(r["grad_y"], world * w[:5][sl])
        assert torch.equal(r["sum"], torch.tensor([3.0, 30.0])) and torch.equal(r["max"], torch.tensor([2.0, 20.0]))
        assert torch.equal(r["t"], torch.tensor([rank + 1.0, 10.0 * (rank + 1)]))   # input untouched
        assert r["bn_n"] == 2 and torch.equal(r["bn_mean"], torch.full((2,), 0.5))
        assert torch.equal(r["bn_var"], torch.full((2,), 3.0)) and int(r["bn_tracked"]) == 0   # int buffer kept


def _exit_without_teardown(rank: int, world: int) -> None:
    """Both ranks leave the process without destroying their group (as a killed worker does)."""
    import os
    D.barrier()
    os._exit(0)


def test_spawned_group_leaves_no_rendezvous_file(tmp_path, monkeypatch):
    """spawn_loopback deletes its file:// store even when no rank tore the group down (which would leave it)."""
    store = tmp_path / "pg.store"
    monkeypatch.setattr(D, "local_rendezvous", lambda: f"file://{store}")
    D.spawn_loopback(_exit_without_teardown, 2)
    assert not store.exists()
    store.write_text("x")
    D.remove_rendezvous("tcp://127.0.0.1:1")        # not a file store: nothing touched
    assert store.exists()
    D.remove_rendezvous(f"file://{store}")
    D.remove_rendezvous(f"file://{store}")          # already gone: fine
    assert not store.exists()


def test_gpu_workers_get_gloo_beside_nccl():
    """GPU workers' groups carry both backends: the layer's CPU tensors (step flags, index and label gathers) go
    to gloo, CUDA tensors to NCCL; an NCCL-only group fails on the CPU ones. CPU workers: gloo."""
    from distributed.cluster.dist import backend_for
    from distributed.cluster.torch_loopback import torch_config
    assert backend_for(False) == "gloo" and backend_for(True) == "cpu:gloo,cuda:nccl"
    assert torch_config(True).backend == "cpu:gloo,cuda:nccl" and torch_config(False).backend == "gloo"


def _sizes_job(rank, world, out_dir):
    import torch.distributed as tdist
    x = torch.arange(3 + rank, dtype=torch.float32)[:, None] * (rank + 1)        # unequal batches: 3 and 4 rows
    sizes = D.step_sizes(len(x))
    calls = []
    orig = tdist.all_gather

    def counting(*a, **k):
        calls.append(1)
        return orig(*a, **k)
    tdist.all_gather = counting
    try:
        plain, _ = D.all_gather_with_grad(x)
        n_plain = len(calls)
        with D.known_batch_sizes(sizes):
            known, offset = D.all_gather_with_grad(x)
        n_known = len(calls) - n_plain
    finally:
        tdist.all_gather = orig
    torch.save({"sizes": sizes, "equal": torch.equal(plain, known), "offset": offset, "n_plain": n_plain,
                "n_known": n_known, "ended": D.step_sizes(0 if rank == 1 else 5)}, f"{out_dir}/rank{rank}.pt")


def test_batch_sizes_exchanged_once_per_step(tmp_path):
    """step_sizes gives every rank's batch size (0: a stream ended); inside known_batch_sizes a gather of unequal
    batches uses them — one all_gather instead of two, the same result."""
    D.spawn_loopback(_sizes_job, 2, str(tmp_path))
    for rank in (0, 1):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert r["sizes"] == (3, 4) and r["equal"] and r["offset"] == 3 * rank
        assert (r["n_plain"], r["n_known"]) == (2, 1)
        assert r["ended"] == (5, 0)
