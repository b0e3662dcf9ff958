"""data.ingest: real H.264/AAC clips (and broken files) -> shards + manifest + report, via Ray on 127.0.0.1."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.clipkit import write_clip

from data.config import IngestConfig
from data.health import DataHealth
from data.ingest import CsvRow, ingest, ingest_local, plan_groups, read_csv
from data.shards import iter_samples, read_manifest, verify_manifest

GOOD = {"aaa": 2.0, "bbb": 1.0, "ggg": 1.0}   # seconds; fps=2 -> 4, 2, 2 samples
BROKEN = {"ccc": "no_audio_track", "ddd": "empty_file", "eee": "unreadable", "fff": "unreadable",
          "hhh": "missing_file", "iii": "wrong_extension", "jjj": "too_large"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    v = root / "videos"
    v.mkdir()
    write_clip(v / "aaa_000000.mp4", GOOD["aaa"])
    write_clip(v / "bbb_30.mp4", GOOD["bbb"])              # `<id>_<start>` naming
    write_clip(v / "ggg.mp4", GOOD["ggg"])                 # `<id>` naming
    write_clip(v / "ccc_000000.mp4", 1.0, audio=False)
    (v / "ddd_000000.mp4").write_bytes(b"")
    (v / "eee_000000.mp4").write_text("this is a text file, not a video\n")
    data = (v / "aaa_000000.mp4").read_bytes()
    (v / "fff_000000.mp4").write_bytes(data[: len(data) // 2])
    (v / "iii_000000.avi").write_bytes(data)
    write_clip(v / "jjj_000000.mp4", 0.5, size=96)
    rows = ["aaa,0,dog,train", "bbb,30,cat,train", "ccc,0,dog,train", "ddd,0,cat,train", "eee,0,dog,test",
            "fff,0,cat,test", "ggg,0,\"bird, small\",test", "hhh,0,dog,test", "iii,0,dog,train",
            "jjj,0,cat,train", "aaa,0,dog,train", "bad row"]
    (root / "vgg.csv").write_text("\n".join(rows) + "\n")
    return root


def _cfg(clips, out, **kw):
    return IngestConfig(videos_dir=str(clips / "videos"), csv=str(clips / "vgg.csv"), out_dir=str(out), fps=2,
                        frame_size=32, max_frames_per_video=8, videos_per_shard=3, max_pixels=80 * 80, **kw)


def test_read_csv_sorts_and_dedupes(clips):
    rows, rejected = read_csv(clips / "vgg.csv")
    assert [r.youtube_id for r in rows] == sorted(r.youtube_id for r in rows) and len(rows) == 10
    assert rows[6].label == "bird, small"
    assert sorted(r["reason"] for r in rejected) == ["bad_csv_row", "duplicate_row"]


def test_ray_ingest_report_and_samples(clips, tmp_path, ray_local):
    out = tmp_path / "shards"
    report = ingest(_cfg(clips, out))
    reasons = {r["youtube_id"]: r["reason"] for r in report["rejected"] if "youtube_id" in r
               and r["reason"] != "duplicate_row"}
    assert reasons == BROKEN
    assert all(r["detail"] for r in report["rejected"])
    assert report["videos_ok"] == 3 and report["videos_total"] == 10 and report["samples"] == 8
    m = read_manifest(out)
    assert verify_manifest(m) == [] and m.classes == ["bird, small", "cat", "dog"]
    health = DataHealth()
    got = list(iter_samples(m, "train", health=health)) + list(iter_samples(m, "test", health=health))
    assert health.bad_total == 0
    by_video = {}
    for s in got:
        by_video.setdefault(s["meta"]["video_id"], []).append(s)
    assert {k: len(v) for k, v in by_video.items()} == {"aaa": 4, "bbb": 2, "ggg": 2}
    aaa = by_video["aaa"]
    assert [s["meta"]["index"] for s in aaa] == [0, 1, 2, 3]            # row 0 owns [0, 8)
    assert [s["meta"]["index"] for s in by_video["ggg"]] == [6 * 8, 6 * 8 + 1]
    assert [s["meta"]["timestamp"] for s in aaa] == [0.0, 0.5, 1.0, 1.5]
    assert aaa[0]["frame"].shape == (32, 32, 3) and aaa[0]["audio"].shape == (16000,)
    assert abs(aaa[0]["audio"][:7000]).max() == 0 and abs(aaa[0]["audio"][9000:]).max() > 1000  # padded edge
    assert (aaa[0]["meta"]["orig_width"], aaa[0]["meta"]["label"]) == (64, "dog")
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def test_rerun_is_idempotent_and_matches_local_path(clips, tmp_path, ray_local):
    out = tmp_path / "shards"
    ingest(_cfg(clips, out))
    before = (out / "manifest.json").read_text()
    again = ingest(_cfg(clips, out))
    assert again["groups_skipped_as_done"] == 4 and (out / "manifest.json").read_text() == before
    local = tmp_path / "local"
    ingest_local(_cfg(clips, local, use_ray=False))
    shas = lambda d: [(s.path, s.sha256) for s in read_manifest(d).shards]   # noqa: E731
    assert shas(local) == shas(out)                                    # deterministic, scheduling-independent


def test_job_main(clips, tmp_path):
    from jobs.ingest import main
    out = tmp_path / "job"
    yaml_path = Path(__file__).resolve().parents[1] / "clusters" / "local" / "ingest_tiny.yaml"
    main(["--config", str(yaml_path), f"videos_dir={clips / 'videos'}",
          f"csv={clips / 'vgg.csv'}", f"out_dir={out}", "use_ray=false", "frame_size=32", "videos_per_shard=3"])
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["samples"] == 8 + 1   # jjj (96x96) is accepted at the default max_pixels: 0.5 s -> 1 sample


def test_plan_groups_mix_classes_and_are_reproducible():
    """A class-sorted CSV must not become one-class shards (it starves the contrastive negatives)."""
    rows = [CsvRow(f"v{c}_{i:03d}", 0, f"class{c}", "train") for c in range(4) for i in range(40)]
    rows += [CsvRow(f"t{i:03d}", 0, "class0", "test") for i in range(10)]
    groups = plan_groups(rows, videos_per_shard=16)
    assert groups == plan_groups(rows, videos_per_shard=16)
    train = [g for g in groups if g["split"] == "train"]
    assert [g["shard_no"] for g in train] == list(range(10))
    assert sorted(r["row"] for g in groups for r in g["rows"]) == list(range(len(rows)))
    assert all(r["split"] == g["split"] for g in groups for r in g["rows"])
    assert all(len({r["label"] for r in g["rows"]}) >= 3 for g in train)
