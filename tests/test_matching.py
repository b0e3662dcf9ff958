import numpy as np
import pytest

from avdet.matching import apply_mapping, confusion, hungarian, m_shot, majority


def test_confusion_counts():
    c = confusion([0, 0, 1, 2], [1, 1, 0, 1], K=3, C=2)
    assert c.tolist() == [[0, 2], [1, 0], [0, 1]]


def test_hungarian_recovers_permutation():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, size=200)
    perm = np.array([3, 0, 4, 1, 2])        # class c -> cluster perm[c]
    pseudo = perm[true]
    mapping = hungarian(pseudo, true, K=5, C=5)
    assert (apply_mapping(mapping, pseudo) == true).all()


def test_hungarian_with_more_clusters_than_classes():
    true = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    pseudo = np.array([4, 4, 4, 0, 0, 0, 2, 2])   # clusters 1, 3 empty
    mapping = hungarian(pseudo, true, K=5, C=3)
    assert (apply_mapping(mapping, pseudo) == true).all()
    assert (mapping == -1).sum() == 2


def test_hungarian_with_fewer_clusters_than_classes():
    true = np.array([0, 0, 0, 1, 2, 2])
    pseudo = np.array([1, 1, 1, 0, 0, 0])
    mapping = hungarian(pseudo, true, K=2, C=3)
    assert mapping.tolist() == [2, 0]


def test_majority_is_many_to_one():
    true = np.array([0, 0, 1, 0, 2])
    pseudo = np.array([0, 0, 0, 1, 1])
    assert majority(pseudo, true, K=3, C=3).tolist() == [0, 0, -1]


def test_m_shot_picks_most_confident():
    true = np.array([0, 1, 1, 2, 2])
    pseudo = np.array([0, 0, 0, 1, 1])
    conf = np.array([0.9, 0.1, 0.2, 0.3, 0.8])
    assert m_shot(pseudo, true, conf, K=2, C=3, m=1).tolist() == [0, 2]
    assert m_shot(pseudo, true, conf, K=2, C=3, m=3).tolist() == [1, 2]   # 2 votes of class 1 beat 1 of 0
    with pytest.raises(ValueError):
        m_shot(pseudo, true, conf, K=2, C=3, m=0)


def test_out_of_range_labels_raise():
    with pytest.raises(ValueError):
        hungarian([0, 3], [0, 1], K=3, C=2)
    with pytest.raises(ValueError):
        majority([0, 1], [0, -1], K=3, C=2)
