"""Ray Train's torch process group, kept on loopback when the whole worker group is on one machine.

Ray Train's ``TorchConfig`` (``init_method="env"`` or ``"tcp"``) makes rank 0 start torch's c10d ``TCPStore`` for the
rendezvous. The store's server binds the wildcard address (``*:<port>``, i.e. every interface) whatever
``MASTER_ADDR`` says — measured with ``ss -ltnp`` on torch 2.14.1 / Ray 2.60: the only listener of a local Ray
Train run that was not on 127.0.0.1. torch has no bind-address option or environment variable for that server, but
``TCPStore(master_listen_fd=...)`` accepts a socket the caller already bound and listens on (libuv backend
included). :class:`LoopbackTorchConfig` uses that: when rank 0's address is loopback, rank 0 binds
``127.0.0.1:<port>`` itself, hands the socket to the store, and every rank joins with
``init_process_group(store=...)``. Gloo's own pair sockets already follow the loopback address. With a non-loopback
address (a real multi-node cluster) Ray Train's own setup runs unchanged.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

from distributed.cluster.dist import backend_for

log = logging.getLogger(__name__)

# rank 0's listening socket must outlive the store that serves on it (the store does not own the fd)
_LISTENERS: list[socket.socket] = []


def _is_loopback(host: str) -> bool:
    from distributed.cluster.net import is_loopback
    try:
        return is_loopback(host)
    except ValueError:                       # a host name, not an IP: leave it to Ray Train
        return False


def _setup_loopback_group(backend: str, world_rank: int, world_size: int, addr: str, port: int,
                          timeout_s: int) -> None:
    """Inside each Ray Train worker: the TCPStore (rank 0 serves on a socket bound to ``addr``) + process group."""
    import torch.distributed as tdist

    os.environ.update({"MASTER_ADDR": addr, "MASTER_PORT": str(port)})     # DeepSpeed and others read them
    timeout = timedelta(seconds=timeout_s)
    rank = world_rank
    if rank == 0:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(max(128, world_size))
        _LISTENERS.append(sock)
        store = tdist.TCPStore(addr, port, world_size, is_master=True, timeout=timeout, wait_for_workers=False,
                               master_listen_fd=sock.fileno())
    else:
        store = tdist.TCPStore(addr, port, world_size, is_master=False, timeout=timeout)
    tdist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    log.debug("process group on %s:%d (loopback store), rank %d of %d", addr, port, rank, world_size)


class _LoopbackTorchBackend(_TorchBackend):
    """``_TorchBackend`` whose ``on_start`` keeps the rendezvous store on loopback (module docstring)."""

    def on_start(self, worker_group, backend_config: "LoopbackTorchConfig"):
        import ray
        from ray.train._internal.utils import get_address_and_port
        from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
        from ray.train.torch.config import _set_torch_distributed_env_vars

        addr, port = worker_group.execute_single(0, get_address_and_port)
        if not _is_loopback(addr):
            log.info("torch rendezvous on %s (not loopback): Ray Train's default setup", addr)
            return super().on_start(worker_group, backend_config)
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or backend_for(gpus > 0)
        if not isinstance(worker_group, V1WorkerGroup):              # as Ray Train's own on_start
            worker_group.execute(_set_torch_distributed_env_vars)
        n = len(worker_group)
        ray.get([worker_group.execute_single_async(i, _setup_loopback_group, backend=backend, world_rank=i,
                                                   world_size=n, addr=addr, port=port,
                                                   timeout_s=backend_config.timeout_s) for i in range(n)])


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` for ``TorchTrainer(torch_config=...)``: same fields, loopback-only store on one machine."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend


def torch_config(use_gpu: bool) -> LoopbackTorchConfig:
    """The jobs' ``torch_config``: the loopback store on one machine, and :func:`distributed.cluster.dist.backend_for`
    (gloo, or gloo + NCCL on GPU workers) on one machine or many."""
    return LoopbackTorchConfig(backend=backend_for(use_gpu))
