"""The relabel service: Sinkhorn-Knopp over the whole dataset between epochs (METHOD.md §2, §6).

Each process holds a row shard of the N×K log-probability matrix; every Sinkhorn iteration all-reduces only K-vectors
(``avdet.sinkhorn`` with ``reduce=make_reduce()``); labels come back as a ``LabelTable`` by sample index.

* "workers" mode — ``relabel_in_workers``: inside the training workers' existing process group (Ray Train).
* "actors" mode — ``RelabelService``: a pool of Ray actors (SPREAD over nodes) forming their own gloo group, so the
  relabel scales independently of training. A dead actor is restarted by Ray (``max_restarts``); its state is lost,
  so the service re-forms the group, re-sends every shard from the object store and re-runs. Sinkhorn is
  deterministic for a fixed row partition, so a re-run gives identical labels.
* FAISS: ``kmeans_warm_start`` (initial labels) and ``relabel_sparse`` (top-k candidate clusters, sparse Sinkhorn).
* ``relabel_round``: one between-epoch round of stage 1, as ``RelabelConfig`` says (``round_method``): FAISS
  k-means on the features for the rounds of the first ``kmeans_epochs`` epochs when ``warm_start="kmeans"``; else
  dense Sinkhorn in the workers, sparse Sinkhorn over each row's top-k clusters in the workers (``topk`` > 0), or
  the actor pool (``mode="actors"``).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from avdet.config import SinkhornConfig
from avdet.kmeans import kmeans, log_p_from_similarities, topk_candidates
from avdet.matching import hungarian
from avdet.sinkhorn import (Reduce, SinkhornResult, column_marginal, rank_marginal, sinkhorn_knopp,
                            sparse_sinkhorn_knopp)
from distributed.stage1.config import RelabelConfig
from distributed.cluster.dist import (all_gather_with_grad, broadcast_from_main, free_port, gather_to_main, init_group,
                              is_main_process, local_rendezvous, make_reduce)
from distributed.stage1.labels import LabelTable

log = logging.getLogger(__name__)


def target_marginal(sk: SinkhornConfig, num_clusters: int, prev: LabelTable | None = None) -> torch.Tensor:
    """Column marginal (K,) from the config; a Gaussian marginal is matched to the previous round's cluster sizes
    (largest cluster gets the largest target) when ``prev`` is given."""
    c = column_marginal(num_clusters, sk.marginal, sk.gaussian_std)
    if sk.marginal == "gaussian" and prev is not None:
        c = rank_marginal(c, torch.from_numpy(prev.cluster_sizes()))
    return c


def solve_shard(log_p: torch.Tensor, sk: SinkhornConfig, col_marginal: torch.Tensor,
                reduce: Reduce | None = None) -> SinkhornResult:
    """Dense Sinkhorn-Knopp on this process's rows ``log_p`` (n, K), reducing K-vectors with ``reduce``."""
    return sinkhorn_knopp(torch.as_tensor(log_p), sk.lambda_sk, col_marginal, sk.max_iters, sk.tol,
                          reduce=reduce, dtype=getattr(torch, sk.dtype), domain=sk.domain)


def log_relabel(table: LabelTable, prev: LabelTable | None, result: SinkhornResult | None = None) -> dict:
    """Log and return the round's statistics: cluster sizes, fraction changed and NMI vs the previous table."""
    stats = table.stats(prev)
    if result is not None:
        stats.update(iters=result.iters, col_error=result.col_error, converged=result.converged)
    log.info("relabel v%d: %s", table.version, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                         for k, v in stats.items() if k != "version"))
    return stats


# ---------------------------------------------------------------------------------------------------------------
# "workers" mode


def gather_table(index_local: torch.Tensor, labels_local: torch.Tensor, num_clusters: int,
                 version: int = 0) -> LabelTable:
    """All-gather (index, label) pairs of every rank (padded tensors, no pickling) -> the full table, on every
    rank. One process: the local pairs."""
    pairs = torch.stack([torch.as_tensor(index_local, dtype=torch.int64).cpu(),
                         torch.as_tensor(labels_local, dtype=torch.int64).cpu()], dim=1)
    with torch.no_grad():
        gathered, _ = all_gather_with_grad(pairs)
    return LabelTable.from_pairs(gathered[:, 0], gathered[:, 1], num_clusters, version)


def relabel_in_workers(log_p_local: torch.Tensor, index_local: torch.Tensor, cfg: SinkhornConfig,
                       version: int = 0, prev: LabelTable | None = None) -> tuple[torch.Tensor, LabelTable]:
    """Distributed Sinkhorn inside the current process group (call on every rank, same ``cfg``).

    log_p_local (n, K): this rank's rows; index_local (n,): their global sample indices (ranks disjoint).
    Returns (labels (n,) int64 for the local rows, the full LabelTable ``version`` — identical on every rank).
    """
    k = log_p_local.shape[1]
    result = solve_shard(log_p_local.cpu(), cfg, target_marginal(cfg, k, prev), reduce=make_reduce())
    table = gather_table(index_local, result.labels, k, version)
    log_relabel(table, prev, result)
    return result.labels, table


# ---------------------------------------------------------------------------------------------------------------
# FAISS: warm start and the sparse path


def kmeans_warm_start(features: np.ndarray, index, num_clusters: int, niter: int = 20, seed: int = 0,
                      use_gpu: bool = False, version: int = 0) -> tuple[LabelTable, np.ndarray]:
    """Initial labels from FAISS k-means over the feature bank (N, D). Returns (table, centroids (K, D))."""
    centroids, assign = kmeans(features, num_clusters, niter=niter, seed=seed, use_gpu=use_gpu)
    return LabelTable.from_pairs(index, assign, num_clusters, version), centroids


def relabel_sparse(features: np.ndarray, index, centroids: np.ndarray, topk: int, cfg: SinkhornConfig,
                   temperature: float = 0.1, use_gpu: bool = False, version: int = 0,
                   reduce: Reduce | None = None) -> LabelTable:
    """Sparse Sinkhorn when N×K does not fit: each sample's plan is restricted to its ``topk`` nearest centroids
    (FAISS inner product; L2-normalise features and centroids for cosine), with candidate log-probabilities
    log softmax(sim / temperature). Rows may be sharded over processes (pass ``reduce=make_reduce()``); the
    returned table then holds this process's rows only — use ``gather_table`` for the full one."""
    k = centroids.shape[0]
    cand_idx, sims = topk_candidates(features, centroids, topk, use_gpu=use_gpu)
    cand_log_p = log_p_from_similarities(torch.from_numpy(sims), temperature)
    result = sparse_sinkhorn_knopp(torch.from_numpy(cand_idx), cand_log_p, k, cfg.lambda_sk,
                                   target_marginal(cfg, k), cfg.max_iters, cfg.tol, reduce=reduce,
                                   dtype=getattr(torch, cfg.dtype))
    return LabelTable.from_pairs(index, result.labels, k, version)


# ---------------------------------------------------------------------------------------------------------------
# "actors" mode


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
        res = solve_shard(self.log_p, cfg, col_marginal, reduce=make_reduce())
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
        c = target_marginal(self.sk, k, prev)
        last: Exception | None = None
        for attempt in range(self.cfg.max_restarts + 1):
            try:
                if not self._ready:
                    self._prepare()
                parts = self._run(c)
                table = LabelTable.from_pairs(np.concatenate([p["index"] for p in parts]),
                                              np.concatenate([p["labels"] for p in parts]), k, version)
                log_relabel(table, prev)
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


# ---------------------------------------------------------------------------------------------------------------
# one round of stage 1 (called on every training rank)


@dataclass
class Scores:
    """This rank's rows of the whole-dataset scores for one round; which fields are set depends on the method
    (``round_method``): ``log_p`` (n, K) for dense and actors, ``cand_idx``/``cand_log_p`` (n, topk) for sparse,
    ``features`` (n, D) for k-means. ``true`` (n,) holds evaluation labels (-1 when unknown; never used to label)."""
    index: torch.Tensor
    true: torch.Tensor
    num_clusters: int
    log_p: torch.Tensor | None = None
    cand_idx: torch.Tensor | None = None
    cand_log_p: torch.Tensor | None = None
    features: torch.Tensor | None = None


def round_method(cfg: RelabelConfig, version: int) -> str:
    """How the round that writes label table ``version`` (= the epochs trained so far) is solved: "kmeans" (with
    ``warm_start="kmeans"``, for versions up to ``kmeans_epochs``), "actors", "sparse" (``topk`` > 0) or "dense"."""
    if cfg.warm_start == "kmeans" and version <= cfg.kmeans_epochs:
        return "kmeans"
    if cfg.mode == "actors":
        return "actors"
    return "sparse" if cfg.topk > 0 else "dense"


def relabel_round(scores: Scores, cfg: RelabelConfig, sk: SinkhornConfig, prev: LabelTable, version: int,
                  service: "RelabelService | None" = None, seed: int = 0) -> tuple[LabelTable, dict]:
    """One relabel round over the whole dataset (every rank calls it with its rows). Returns the new table —
    identical on every rank — and the round's statistics (``log_relabel``, plus ``method``).
    ``service`` (rank 0 only) is the actor pool for ``mode="actors"``; ``seed`` (with ``version``) seeds k-means."""
    method = round_method(cfg, version)
    k, result = scores.num_clusters, None
    if method == "kmeans":
        table = _kmeans_round(scores, cfg, prev, version, seed)
    elif method == "actors":
        table = _actors_round(scores, service, prev, version)
    elif method == "sparse":
        result = sparse_sinkhorn_knopp(scores.cand_idx, scores.cand_log_p, k, sk.lambda_sk,
                                       target_marginal(sk, k, prev), sk.max_iters, sk.tol, reduce=make_reduce(),
                                       dtype=getattr(torch, sk.dtype))
        table = gather_table(scores.index, result.labels, k, version)
    else:
        result = solve_shard(scores.log_p, sk, target_marginal(sk, k, prev), reduce=make_reduce())
        table = gather_table(scores.index, result.labels, k, version)
    stats = log_relabel(table, prev, result)
    stats["method"] = method
    if method == "actors" and service is not None:
        stats["actor_nodes"] = service.num_nodes()
    return table, stats


def _all_index(index: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return all_gather_with_grad(torch.as_tensor(index, dtype=torch.int64))[0]


def _kmeans_round(scores: Scores, cfg: RelabelConfig, prev: LabelTable, version: int, seed: int = 0) -> LabelTable:
    """FAISS k-means (best of ``kmeans_restarts``) over every rank's features, on rank 0 (GPU index when asked and
    present); the clusters are renamed to agree best with ``prev``, and the labels broadcast."""
    index = _all_index(scores.index)
    feats = gather_to_main(scores.features.float())
    labels = torch.zeros(index.shape[0], dtype=torch.int64)
    if feats is not None:
        _, assign = kmeans(torch.cat(feats).numpy(), scores.num_clusters, niter=cfg.kmeans_iters,
                           seed=(seed * 1009 + version) % 2 ** 31, use_gpu=cfg.use_gpu_faiss, nredo=cfg.kmeans_restarts)
        labels = torch.from_numpy(align_to(np.asarray(assign, dtype=np.int64), prev.lookup(index).numpy(),
                                           scores.num_clusters))
    return LabelTable.from_pairs(index, broadcast_from_main(labels), scores.num_clusters, version)


def align_to(labels: np.ndarray, prev: np.ndarray, num_clusters: int) -> np.ndarray:
    """``labels`` with cluster ids renamed (a permutation) to agree most with ``prev`` (Hungarian on the K×K overlap),
    so the classifiers' targets keep their meaning across k-means rounds (k-means names clusters arbitrarily)."""
    rename = hungarian(labels, prev, num_clusters, num_clusters)
    return rename[labels]


def _actors_round(scores: Scores, service: "RelabelService | None", prev: LabelTable,
                  version: int) -> LabelTable:
    """Rank 0 hands every rank's rows (one shard per rank) to the actor pool; labels broadcast back."""
    index = _all_index(scores.index)
    idx_parts, log_p_parts = gather_to_main(scores.index), gather_to_main(scores.log_p.float())
    labels = torch.zeros(index.shape[0], dtype=torch.int64)
    if is_main_process():
        if service is None:
            raise RuntimeError("relabel mode 'actors': rank 0 has no RelabelService")
        table = service.relabel(list(zip(idx_parts, log_p_parts)), version, prev)
        labels = table.lookup(index)
    return LabelTable.from_pairs(index, broadcast_from_main(labels), scores.num_clusters, version)
