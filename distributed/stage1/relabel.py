"""One relabel round of stage 1: the whole dataset's scores become the next label table (METHOD.md §2, §6).

A round is a **strategy** from :data:`STRATEGIES`, chosen once per round by :func:`choose` from ``RelabelConfig``:

====================  ================================================  ==============================================
strategy              what each worker scores per sample (``score``)    how the rows become a table (``solve``)
====================  ================================================  ==============================================
``kmeans``            the pooled trunk features (``kmeans_features``)   FAISS k-means on rank 0 (``kmeans_solver``
                                                                        "rank0") or Lloyd steps across the ranks
                                                                        ("sharded": only K×D sums reduced), renamed to
                                                                        agree with the previous table
``dense``             the combined log-probabilities (K,)               Sinkhorn in the workers' process group: every
                                                                        iteration all-reduces only K-vectors
``sparse``            their top-``topk`` clusters and values            sparse Sinkhorn over those candidates, same
``actors``            the combined log-probabilities (K,)               the relabel pool (:mod:`.relabel_pool`): Ray
                                                                        actors with their own gloo group
====================  ================================================  ==============================================

``kmeans`` serves the rounds of the first ``kmeans_epochs`` epochs when ``warm_start="kmeans"``; then ``actors``
(``mode="actors"``), ``sparse`` (``topk`` > 0) or ``dense``. Every rank calls :func:`relabel_round` with its rows and
gets the same table back. Adding a strategy is one entry in :data:`STRATEGIES` and one line in :func:`choose`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import time

import numpy as np
import torch

from avdet.config import SinkhornConfig
from avdet.kmeans import kmeans, sharded_kmeans
from avdet.matching import align_overlap, align_to, confusion
from avdet.metrics.clusters import cluster_metrics
from avdet.model import combined_log_p, pooled_features, pooled_width
from avdet.sinkhorn import SinkhornResult, solve, sparse_sinkhorn_knopp, target_marginal
from distributed.cluster.dist import all_gather_rows, broadcast_from_main, gather_to_main, is_main_process, make_reduce
from distributed.stage1.config import RelabelConfig, Stage1Config
from distributed.stage1.labels import LabelTable, round_stats
from distributed.stage1.relabel_pool import RelabelService
from data.stream import to_device


@dataclass
class Scores:
    """This rank's rows of the whole-dataset scores for one round: sample ``index`` (n,), evaluation labels ``true``
    (n,; -1 when unknown; never used to label) and the strategy's ``rows`` (name -> (n, ·) tensor)."""
    index: torch.Tensor
    true: torch.Tensor
    num_clusters: int
    rows: dict[str, torch.Tensor]


@dataclass
class Round:
    """What a strategy's ``solve`` needs besides the scores. ``service`` is the relabel pool (rank 0, ``actors``);
    ``seed`` (with ``version``) seeds k-means."""
    cfg: RelabelConfig
    sk: SinkhornConfig
    prev: LabelTable
    version: int
    seed: int = 0
    service: RelabelService | None = None

    def marginal(self, k: int) -> torch.Tensor:
        return target_marginal(self.sk.marginal, k, self.sk.gaussian_std, self.prev.cluster_sizes())


Solved = tuple[LabelTable, "SinkhornResult | None"]


@dataclass(frozen=True)
class Strategy:
    """``score(model output of a batch, cfg)`` -> this rank's rows of the batch; ``widths(cfg, K, feature width)``
    -> name -> (width, dtype) of those rows (a rank without rows still joins the round with (0, width) tensors);
    ``solve(scores, round)`` -> (the table, identical on every rank; the Sinkhorn result when there is one)."""
    name: str
    score: Callable[[dict[str, torch.Tensor], RelabelConfig], dict[str, torch.Tensor]]
    widths: Callable[[RelabelConfig, int, int], dict[str, tuple[int, torch.dtype]]]
    solve: Callable[[Scores, Round], Solved]


def in_table_order(order: np.ndarray, index: torch.Tensor, values: torch.Tensor) -> np.ndarray | None:
    """Every rank's ``values`` (n,) (integers ≥ −1) of its samples ``index`` (n,), as one (N,) array in the order of
    ``order`` (N,) — the previous table's sorted indices, the same on every rank — on every rank: one int32
    all-reduce of N entries, no (index, value) pairs gathered or sorted. ``None`` (on every rank) when some rank
    holds a sample ``order`` lacks; raises when a sample is held by no rank or by two."""
    reduce = make_reduce()
    idx = torch.as_tensor(index, dtype=torch.int64).cpu().numpy()
    pos = np.searchsorted(order, idx)
    known = bool(np.all(pos < len(order))) and bool(np.all(order[np.minimum(pos, len(order) - 1)] == idx))
    if int(reduce(torch.tensor([int(known)], dtype=torch.int32), "min")[0]) == 0:
        return None
    buf = torch.zeros(len(order), dtype=torch.int32)
    buf[torch.from_numpy(pos)] = torch.as_tensor(values).cpu().to(torch.int32) + 2      # 0 = nobody's sample
    total = int(reduce(torch.tensor([len(idx)], dtype=torch.int64), "sum")[0])
    full = reduce(buf, "sum").numpy()
    if total != len(order) or int(full.min(initial=1)) < 1:
        raise ValueError(f"relabel: the ranks hold {total} samples for a table of {len(order)} "
                         f"({int((full == 0).sum())} held by no rank): each sample must be scored exactly once")
    return full.astype(np.int64) - 2


def _table(index: torch.Tensor, labels: torch.Tensor, k: int, version: int, prev: LabelTable,
           centroids: np.ndarray | None = None) -> LabelTable:
    """Every rank's labels of its samples -> the full table, on every rank: in the previous table's order
    (:func:`in_table_order`), or from gathered (index, label) pairs when the samples changed."""
    full = in_table_order(prev.indices, index, labels)
    if full is not None:
        return LabelTable(prev.indices.copy(), full, k, version, centroids)
    pairs = torch.stack([torch.as_tensor(index, dtype=torch.int64).cpu(),
                         torch.as_tensor(labels, dtype=torch.int64).cpu()], dim=1)
    gathered = all_gather_rows(pairs)
    return LabelTable.from_pairs(gathered[:, 0], gathered[:, 1], k, version, centroids)


def _solve_dense(s: Scores, r: Round) -> Solved:
    result = solve(s.rows["log_p"], r.sk, r.marginal(s.num_clusters), reduce=make_reduce())   # on its device
    return _table(s.index, result.labels, s.num_clusters, r.version, r.prev), result


def _solve_sparse(s: Scores, r: Round) -> Solved:
    result = sparse_sinkhorn_knopp(s.rows["cand_idx"], s.rows["cand_log_p"], s.num_clusters, r.sk.lambda_sk,
                                   r.marginal(s.num_clusters), r.sk.max_iters, r.sk.tol, reduce=make_reduce(),
                                   dtype=getattr(torch, r.sk.dtype), domain=r.sk.domain)
    return _table(s.index, result.labels, s.num_clusters, r.version, r.prev), result


def _solve_kmeans(s: Scores, r: Round) -> Solved:
    return (_kmeans_sharded if r.cfg.kmeans_solver == "sharded" else _kmeans_rank0)(s, r)


def _kmeans_sharded(s: Scores, r: Round) -> Solved:
    """:func:`avdet.kmeans.sharded_kmeans` over the ranks' own rows (nothing N×D on one rank); the renaming that
    agrees best with the previous table comes from the all-reduced K×K overlap, the same on every rank."""
    k, reduce = s.num_clusters, make_reduce()
    centroids, assign, _ = sharded_kmeans(s.rows["features"].float().cpu().numpy(), s.index.cpu().numpy(), k,
                                          niter=r.cfg.kmeans_iters, seed=(r.seed * 1009 + r.version) % 2 ** 31,
                                          nredo=r.cfg.kmeans_restarts, reduce=reduce, gather=all_gather_rows,
                                          max_points_per_centroid=r.cfg.kmeans_max_points_per_centroid,
                                          use_gpu=r.cfg.use_gpu_faiss)
    overlap = reduce(torch.from_numpy(confusion(assign, r.prev.lookup(s.index).numpy(), k, k)), "sum").numpy()
    rename = align_overlap(overlap)
    renamed = np.empty_like(centroids)
    renamed[rename] = centroids
    return _table(s.index, torch.from_numpy(rename[assign]), k, r.version, r.prev, renamed), None


def _kmeans_rank0(s: Scores, r: Round) -> Solved:
    """FAISS k-means (best of ``kmeans_restarts``) over every rank's features, on rank 0 (GPU index when asked and
    present), in sample-index order (k-means depends on the order of its points: so the round does not depend on
    how the samples are split over the ranks); the clusters are renamed to agree best with the previous table, and
    the labels and the (renamed) centroids broadcast."""
    index = all_gather_rows(torch.as_tensor(s.index, dtype=torch.int64))
    feats = gather_to_main(s.rows["features"].float())
    labels = torch.zeros(index.shape[0], dtype=torch.int64)
    centroids = torch.zeros(s.num_clusters, s.rows["features"].shape[1])
    if feats is not None:
        order = np.argsort(index.numpy(), kind="stable")
        found, assign = kmeans(torch.cat(feats).numpy()[order], s.num_clusters, niter=r.cfg.kmeans_iters,
                               seed=(r.seed * 1009 + r.version) % 2 ** 31, use_gpu=r.cfg.use_gpu_faiss,
                               nredo=r.cfg.kmeans_restarts)
        unsorted = np.empty(len(order), dtype=np.int64)
        unsorted[order] = np.asarray(assign, dtype=np.int64)
        rename = align_to(unsorted, r.prev.lookup(index).numpy(), s.num_clusters)
        labels = torch.from_numpy(rename[unsorted])
        centroids[torch.from_numpy(rename)] = torch.from_numpy(found)
    return LabelTable.from_pairs(index, broadcast_from_main(labels), s.num_clusters, r.version,
                                 broadcast_from_main(centroids).numpy()), None


def _solve_actors(s: Scores, r: Round) -> Solved:
    """Rank 0 hands every rank's rows (one shard per rank) to the relabel pool; labels broadcast back."""
    index = all_gather_rows(torch.as_tensor(s.index, dtype=torch.int64))
    idx_parts, log_p_parts = gather_to_main(s.index), gather_to_main(s.rows["log_p"].float())
    labels = torch.zeros(index.shape[0], dtype=torch.int64)
    if is_main_process():
        if r.service is None:
            raise RuntimeError("relabel strategy 'actors': rank 0 has no RelabelService")
        labels = r.service.relabel(list(zip(idx_parts, log_p_parts)), r.version, r.prev).lookup(index)
    return LabelTable.from_pairs(index, broadcast_from_main(labels), s.num_clusters, r.version), None


def _score_log_p(out, cfg):
    return {"log_p": combined_log_p(out)}


def _score_top_k(out, cfg):
    log_p = combined_log_p(out)
    vals, idx = log_p.topk(min(cfg.topk, log_p.shape[1]), dim=1)
    return {"cand_idx": idx, "cand_log_p": vals}


def _score_features(out, cfg):
    return {"features": pooled_features(out, cfg.kmeans_features)}


_LOG_P = lambda cfg, k, d: {"log_p": (k, torch.float32)}                      # noqa: E731
STRATEGIES: dict[str, Strategy] = {
    "kmeans": Strategy("kmeans", _score_features, lambda cfg, k, d: {"features": (d, torch.float32)}, _solve_kmeans),
    "dense": Strategy("dense", _score_log_p, _LOG_P, _solve_dense),
    "sparse": Strategy("sparse", _score_top_k,
                       lambda cfg, k, d: {"cand_idx": (min(cfg.topk, k), torch.int64),
                                          "cand_log_p": (min(cfg.topk, k), torch.float32)}, _solve_sparse),
    "actors": Strategy("actors", _score_log_p, _LOG_P, _solve_actors),
}


def choose(cfg: RelabelConfig, version: int, prev: LabelTable | None = None) -> Strategy:
    """The strategy of the round that writes label table ``version`` (= the epochs trained so far) after ``prev``:
    ``kmeans`` (with ``warm_start="kmeans"``, for versions up to ``kmeans_epochs``, and with ``kmeans_until_stable``
    only until a k-means round settles: :func:`kmeans_over`), ``actors``, ``sparse`` (``topk`` > 0) or ``dense``.
    The one place the choice is made."""
    if cfg.warm_start == "kmeans" and version <= cfg.kmeans_epochs and not kmeans_over(cfg, prev):
        return STRATEGIES["kmeans"]
    if cfg.mode == "actors":
        return STRATEGIES["actors"]
    return STRATEGIES["sparse" if cfg.topk > 0 else "dense"]


def kmeans_over(cfg: RelabelConfig, prev: LabelTable | None) -> bool:
    """With ``kmeans_until_stable`` > 0: the k-means rounds are over once one of them changed at most that fraction
    of the labels (its table is ``settled``) or a Sinkhorn round ran (its table has no centroids) — k-means on
    features that have stopped moving its partition can only trade a good labelling for another local optimum
    (docs/INVESTIGATIONS.md). The tables carry the decision, so a resumed run makes the same one."""
    if cfg.kmeans_until_stable <= 0 or prev is None or prev.version == 0:
        return False
    return prev.settled or prev.centroids is None


def relabel_round(scores: Scores, rnd: Round) -> tuple[LabelTable, dict]:
    """One relabel round over the whole dataset (every rank calls it with its rows). Returns the new table —
    identical on every rank — and the round's statistics (:func:`.labels.round_stats`, plus ``method``; the
    comparisons with the previous table only on rank 0, which reports them)."""
    strategy = choose(rnd.cfg, rnd.version, rnd.prev)
    table, result = strategy.solve(scores, rnd)
    if strategy.name == "kmeans" and rnd.cfg.kmeans_until_stable > 0 and rnd.prev.version > 0:
        table.settled = table.fraction_changed(rnd.prev) <= rnd.cfg.kmeans_until_stable   # same on every rank
    stats = round_stats(table, rnd.prev if is_main_process() else None, result)   # O(N) NMI: rank 0 reports it
    stats["method"] = strategy.name
    if strategy.name == "actors" and rnd.service is not None:
        stats["actor_nodes"] = rnd.service.num_nodes()
    return table, stats


@torch.no_grad()
def score_dataset(model, stream, strategy: Strategy, cfg: RelabelConfig) -> Scores:
    """This worker's rows of the whole-dataset scores, as the round's ``strategy`` scores them (the combined
    log-probabilities, only their top-k, or the pooled features: ``relabel.STRATEGIES``), in sample-index order."""
    model.eval()
    device = next(model.parameters()).device
    k = model.cfg.num_clusters
    widths = strategy.widths(cfg, k, pooled_width(model, cfg.kmeans_features))
    cols: dict[str, list[torch.Tensor]] = {name: [] for name in ("index", "true", *widths)}
    for batch in stream:
        cols["index"].append(batch["index"])
        cols["true"].append(batch["label"])
        batch = to_device(batch, device, ("frames", "audio"))
        for name, t in strategy.score(model(batch["frames"], batch["audio"]), cfg).items():
            cols[name].append(t)
    # a rank without rows still joins the round's collectives, with (0, ·) tensors of the right width
    empty = {"index": torch.zeros(0, dtype=torch.int64), "true": torch.zeros(0, dtype=torch.int64),
             **{name: torch.zeros(0, w, dtype=dt) for name, (w, dt) in widths.items()}}
    got = {name: torch.cat(parts) if parts else empty[name] for name, parts in cols.items()}
    order = torch.argsort(got["index"])        # index order: the round must not depend on block arrival order
    got = {name: t[order] for name, t in got.items()}
    return Scores(got.pop("index"), got.pop("true"), k, got)


def score_and_relabel(model, stream, cfg: Stage1Config, prev: LabelTable, version: int,
                      service: RelabelService | None = None) -> tuple[LabelTable, dict]:
    """Score the whole dataset (this worker's part), run the round (``relabel.relabel_round``), return the new
    table on every rank, with statistics (cluster sizes, fraction changed, NMI vs previous, the method, and
    accuracy against true labels when the data has them — for monitoring only; they never reach the loss)."""
    t0 = time.perf_counter()
    strategy = choose(cfg.relabel, version, prev)
    scores = score_dataset(model, stream, strategy, cfg.relabel)
    table, stats = relabel_round(scores, Round(cfg.relabel, cfg.sinkhorn, prev, version, cfg.train.seed, service))
    stats["relabel_s"] = time.perf_counter() - t0
    true_all = in_table_order(table.indices, scores.index, scores.true)
    if is_main_process() and true_all is not None and bool((true_all >= 0).any()):     # monitoring: once
        known = true_all >= 0
        stats.update({f"true_{k}": v for k, v in cluster_metrics(table.labels[known], true_all[known]).items()})
    return table, stats
