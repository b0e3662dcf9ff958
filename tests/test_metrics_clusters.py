import math

import numpy as np
import pytest

from avdet.metrics.clusters import adjusted_rand_index, cluster_metrics, hungarian_accuracy, nmi, purity


def test_permutation_scores_one():
    true = np.array([0, 0, 1, 1, 2, 2, 2])
    pseudo = np.array([2, 2, 0, 0, 1, 1, 1])
    m = cluster_metrics(pseudo, true)
    assert m == pytest.approx({"nmi": 1.0, "ari": 1.0, "hungarian_acc": 1.0, "purity": 1.0})


def test_hand_case():
    # pseudo: A A A B B B   true: 0 0 1 1 1 1   contingency [[2, 1], [0, 3]]
    pseudo = [0, 0, 0, 1, 1, 1]
    true = [0, 0, 1, 1, 1, 1]
    # ARI: Σ C(n_kc,2) = 1 + 0 + 0 + 3 = 4; rows C(3,2)+C(3,2) = 6; cols C(2,2)+C(4,2) = 7; C(6,2) = 15
    # E = 6·7/15 = 2.8; ARI = (4 − 2.8)/(6.5 − 2.8) = 1.2/3.7
    assert adjusted_rand_index(pseudo, true) == pytest.approx(1.2 / 3.7)
    # NMI: H(U) = ln 2; H(V) = −(1/3 ln 1/3 + 2/3 ln 2/3);
    # I = 2/6 ln(2·6/(3·2)) + 1/6 ln(1·6/(3·4)) + 3/6 ln(3·6/(3·4))
    hu = math.log(2)
    hv = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    mi = 2 / 6 * math.log(2) + 1 / 6 * math.log(0.5) + 3 / 6 * math.log(1.5)
    assert nmi(pseudo, true) == pytest.approx(mi / ((hu + hv) / 2))
    assert purity(pseudo, true) == pytest.approx(5 / 6)
    assert hungarian_accuracy(pseudo, true) == pytest.approx(5 / 6)


def test_more_clusters_than_classes():
    true = [0, 0, 0, 0, 1, 1]
    pseudo = [0, 0, 1, 1, 2, 2]   # class 0 split in two: purity 1, Hungarian leaves one cluster unmatched
    assert purity(pseudo, true) == 1.0
    assert hungarian_accuracy(pseudo, true) == pytest.approx(4 / 6)


def test_trivial_and_independent_labellings():
    assert nmi([0, 0, 0], [1, 1, 1]) == 1.0
    assert adjusted_rand_index([0, 0, 0], [1, 1, 1]) == 1.0
    # independent: every cluster holds both classes equally -> MI = 0
    assert nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) < 0
