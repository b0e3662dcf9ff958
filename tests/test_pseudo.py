"""Pseudo-annotation stage on local Ray (loopback) with a 2-actor inference pool over a two-split toy shard set."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from avdet.config import SelfLabelConfig, load_config
from data.config import StreamConfig
from data.shards import list_indices, read_frames, read_manifest, read_sample_meta
from data.pseudo_coco import coco_document
from distributed.pseudo.annotate import heatmap_indices, run_pseudo
from distributed.pseudo.config import PseudoConfig
from tests.pseudokit import K, SIZE, make_stage1_artifact, make_two_split_shards


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from distributed.cluster.ray_local import connect_ray
    connect_ray("local", num_cpus=4)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo")
    manifest, truth = make_two_split_shards(root / "shards")
    return root, manifest, truth, make_stage1_artifact(root / "stage1", manifest)


def _cfg(root, manifest, stage1, **kw) -> PseudoConfig:
    return PseudoConfig(stage1_dir=str(stage1), manifest=str(manifest), out_dir=str(root / "pseudo"),
                        num_actors=2, actor_cpus=1.0, batch_size=8, num_heatmaps=5,
                        stream=StreamConfig(shard_block_rows=8, read_concurrency=1), **kw)


def test_run_pseudo_end_to_end(ray_local, toy, caplog):
    from pycocotools.coco import COCO

    root, manifest, truth, stage1 = toy
    cfg = _cfg(root, manifest, stage1)
    summary = run_pseudo(cfg)
    out = root / "pseudo"
    assert (out / "done.json").is_file() and summary["num_clusters"] == K
    for split, n, offset in (("train", 24, 0), ("test", 9, 1000)):
        doc = json.loads((out / f"pseudo_{split}.json").read_text())
        ids = sorted(im["id"] for im in doc["images"])
        assert ids == list(range(offset, offset + n))
        assert sorted(a["image_id"] for a in doc["annotations"]) == ids        # exactly one per frame
        for im in doc["images"]:
            assert im["file_name"].startswith(f"{split}-") and "#" in im["file_name"]
            assert im["video_id"] == f"vid{im['id'] // 4:05d}" and im["timestamp"] == 0.5 * (im["id"] % 4)
            assert im["true_label"] == truth[im["id"]][4] and (im["width"], im["height"]) == (SIZE, SIZE)
        for a in doc["annotations"]:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= SIZE and y + h <= SIZE
            assert 1 <= a["category_id"] <= K and 0 <= a["score"] < 1
        assert [c["id"] for c in doc["categories"]] == list(range(1, K + 1))
        coco = COCO(str(out / f"pseudo_{split}.json"))
        assert len(coco.getAnnIds()) == n
        npz = np.load(out / f"heatmaps_{split}.npz", allow_pickle=False)
        assert len(npz["index"]) == 5 and npz["heatmap"].shape == (5, 4, 4) and npz["box"].shape == (5, 4)
        assert npz["frame"].shape == (5, SIZE, SIZE, 3) and npz["frame"].dtype == np.uint8
    stats = json.loads((out / "stats.json").read_text())
    assert stats["overall"]["frames"] == 33 and stats["overall"]["filtered"] == 0
    assert sum(stats["splits"]["train"]["class_histogram"]) == 24
    assert load_config(PseudoConfig, out / "config.yaml").num_actors == 2
    # re-running a complete stage skips it
    mtime = (out / "pseudo_train.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="data.artifacts"):    # the completion record's check logs the skip
        assert run_pseudo(cfg) == summary
    assert "complete; skipping" in caplog.text
    assert (out / "pseudo_train.json").stat().st_mtime_ns == mtime


def test_coco_document_filters_and_counts():
    pred = {"index": np.array([3, 7]), "label": np.array([1, -1]), "box": np.array([[0, 0, 4, 8], [2, 2, 3, 3]],
                                                                                    np.float32),
            "cls": np.array([0, 2]), "confidence": np.array([0.5, 0.1], np.float32),
            "score": np.array([9.0, 1.0], np.float32), "peakiness": np.array([2.0, 0.1], np.float32),
            "height": np.array([8, 8]), "width": np.array([8, 8]), "video_id": np.array(["v", "w"]),
            "timestamp": np.array([1.0, 2.5]),
            "file_name": np.array(["train-000000.tar#000000000003", "train-000000.tar#000000000007"])}
    doc = coco_document(pred, 3, min_confidence=0.2)
    assert [im["id"] for im in doc["images"]] == [3, 7]
    assert doc["images"][1] == {"id": 7, "file_name": "train-000000.tar#000000000007", "width": 8, "height": 8,
                                "video_id": "w", "timestamp": 2.5, "true_label": -1}
    (ann,) = doc["annotations"]
    assert ann["bbox"] == [0.0, 0.0, 4.0, 8.0] and ann["area"] == 32.0 and ann["category_id"] == 1


def test_heatmap_indices_and_meta(toy):
    _, manifest, _, _ = toy
    assert heatmap_indices([5, 1, 9, 3], 2) == {1, 9} and heatmap_indices([1, 2], 0) == set()
    m = read_manifest(manifest)
    assert list_indices(m, "test") == list(range(1000, 1009))
    meta = read_sample_meta(m, "test")
    assert meta.index == list(range(1000, 1009)) and meta.file_name[0] == "test-000000.tar#000000001000"
    assert set(read_frames(m, "test", [1003, 1007])) == {1003, 1007}


def test_config_rejects_bad_split():
    from avdet.config import ConfigError
    with pytest.raises(ConfigError, match="splits"):
        load_config(PseudoConfig, None, ["splits=[train,val]"])
    assert SelfLabelConfig().min_confidence == 0.0
