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


def test_m_shot_counts_videos_not_frames():
    """Cluster 0 holds video A (3 frames, true 1, confidences 0.6 0.6 0.6) and video B (1 frame, true 2, 0.9), plus
    one stray frame of video C (true 0, 0.95) whose other 2 frames are in cluster 1 (0.5 each).

    Per frame, 1-shot names cluster 0 from C's stray frame (0.95) -> class 0; 3-shot votes C, B, A -> ties -> 0.
    Per video: C belongs to cluster 1 (2 of its 3 frames), so cluster 0 ranks B (0.9) over A (mean 0.6):
    1-shot -> 2; 2-shot -> one vote each for 2 and 1 -> tie -> lowest id 1. Cluster 1 has only C -> 0.
    """
    from avdet.matching import per_video

    videos = ["A", "A", "A", "B", "C", "C", "C"]
    pseudo = np.array([0, 0, 0, 0, 0, 1, 1])
    true = np.array([1, 1, 1, 2, 0, 0, 0])
    conf = np.array([0.6, 0.6, 0.6, 0.9, 0.95, 0.5, 0.5])
    assert m_shot(pseudo, true, conf, K=2, C=3, m=1).tolist() == [0, 0]                 # frames
    assert m_shot(pseudo, true, conf, K=2, C=3, m=3).tolist() == [0, 0]
    assert m_shot(pseudo, true, conf, K=2, C=3, m=1, videos=videos).tolist() == [2, 0]  # videos
    assert m_shot(pseudo, true, conf, K=2, C=3, m=2, videos=videos).tolist() == [1, 0]
    k, t, c = per_video(pseudo, true, conf, videos)
    assert k.tolist() == [0, 0, 1] and t.tolist() == [1, 2, 0] and c.tolist() == pytest.approx([0.6, 0.9, 0.5])
    k, t, c = per_video(pseudo, true, np.array([0.6, 0.1, 0.2, 0.9, 0.95, 0.5, 0.7]), videos, reduce="max")
    assert c.tolist() == pytest.approx([0.6, 0.9, 0.7])
    k, t, c = per_video(pseudo, true, np.array([0.6, 0.1, 0.2, 0.9, 0.95, 0.5, 0.7]), videos, reduce="mean")
    assert c.tolist() == pytest.approx([0.3, 0.9, 0.6])
    # a tie in frame counts goes to the cluster with the higher confidence: video D, one frame in each cluster
    k, _t, _c = per_video([0, 1], [0, 0], [0.2, 0.8], ["D", "D"])
    assert k.tolist() == [1]
    with pytest.raises(ValueError):
        per_video(pseudo, true, conf, videos[:-1])


def test_matchings_report_video_units():
    from avdet.report.scores import matchings

    videos = ["A", "A", "A", "B", "C", "C", "C"]
    pseudo, true = np.array([0, 0, 0, 0, 0, 1, 1]), np.array([1, 1, 1, 2, 0, 0, 0])
    conf = np.array([0.6, 0.6, 0.6, 0.9, 0.95, 0.5, 0.5])
    res = matchings(pseudo, true, conf, K=2, C=3, m_shots=[1, 10], videos=videos)
    assert res["1-shot"]["mapping"] == [2, 0] and res["1-shot"]["unit"] == "video"
    assert res["1-shot"]["num_labels"] == 2 and res["10-shot"]["num_labels"] == 3     # videos, not frames
    res = matchings(pseudo, true, conf, K=2, C=3, m_shots=[1], videos=None)
    assert res["1-shot"]["mapping"] == [0, 0] and res["1-shot"]["unit"] == "frame" and res["1-shot"]["num_labels"] == 2


def test_more_clusters_than_classes_hungarian_one_to_one_argmax_many_to_one():
    """K > C (Table 4's larger K): each class splits over two clusters. Hungarian names only C clusters (one-to-one),
    so half the frames lose their class; argmax (majority vote) is the many-to-one figure and names every cluster."""
    from avdet.report.scores import matchings, self_label_accuracy

    true = np.repeat([0, 1, 2], 4)
    pseudo = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])             # K = 6 clusters, C = 3 classes
    m = matchings(pseudo, true, np.ones(12), K=6, C=3, m_shots=(1,))
    assert m["hungarian"]["num_matched"] == 3 and m["argmax"]["num_matched"] == 6
    assert m["argmax"]["mapping"] == [0, 0, 1, 1, 2, 2] and m["1-shot"]["mapping"] == [0, 0, 1, 1, 2, 2]
    assert self_label_accuracy(m["hungarian"]["mapping"], pseudo, true) == 0.5
    assert self_label_accuracy(m["argmax"]["mapping"], pseudo, true) == 1.0
