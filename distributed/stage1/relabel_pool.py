"""The relabel pool ("actors" mode): Sinkhorn-Knopp over row shards in a pool of Ray actors that form their own gloo
group, so the relabel scales independently of training (METHOD.md §6).

A dead actor is restarted by Ray (``max_restarts``); its state is lost, so the service re-forms the group, re-sends
every shard from the object store and re-runs. Sinkhorn is deterministic for a fixed row partition, so a re-run gives
identical labels. :mod:`distributed.stage1.relabel` uses it as the "actors" strategy.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Sequence

import numpy as np
import torch

from avdet.config import SinkhornConfig
from avdet.sinkhorn import solve, target_marginal
from distributed.cluster.dist import init_group, local_rendezvous, make_reduce
from distributed.cluster.net import free_port
from distributed.stage1.config import RelabelConfig
from distributed.stage1.labels import LabelTable, round_stats

log = logging.getLogger(__name__)


class SinkhornActor:
    """One member of the relabel pool: joins the pool's gloo group, holds a row shard, runs Sinkhorn on it.
    Used as a Ray actor (``ray.remote(SinkhornActor)``); plain class so it can be tested in one process."""

    def __init__(self):
        self.index: np.ndarray | None = None
        self.log_p: torch.Tensor | None = None

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()

    def endpoint(self) -> str:
        """The pool's rendezvous when this actor is rank 0: a fresh file:// store when the Ray node is on
        loopback (a one-machine cluster: no port opened), else tcp://<this node's IP>:<free port>."""
        import ray
        ip = ray.util.get_node_ip_address()
        return local_rendezvous() if ip.startswith("127.") else f"tcp://{ip}:{free_port(ip)}"

    def join(self, rank: int, world: int, init_method: str, timeout_s: float) -> int:
        """(Re)join the pool's process group (a broken group from a previous attempt is torn down first)."""
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        init_group(rank, world, init_method, timeout_s=timeout_s)
        return rank

    def load(self, *shards: tuple) -> int:
        """Keep the given (index (n,), log_p (n, K)) shards, concatenated in order. Returns the row count."""
        self.index = np.concatenate([np.asarray(s[0], dtype=np.int64).ravel() for s in shards])
        self.log_p = torch.cat([torch.as_tensor(s[1]) for s in shards], dim=0)
        return int(self.index.size)

    def solve(self, cfg: SinkhornConfig, col_marginal: torch.Tensor) -> dict:
        """Run the distributed solver on the held shard (every pool member at once)."""
        if self.log_p is None or not torch.distributed.is_initialized():
            raise RuntimeError(f"relabel actor pid {os.getpid()}: no shard or no process group "
                               f"(restarted since the last load?)")
        res = solve(self.log_p, cfg, col_marginal, reduce=make_reduce())
        return {"index": self.index, "labels": res.labels.numpy(), "iters": res.iters,
                "col_error": res.col_error, "converged": res.converged}


class RelabelService:
    """A pool of ``num_actors`` Ray actors solving Sinkhorn over row shards (their own gloo group).

    ``relabel(shards)`` = ``load(shards)`` + ``solve()``. Shards (index (n,), log_p (n, K)) are put in the object
    store once and assigned round-robin (actor i gets shards i, i+A, ...); after a failure (an actor died, the
    group broke, a timeout) the service restarts what is dead or stuck, re-forms the group, re-sends every shard and
    re-runs, at most ``cfg.max_restarts`` times. Rendezvous: on a one-machine (loopback) Ray cluster a file://
    store in /tmp and gloo pinned to ``lo``; on several nodes tcp://<actor 0's node IP>:<free port> — then gloo
    also needs ``GLOO_SOCKET_IFNAME`` set to the cluster interface (e.g. via the job's runtime_env).
    Requires ``ray.init`` beforehand; call ``shutdown()`` (or use as a context manager) to free the actors.
    """

    def __init__(self, cfg: RelabelConfig, sk: SinkhornConfig):
        import ray
        cfg.check()
        sk.check()
        self.cfg, self.sk = cfg, sk
        self._remote = ray.remote(SinkhornActor).options(
            num_cpus=cfg.actor_cpus, max_restarts=cfg.max_restarts, scheduling_strategy="SPREAD")
        self.actors = [self._remote.remote() for _ in range(cfg.num_actors)]
        self._refs: list = []
        self._k = 0
        self._ready = False             # every actor alive, in one group, holding its shards
        self.recoveries = 0

    def __enter__(self) -> "RelabelService":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        import ray
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors, self._refs = [], []

    def pids(self) -> list[int]:
        import ray
        return ray.get([a.pid.remote() for a in self.actors], timeout=self.cfg.timeout_s)

    def num_nodes(self) -> int:
        """How many Ray nodes the pool's actors live on."""
        import ray
        return len(set(ray.get([a.node_id.remote() for a in self.actors], timeout=self.cfg.timeout_s)))

    def load(self, shards: Sequence[tuple]) -> None:
        """Put the shards in the object store; ``solve`` sends them to the actors (round-robin)."""
        import ray
        if not shards:
            raise ValueError("RelabelService.load: no shards")
        self._refs = [ray.put((np.asarray(i, dtype=np.int64), torch.as_tensor(p))) for i, p in shards]
        self._k = int(torch.as_tensor(shards[0][1]).shape[1])
        self._ready = False

    def _send(self) -> None:
        import ray
        a = len(self.actors)
        ray.get([actor.load.remote(*self._refs[i::a]) for i, actor in enumerate(self.actors)],
                timeout=self.cfg.timeout_s)

    def _prepare(self) -> None:
        """Make every actor usable (wait for restarts, replace the dead for good), form a fresh gloo group
        (new port) and send every shard (actor state does not survive a restart)."""
        import ray
        for i, actor in enumerate(self.actors):
            if not self._alive(actor):
                log.warning("relabel actor %d is dead for good; starting a replacement", i)
                ray.kill(actor, no_restart=True)
                self.actors[i] = self._remote.remote()
        init_method = ray.get(self.actors[0].endpoint.remote(), timeout=self.cfg.timeout_s)
        world = len(self.actors)
        ray.get([a.join.remote(r, world, init_method, self.cfg.timeout_s) for r, a in enumerate(self.actors)],
                timeout=self.cfg.timeout_s + 30)
        self._send()
        self._ready = True

    def relabel(self, shards: Sequence[tuple], version: int = 0, prev: LabelTable | None = None) -> LabelTable:
        """Labels for all rows of ``shards`` as LabelTable ``version`` (stats logged against ``prev``)."""
        self.load(shards)
        return self.solve(version, prev)

    def solve(self, version: int = 0, prev: LabelTable | None = None) -> LabelTable:
        """Run Sinkhorn on the loaded shards; recover from dead actors and re-run (see class docstring)."""
        import ray
        if not self._refs:
            raise RuntimeError("RelabelService.solve: call load(shards) first")
        k = self._k
        c = target_marginal(self.sk.marginal, k, self.sk.gaussian_std, None if prev is None else prev.cluster_sizes())
        last: Exception | None = None
        for attempt in range(self.cfg.max_restarts + 1):
            try:
                if not self._ready:
                    self._prepare()
                parts = self._run(c)
                table = LabelTable.from_pairs(np.concatenate([p["index"] for p in parts]),
                                              np.concatenate([p["labels"] for p in parts]), k, version)
                round_stats(table, prev)
                return table
            except (ray.exceptions.RayError, RuntimeError, TimeoutError) as e:
                last = e
                log.warning("relabel attempt %d failed (%s: %s); restarting the pool's dead or stuck actors",
                            attempt + 1, type(e).__name__, str(e).splitlines()[0][:200])
                self._ready = False
                self.recoveries += 1
        raise RuntimeError(f"relabel failed after {self.cfg.max_restarts + 1} attempts "
                           f"(RelabelConfig.max_restarts={self.cfg.max_restarts}): {last}") from last

    def _run(self, col_marginal: torch.Tensor) -> list[dict]:
        """Submit solve to every actor; on the first failure give the others a moment to fail too, then kill
        (Ray restarts them) the ones still stuck in a collective and re-raise."""
        import ray
        refs = [a.solve.remote(self.sk, col_marginal) for a in self.actors]
        pending, deadline = list(refs), time.monotonic() + self.cfg.timeout_s
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                self._kill_stuck(refs, pending)
                raise TimeoutError(f"relabel: {len(pending)} actors still running after {self.cfg.timeout_s} s")
            try:
                ray.get(done[0])
            except ray.exceptions.RayError:
                _, stuck = ray.wait(pending, num_returns=len(pending), timeout=5.0)
                self._kill_stuck(refs, stuck)
                raise
        return ray.get(refs)

    def _kill_stuck(self, refs: list, stuck: list) -> None:
        import ray
        for ref, actor in zip(refs, self.actors):
            if ref in stuck:
                ray.kill(actor, no_restart=False)

    def _alive(self, actor, tries: int = 10) -> bool:
        """Ping until the actor answers (it may be restarting); False if it never does (dead for good)."""
        import ray
        for _ in range(tries):
            try:
                ray.get(actor.pid.remote(), timeout=self.cfg.timeout_s)
                return True
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                time.sleep(0.5)
        return False
