"""distributed.stage1.relabel: every strategy of a relabel round gives the single-process labels — dense and sparse
Sinkhorn in a 2-process gloo group, the pool of Ray actors on loopback (also after an actor is killed) — and the
k-means warm start recovers clusters."""
import os
import time
import signal

import numpy as np
import pytest
import torch

from avdet.config import SinkhornConfig
from avdet.matching import align_to
from avdet.sinkhorn import column_marginal, sinkhorn_knopp, target_marginal
from distributed.cluster.dist import spawn_loopback
from distributed.stage1.config import RelabelConfig
from distributed.stage1.labels import random_equipartition
from distributed.stage1.relabel import STRATEGIES, Round, Scores, choose, relabel_round
from distributed.stage1.relabel_pool import RelabelService, SinkhornActor

N, K = 600, 12
SK = SinkhornConfig(lambda_sk=20.0, max_iters=300, tol=1e-6, dtype="float64")   # float64: no near-tie flips


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small matrices: one OpenMP thread (two threads on a busy 2-core machine are ~100x slower)."""
    import faiss
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before)
    faiss.omp_set_num_threads(before)


def _scores(seed=0):
    """log_p (N, K) with structure (rows prefer a few clusters) and sample indices with holes."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, K, generator=g, dtype=torch.float64) * 2.0
    logits[:, :3] += 1.5                                           # unbalanced preferences: Sinkhorn must move mass
    index = torch.arange(N, dtype=torch.int64) * 3 + 7
    return torch.log_softmax(logits, dim=1), index


def _reference():
    log_p, index = _scores()
    res = sinkhorn_knopp(log_p, SK.lambda_sk, column_marginal(K), SK.max_iters, SK.tol, dtype=torch.float64)
    return index, res.labels


def test_target_marginal_gaussian_follows_previous_sizes():
    prev = random_equipartition(np.arange(40), 4)
    prev.labels[:10] = 2                                           # cluster 2 is now the largest
    c = target_marginal("gaussian", 4, 0.5, prev.cluster_sizes())
    assert int(torch.argmax(c)) == 2 and float(c.sum()) == pytest.approx(1.0)


def _dense_round(log_p, index, version, prev=None):
    """The dense strategy's round on these rows: (labels of the rows, the full table)."""
    prev = prev if prev is not None else random_equipartition(np.arange(N) * 3 + 7, K)
    true = torch.full((len(index),), -1, dtype=torch.int64)
    table, stats = relabel_round(Scores(index, true, K, {"log_p": log_p}), Round(RelabelConfig(), SK, prev, version))
    assert stats["method"] == "dense"
    return table.lookup(index), table


def test_dense_round_single_process_matches_sinkhorn():
    index, ref = _reference()
    log_p, _ = _scores()
    labels, table = _dense_round(log_p, index, version=3)
    assert torch.equal(labels, ref) and table.version == 3 and len(table) == N


def _workers_job(rank, world, out_dir):
    log_p, index = _scores()
    rows = slice(0, 250) if rank == 0 else slice(250, N)           # unequal shards
    labels, table = _dense_round(log_p[rows], index[rows], version=1)
    torch.save({"labels": labels, "indices": torch.from_numpy(table.indices),
                "table": torch.from_numpy(table.labels)}, f"{out_dir}/rank{rank}.pt")


def test_dense_round_two_process_gloo_matches_single(tmp_path):
    index, ref = _reference()
    spawn_loopback(_workers_job, 2, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(torch.cat([r0["labels"], r1["labels"]]), ref)
    for r in (r0, r1):                                             # every rank holds the full table
        assert torch.equal(r["indices"], index) and torch.equal(r["table"], ref)


def test_the_strategy_follows_the_config():
    assert choose(RelabelConfig(), 1).name == "dense"
    assert choose(RelabelConfig(warm_start="kmeans"), 1).name == "kmeans"
    assert choose(RelabelConfig(warm_start="kmeans", topk=3), 2).name == "sparse"   # a warm start of one epoch
    assert choose(RelabelConfig(warm_start="kmeans", mode="actors"), 2).name == "actors"
    every = RelabelConfig(warm_start="kmeans", kmeans_epochs=3)
    assert [choose(every, v).name for v in (1, 3, 4)] == ["kmeans", "kmeans", "dense"]


def test_kmeans_rounds_end_once_a_round_settles_and_stay_over(tmp_path):
    """kmeans_until_stable: k-means from round 1 until a k-means round changes at most that fraction of the labels
    (its table is marked settled, and the mark survives save/load, so a resumed run decides the same); then
    Sinkhorn for every later round, also those up to kmeans_epochs. 0 keeps all kmeans_epochs rounds k-means."""
    import dataclasses

    from distributed.stage1.labels import LabelTable
    feats, _ = _blobs()
    index = torch.arange(feats.shape[0]) * 5
    scores = Scores(index, torch.full((feats.shape[0],), -1), K, {"features": feats})
    cfg = RelabelConfig(warm_start="kmeans", kmeans_epochs=7, kmeans_until_stable=0.05)
    start = random_equipartition(index, K)
    assert choose(cfg, 1, start).name == "kmeans"
    first, _ = relabel_round(scores, Round(cfg, SK, start, 1))
    assert not first.settled and choose(cfg, 2, first).name == "kmeans"
    second, stats = relabel_round(scores, Round(cfg, SK, first, 2))
    changed = second.fraction_changed(first)
    assert stats["method"] == "kmeans" and second.settled == (changed <= 0.05)
    second, _ = relabel_round(scores, Round(dataclasses.replace(cfg, kmeans_until_stable=changed), SK, first, 2))
    assert second.settled and second.fraction_changed(first) == changed                 # at the bound: settled
    below = dataclasses.replace(cfg, kmeans_until_stable=changed * 0.99)
    assert not relabel_round(scores, Round(below, SK, first, 2))[0].settled              # just above it: not
    second.save(tmp_path)
    loaded = LabelTable.load(tmp_path, 2)
    assert loaded.settled and choose(cfg, 3, loaded).name == "dense"
    assert choose(cfg, 4, LabelTable(loaded.indices, loaded.labels, K, 3)).name == "dense"   # after a Sinkhorn round
    assert choose(dataclasses.replace(cfg, kmeans_until_stable=0.0), 3, loaded).name == "kmeans"
    assert not LabelTable(first.indices, first.labels, K, 1).settled                    # the default


def test_align_to_renames_clusters_to_agree_with_the_previous_table():
    prev = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    labels = np.array([2, 2, 1, 0, 0, 1, 1, 1])                     # prev's clusters under other names, one moved
    rename = align_to(labels, prev, 3)
    assert sorted(rename.tolist()) == [0, 1, 2]
    aligned = rename[labels]
    assert aligned.tolist() == [0, 0, 2, 1, 1, 2, 2, 2]
    assert sorted(np.bincount(aligned, minlength=3)) == sorted(np.bincount(labels, minlength=3))   # a renaming


def _blobs(n_per=50, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(K, d)).astype(np.float32) * 4
    truth = np.repeat(np.arange(K), n_per)
    feats = centers[truth] + rng.normal(size=(truth.size, d)).astype(np.float32)
    return torch.from_numpy(feats / np.linalg.norm(feats, axis=1, keepdims=True)), truth


def _round_job(rank, world, out_dir):
    """Every method of relabel_round on this rank's unequal share of the rows."""
    torch.set_num_threads(1)
    log_p, index = _scores()
    rows = slice(0, 250) if rank == 0 else slice(250, N)
    prev = random_equipartition(index, K, version=1)
    true = torch.full((N,), -1, dtype=torch.int64)[rows]
    dense, _ = relabel_round(Scores(index[rows], true, K, {"log_p": log_p[rows]}), Round(RelabelConfig(), SK, prev, 2))
    vals, idx = log_p[rows].topk(K, dim=1)                         # top-k with k = K: the dense problem, permuted
    sparse, stats = relabel_round(Scores(index[rows], true, K, {"cand_idx": idx, "cand_log_p": vals}),
                                  Round(RelabelConfig(topk=K), SK, prev, 2))
    feats, _ = _blobs()
    f_rows = slice(0, 250) if rank == 0 else slice(250, feats.shape[0])
    f_index = torch.arange(feats.shape[0]) * 5
    km, km_stats = relabel_round(Scores(f_index[f_rows], true[:1], K, {"features": feats[f_rows]}),
                                 Round(RelabelConfig(warm_start="kmeans"), SK, random_equipartition(f_index, K), 1))
    sharded, _ = relabel_round(Scores(f_index[f_rows], true[:1], K, {"features": feats[f_rows]}),
                               Round(SHARDED, SK, random_equipartition(f_index, K), 1))
    torch.save({"dense": torch.from_numpy(dense.labels), "sparse": torch.from_numpy(sparse.labels),
                "kmeans": torch.from_numpy(km.labels), "centroids": torch.from_numpy(km.centroids),
                "sharded": torch.from_numpy(sharded.labels), "sharded_centroids": torch.from_numpy(sharded.centroids),
                "methods": [stats["method"], km_stats["method"]]},
               f"{out_dir}/rank{rank}.pt")


SHARDED = RelabelConfig(warm_start="kmeans", kmeans_solver="sharded", kmeans_max_points_per_centroid=20)


def test_relabel_round_two_process_gloo(tmp_path):
    """Dense and sparse (top-K) rounds give single-process Sinkhorn's labels on both ranks; the k-means warm start
    gives both ranks the same table and dictionary (every sample's nearest centroid is its label), and it recovers the
    blobs; the sharded k-means gives the one-process table, renamed the same way."""
    _, ref = _reference()
    spawn_loopback(_round_job, 2, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for r in (r0, r1):
        assert torch.equal(r["dense"], ref) and torch.equal(r["sparse"], ref)
        assert r["methods"] == ["sparse", "kmeans"]
    assert torch.equal(r0["kmeans"], r1["kmeans"]) and torch.equal(r0["centroids"], r1["centroids"])
    feats, truth = _blobs()
    assert r0["centroids"].shape == (K, feats.shape[1])
    assert torch.equal(torch.cdist(feats, r0["centroids"]).argmin(1), r0["kmeans"])     # renamed with the labels
    from avdet.metrics.clusters import cluster_metrics
    assert cluster_metrics(r0["kmeans"].numpy(), truth)["nmi"] > 0.9
    f_index = torch.arange(feats.shape[0]) * 5
    one, _ = relabel_round(Scores(f_index, torch.full((1,), -1), K, {"features": feats}),
                           Round(SHARDED, SK, random_equipartition(f_index, K), 1))
    assert torch.equal(r0["sharded"], r1["sharded"]) and torch.equal(r0["sharded_centroids"], r1["sharded_centroids"])
    assert np.array_equal(r0["sharded"].numpy(), one.labels)
    assert np.allclose(r0["sharded_centroids"].numpy(), one.centroids, atol=1e-5)
    assert torch.equal(torch.cdist(feats, r0["sharded_centroids"]).argmin(1), r0["sharded"])
    assert cluster_metrics(r0["sharded"].numpy(), truth)["nmi"] > 0.9


def test_sinkhorn_actor_in_process_without_group():
    actor = SinkhornActor()
    log_p, index = _scores()
    assert actor.load((index[:10].numpy(), log_p[:10]), (index[10:].numpy(), log_p[10:])) == N
    with pytest.raises(RuntimeError, match="no process group"):
        actor.solve(SK, column_marginal(K))


def test_sparse_round_over_a_few_candidates_recovers_clusters():
    """The sparse strategy with each row's top 3 of K clusters (nothing N×K is kept) still finds the blobs and
    keeps the clusters balanced, where the same rows' arg-max would not."""
    feats, truth = _blobs()
    rng = np.random.default_rng(1)
    centres = torch.from_numpy(np.stack([feats[truth == c].mean(0).numpy() for c in range(K)]))
    log_p = torch.log_softmax(feats @ centres.T, 1).double()         # cosine margins < 2
    log_p[:, 0] += 3.0                                              # a bias Sinkhorn must undo (arg-max: all in 0)
    vals, idx = log_p.topk(3, dim=1)
    index = torch.from_numpy(rng.permutation(truth.size).astype(np.int64))
    sk = SinkhornConfig(lambda_sk=10.0, max_iters=500, tol=1e-6, dtype="float64")
    table, stats = relabel_round(Scores(index, torch.full((truth.size,), -1), K, {"cand_idx": idx, "cand_log_p": vals}),
                                 Round(RelabelConfig(topk=3), sk, random_equipartition(index, K), 2))
    assert stats["method"] == "sparse" and table.version == 2
    truth_table = type(table).from_pairs(index, torch.from_numpy(truth), K)
    assert table.nmi(truth_table) > 0.75 and table.cluster_sizes().max() <= 2 * truth.size / K
    assert int((log_p.argmax(1) == 0).sum()) > truth.size / 2        # the bias alone would put most rows in 0


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from distributed.cluster.ray_local import start_local_ray
    if ray.is_initialized():
        ray.shutdown()
    start_local_ray(num_cpus=2, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _shards():
    log_p, index = _scores()
    cuts = [0, 100, 330, 450, N]                                   # 4 shards over 2 actors, unequal
    return [(index[a:b].numpy(), log_p[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


@pytest.mark.slow
def test_relabel_service_actors_match_single_and_survive_a_kill(local_ray):
    index, ref = _reference()
    cfg = RelabelConfig(mode="actors", num_actors=2, max_restarts=3, timeout_s=60.0)
    with RelabelService(cfg, SK) as service:
        assert local_ray.get(service.actors[0].endpoint.remote()).startswith("file:///")   # loopback: no port
        t0 = time.monotonic()
        table = service.relabel(_shards(), version=1)
        plain_s = time.monotonic() - t0
        assert torch.equal(table.lookup(index), ref) and service.recoveries == 0
        # kill one actor while it holds its shard (mid-relabel: after load, before solve); its state is lost
        pids = service.pids()
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        again = service.solve(version=2)
        print(f"RELIABILITY relabel actor SIGKILLed: the round recovered in {time.monotonic() - t0:.1f} s "
              f"(a round without a kill: {plain_s:.1f} s), labels equal")
        assert service.recoveries >= 1
        assert np.array_equal(again.labels, table.labels) and again.version == 2
        assert service.pids()[1] != pids[1]                        # Ray restarted it
        # and a kill between rounds (ray.kill with restart): the next round recovers too
        local_ray.kill(service.actors[0], no_restart=False)
        third = service.relabel(_shards(), version=3)
        assert np.array_equal(third.labels, table.labels)


@pytest.mark.parametrize("method, field, width", [("dense", "log_p", K), ("sparse", "cand_idx", 3),
                                                  ("kmeans", "features", None)])
def test_a_rank_without_rows_scores_empty_tensors(method, field, width):
    """A worker whose score shard is empty still joins the round's collectives with (0, ·) tensors."""
    from avdet.config import ModelConfig
    from avdet.model import AVModel
    from distributed.stage1.relabel import score_dataset
    model = AVModel(ModelConfig(visual_width=4, audio_width=4, embed_dim=8, num_clusters=K))
    scores = score_dataset(model, [], STRATEGIES[method], RelabelConfig(topk=3))
    got = scores.rows[field]
    d = model.visual.out_channels + model.audio.out_channels
    assert got.shape == (0, width if width is not None else d) and scores.index.shape == (0,)


@pytest.mark.parametrize("which", ["both", "audio", "visual"])
def test_kmeans_features_are_what_the_config_names(which):
    """k-means rows are unit-norm; "audio"/"visual" are that trunk's pooled features alone, "both" concatenates."""
    import torch.nn.functional as F
    from avdet.config import ModelConfig
    from avdet.model import AVModel
    from avdet.model import pooled_features
    from distributed.stage1.relabel import score_dataset
    torch.manual_seed(0)
    model = AVModel(ModelConfig(image_size=64, visual_width=4, audio_width=8, embed_dim=8, num_clusters=K)).eval()
    batch = {"frames": torch.randn(5, 3, 64, 64), "audio": torch.randn(5, 1, 64, 101),
             "index": torch.arange(5), "label": torch.zeros(5, dtype=torch.int64)}
    cfg = RelabelConfig(kmeans_features=which)
    feats = score_dataset(model, [batch], STRATEGIES["kmeans"], cfg).rows["features"]
    with torch.no_grad():
        out = model(batch["frames"], batch["audio"])
    vis, aud = F.normalize(out["vis_pool"], dim=1), F.normalize(out["aud_pool"], dim=1)
    want = {"audio": aud, "visual": vis, "both": torch.cat([vis, aud], 1) / 2 ** 0.5}[which]
    assert torch.allclose(feats, want, atol=1e-6)
    assert torch.allclose(feats.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.equal(pooled_features(out, which), want.float())
    empty = score_dataset(model, [], STRATEGIES["kmeans"], cfg).rows["features"]
    assert empty.shape == (0, want.shape[1])


@pytest.mark.parametrize("kwargs, key", [({"topk": 3, "mode": "actors"}, "topk"), ({"actor_cpus": 0}, "actor_cpus"),
                                         ({"kmeans_epochs": -1}, "kmeans_epochs"),
                                         ({"kmeans_restarts": 0}, "kmeans_restarts"),
                                         ({"kmeans_features": "pixels"}, "kmeans_features"),
                                         ({"kmeans_solver": "gpu"}, "kmeans_solver"),
                                         ({"kmeans_max_points_per_centroid": 0}, "kmeans_max_points_per_centroid")])
def test_relabel_config_errors_name_the_key(kwargs, key):
    from avdet.config import ConfigError
    with pytest.raises(ConfigError, match=key):
        RelabelConfig(**kwargs).check()


def _table_order_job(rank, world, out_dir):
    from distributed.stage1.relabel import in_table_order
    order = np.arange(10) * 3                                       # the previous table's sorted indices
    mine = {0: [27, 0, 9, 12], 1: [3, 6, 15, 18, 21, 24]}[rank]   # every sample once, in no particular order
    full = in_table_order(order, torch.tensor(mine), torch.tensor([i // 3 % 4 - 1 for i in mine]))
    new = in_table_order(order, torch.tensor(mine + [99] if rank == 1 else mine), torch.zeros(len(mine) + rank))
    try:
        in_table_order(order, torch.tensor(mine[1:] if rank == 0 else mine), torch.zeros(len(mine) - 1 + rank))
        missing = "no error"
    except ValueError as e:
        missing = str(e)
    torch.save({"full": torch.from_numpy(full), "new": new is None, "missing": missing}, f"{out_dir}/rank{rank}.pt")


def test_labels_are_exchanged_in_the_previous_tables_order(tmp_path):
    """Two processes: every rank gets every sample's value in the previous table's index order (values from -1 up);
    a sample the previous table lacks makes both ranks fall back (None); a sample nobody holds is an error naming
    the counts."""
    spawn_loopback(_table_order_job, 2, str(tmp_path))
    for r in (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)):
        assert r["full"].tolist() == [i % 4 - 1 for i in range(10)]
        assert r["new"] is True
        assert "hold 9 samples for a table of 10 (1 held by no rank)" in r["missing"]
