"""The one reader per artifact refuses bad input clearly and keeps what is good: a shard with an unusable sample's
json, a truncated shard, a pseudo-annotation file that points at a missing image, ingest without a connected Ray."""
from __future__ import annotations

import json

import pytest

from data.pseudo_coco import read_document, read_self_labels, training_rows
from data.shards import list_indices, read_frames, read_manifest, read_sample_meta
from tests.shardkit import manifest_for_raw, members_of, sample, write_raw_tar


def _shard_with_a_bad_json(out):
    """Samples 0..3 where sample 2's json is not JSON."""
    members = members_of([sample(i) for i in range(4)])
    members = [(n, b"{not json" if n == "000000000002.json" else d) for n, d in members]
    write_raw_tar(out / "train-000000.tar", members)
    manifest_for_raw(out, "train-000000.tar", 4, 0, 3)
    return read_manifest(out / "manifest.json")


def test_sample_meta_leaves_out_a_sample_with_unusable_json_and_keeps_the_rest(tmp_path, caplog):
    m = _shard_with_a_bad_json(tmp_path)
    meta = read_sample_meta(m, "train")
    assert meta.index == [0, 1, 3] and meta.file_name[0] == "train-000000.tar#000000000000"
    assert "sample 000000000002 has unusable json" in caplog.text
    assert list_indices(m, "train") == [0, 1, 2, 3]                 # the headers still list it
    assert sorted(read_frames(m, "train", [1, 3])) == [1, 3]


def test_a_truncated_shard_keeps_what_was_read_before_the_damage(tmp_path, caplog):
    m = _shard_with_a_bad_json(tmp_path)
    path = tmp_path / "train-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])                      # cut mid-member
    meta = read_sample_meta(m, "train")
    assert 0 in meta.index and len(meta.index) < 4
    assert "unreadable" in caplog.text and "kept" in caplog.text


def test_pseudo_annotations_on_a_missing_image_are_refused_naming_the_file(tmp_path):
    doc = {"images": [{"id": 1, "width": 8, "height": 8}],
           "annotations": [{"id": 1, "image_id": 7, "bbox": [0, 0, 2, 2], "category_id": 1, "score": 1.0}],
           "categories": [{"id": 1, "name": "cluster0"}]}
    path = tmp_path / "pseudo_train.json"
    path.write_text(json.dumps(doc))
    for read in (read_document, read_self_labels, training_rows):
        with pytest.raises(ValueError, match=r"pseudo_train.json: annotation on image 7 which is not in 'images'"):
            read(path)
    with pytest.raises(FileNotFoundError, match="run jobs/pseudo_annotate.py first"):
        read_document(tmp_path / "missing.json")


def test_ingest_without_a_connected_ray_says_so_and_writes_nothing(tmp_path):
    import ray

    from data.config import IngestConfig
    from data.ingest import ingest
    if ray.is_initialized():
        ray.shutdown()
    out = tmp_path / "shards"
    with pytest.raises(RuntimeError, match="needs a connected Ray"):
        ingest(IngestConfig(videos_dir=str(tmp_path), csv=str(tmp_path / "x.csv"), out_dir=str(out), use_ray=True))
    assert not out.exists()
