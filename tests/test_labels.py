"""distributed.stage1.labels: the versioned label table (round trips on a temp dir, lookup, statistics)."""
import numpy as np
import pytest
import torch

from distributed.stage1.labels import LabelTable, list_versions, random_equipartition


def _table(version=0):
    idx = np.array([40, 3, 17, 1000, 8], dtype=np.int64)       # sparse, unordered: holes like broken videos
    return LabelTable.from_pairs(idx, [1, 0, 2, 1, 0], num_clusters=3, version=version)


def test_from_pairs_sorts_and_lookup():
    t = _table()
    assert t.indices.tolist() == [3, 8, 17, 40, 1000] and t.labels.tolist() == [0, 0, 2, 1, 1]
    got = t.lookup(torch.tensor([1000, 3, 17, 17]))
    assert got.dtype == torch.int64 and got.tolist() == [1, 0, 2, 2]
    assert t.lookup(np.array([8])).tolist() == [0]


@pytest.mark.parametrize("bad", [[5], [2000], [0], [3, 41]])
def test_lookup_unknown_index_is_a_clear_error(bad):
    with pytest.raises(KeyError, match="no label"):
        _table(version=4).lookup(torch.tensor(bad))


def test_invalid_tables_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        LabelTable.from_pairs([1, 2, 1], [0, 0, 0], 2)
    with pytest.raises(ValueError, match="must lie in"):
        LabelTable.from_pairs([1, 2], [0, 2], 2)
    with pytest.raises(ValueError, match="sorted and unique"):
        LabelTable(np.array([2, 1]), np.array([0, 0]), 2)


def test_save_load_round_trip_and_versions(tmp_path):
    assert list_versions(tmp_path) == [] and LabelTable.latest(tmp_path) is None
    t0 = _table(version=0)
    p0 = t0.save(tmp_path)
    assert p0.name == "labels-000000.npz"
    t1 = LabelTable.from_pairs(t0.indices, (t0.labels + 1) % 3, 3, version=1)
    t1.save(tmp_path)
    t0.save(tmp_path, version=12)
    (tmp_path / ".labels-junk.tmp").write_bytes(b"half-written")     # a crashed writer's leftover is ignored
    assert list_versions(tmp_path) == [0, 1, 12]
    back = LabelTable.load(tmp_path, 1)
    assert np.array_equal(back.indices, t1.indices) and np.array_equal(back.labels, t1.labels)
    assert back.num_clusters == 3 and back.version == 1
    latest = LabelTable.latest(tmp_path)
    assert latest.version == 12 and np.array_equal(latest.labels, t0.labels)
    with pytest.raises(FileNotFoundError, match="versions there"):
        LabelTable.load(tmp_path, 5)
    with np.load(p0, allow_pickle=False) as z:                       # plain arrays, no pickles
        assert set(z.files) == {"indices", "labels", "num_clusters", "version"}
    assert back.centroids is None


def test_centroids_round_trip_and_must_match_the_clusters(tmp_path):
    """A k-means table keeps its dictionary: (K, D) float32 through save/load."""
    t0 = _table(version=0)
    cent = np.arange(3 * 4, dtype=np.float64).reshape(3, 4) / 7
    t = LabelTable.from_pairs(t0.indices, t0.labels, 3, 2, centroids=cent)
    back = LabelTable.load(tmp_path, t.save(tmp_path) and 2)
    assert back.centroids.dtype == np.float32 and np.array_equal(back.centroids, cent.astype(np.float32))
    with pytest.raises(ValueError, match=r"centroids \(2, 4\) must be \(3, D\)"):
        LabelTable.from_pairs(t0.indices, t0.labels, 3, 2, centroids=cent[:2])


def test_random_equipartition_balanced_and_seeded():
    idx = np.arange(0, 3 * 101, 3)
    t = random_equipartition(idx, 10, seed=1)
    sizes = t.cluster_sizes()
    assert sizes.sum() == 101 and sizes.max() - sizes.min() <= 1
    assert np.array_equal(t.labels, random_equipartition(idx, 10, seed=1).labels)
    assert not np.array_equal(t.labels, random_equipartition(idx, 10, seed=2).labels)
    with pytest.raises(ValueError, match="duplicate"):
        random_equipartition([1, 1, 2], 2)


def test_statistics_vs_previous():
    t = random_equipartition(np.arange(1000), 7, seed=0)
    same = LabelTable(t.indices, t.labels, 7, version=1)
    perm = np.array([3, 4, 5, 6, 0, 1, 2])
    renamed = LabelTable(t.indices, perm[t.labels], 7, version=2)      # same partition, other cluster ids
    other = random_equipartition(np.arange(1000), 7, seed=5)
    assert same.fraction_changed(t) == 0.0 and same.nmi(t) == pytest.approx(1.0)
    assert renamed.fraction_changed(t) == 1.0 and renamed.nmi(t) == pytest.approx(1.0)
    assert other.nmi(t) < 0.05
    s = renamed.stats(t)
    assert s["num_samples"] == 1000 and s["empty_clusters"] == 0 and s["size_max"] - s["size_min"] <= 1
    assert s["nmi_vs_prev"] == pytest.approx(1.0) and s["fraction_changed"] == 1.0


def test_statistics_compare_only_the_common_samples():
    """Tables over overlapping sample sets: the comparison is over the intersection, matched by sample index."""
    a = LabelTable.from_pairs([0, 2, 4, 6, 8, 10], [0, 1, 0, 1, 0, 1], 2)
    b = LabelTable.from_pairs([1, 2, 3, 4, 5, 6, 12], [1, 1, 0, 1, 0, 0, 1], 2)
    # common: 2 (1 vs 1), 4 (0 vs 1), 6 (1 vs 0) -> two of three differ
    assert a.fraction_changed(b) == pytest.approx(2 / 3) and b.fraction_changed(a) == pytest.approx(2 / 3)
    tail = LabelTable.from_pairs([10, 11], [1, 0], 2)              # past the end of ``a`` but for one sample
    assert a.fraction_changed(tail) == 0.0


def test_statistics_need_common_samples():
    a = LabelTable.from_pairs([1, 2], [0, 1], 2)
    b = LabelTable.from_pairs([3, 4], [0, 1], 2)
    with pytest.raises(ValueError, match="share no sample"):
        a.fraction_changed(b)
