"""Path components that come from data or config values never leave their root (issue 15): CSV split names and
video ids, shard paths read back from a manifest, artifact paths in a done.json."""
from __future__ import annotations

import json
import os

import pytest
from tests.clipkit import write_clip
from tests.shardkit import write_dataset

from avdet.fileio import UnsafePathError, path_under, safe_name
from data.artifacts import ArtifactError, read_done, write_done
from data.config import IngestConfig
from data.ingest import ingest_local, read_csv
from data.shards import ShardWriter, read_manifest
from data.video import VideoError, find_video


@pytest.mark.parametrize("bad", ["../escaped", "/abs", "a/b", "..", ".", ".hidden", "", "x..y", "a b", "a*", "é"])
def test_safe_name_refuses_what_is_not_a_plain_name(bad):
    with pytest.raises(UnsafePathError, match=r"^CSV line 3: split: .*not a plain name"):
        safe_name(bad, "CSV line 3: split")


@pytest.mark.parametrize("ok", ["train", "test", "-0Bkyt8iZ1I", "_abc", "v1.2", "a-b_c"])
def test_safe_name_accepts_plain_names_and_youtube_ids(ok):
    assert safe_name(ok, "x") == ok


def test_path_under_refuses_escapes_and_symlinks_out(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "link")
    assert path_under(root, "sub/x.tar", "e") == root / "sub" / "x.tar"
    for bad in ["../x.tar", "/etc/passwd", "sub/../../x", "link/x.tar", ""]:
        with pytest.raises(UnsafePathError, match=r"^manifest m: shards\[0\]\.path"):
            path_under(root, bad, "manifest m: shards[0].path")


def test_shard_writer_refuses_a_split_that_escapes_out_dir(tmp_path):
    out = tmp_path / "shards"
    w = ShardWriter(out)
    for split in ("../escaped", str(tmp_path / "abs")):
        with pytest.raises(UnsafePathError, match="shard split name"):
            w.write(split, 0, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]          # nothing written beside out_dir
    assert not list(out.iterdir())


def test_ingest_rejects_csv_rows_with_unsafe_split_or_id_and_writes_only_under_out_dir(tmp_path):
    """Before the fix a split ``../escaped`` wrote ``<out_dir>/../escaped-000000.tar``."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_clip(videos / "aaa_000000.mp4", 1.0)
    write_clip(videos / "bbb_000000.mp4", 1.0)
    (tmp_path / "vgg.csv").write_text("aaa,0,dog,train\nbbb,0,cat,../escaped\n../videos/aaa,0,dog,train\n"
                                      f"ccc,0,dog,{tmp_path}/abs\n")
    rows, rejected = read_csv(tmp_path / "vgg.csv")
    assert [r.youtube_id for r in rows] == ["aaa"]
    assert [(r["line"], r["reason"]) for r in rejected] == [(2, "unsafe_name"), (3, "unsafe_name"),
                                                            (4, "unsafe_name")]
    assert "line 2: split: '../escaped'" in rejected[0]["detail"]
    assert "line 3: youtube_id" in rejected[1]["detail"]
    out = tmp_path / "out"
    cfg = IngestConfig(videos_dir=str(videos), csv=str(tmp_path / "vgg.csv"), out_dir=str(out), fps=2,
                       frame_size=32, max_frames_per_video=4, videos_per_shard=4, use_ray=False)
    report = ingest_local(cfg)
    assert report["videos_ok"] == 1 and [r["reason"] for r in report["rejected"]] == ["unsafe_name"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "vgg.csv", "videos"]   # no escaped-*.tar
    assert not list(tmp_path.rglob("escaped*")) and not list(tmp_path.rglob("abs*"))


def test_find_video_refuses_an_id_that_is_a_path(tmp_path):
    (tmp_path / "videos").mkdir()
    write_clip(tmp_path / "secret_000000.mp4", 0.5)                  # outside videos_dir
    with pytest.raises(VideoError) as e:
        find_video(tmp_path / "videos", "../secret", 0)
    assert e.value.reason == "unsafe_name"


def test_manifest_with_a_shard_path_outside_its_directory_is_refused(tmp_path):
    out = tmp_path / "shards"
    write_dataset(out, [2])
    doc = json.loads((out / "manifest.json").read_text())
    for bad in ["../elsewhere.tar", "/etc/passwd"]:
        doc["shards"][0]["path"] = bad
        (out / "manifest.json").write_text(json.dumps(doc))
        with pytest.raises(UnsafePathError, match=r"manifest .*manifest\.json: shards\[0\]\.path: "):
            read_manifest(out)


def test_done_json_listing_a_file_outside_its_stage_is_a_problem_not_a_read(tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "a.txt").write_text("a")
    record = write_done(stage, {}, [stage / "a.txt"])
    (tmp_path / "secret").write_text("s")
    record["artifacts"]["../secret"] = "0" * 64
    (stage / "done.json").write_text(json.dumps(record))
    with pytest.raises(ArtifactError, match=r"artifact: '\.\./secret'.*refusing"):
        read_done(stage, "stage")
