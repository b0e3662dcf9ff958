"""data.shards: atomic idempotent writing, manifest checks, and a reader that skips and counts bad samples."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from tests.shardkit import (CONFIG, NUM_SAMPLES, manifest_for_raw, members_of, sample, write_dataset, write_raw_tar)

from data.health import DataHealth, DataHealthError
from data.shards import (ShardWriter, iter_samples, read_manifest, sha256_file, sweep_stale_temps, temp_name,
                         verify_manifest)


def test_write_read_round_trip(tmp_path):
    infos = write_dataset(tmp_path, [5, 3])
    assert [i.path for i in infos] == ["train-000000.tar", "train-000001.tar"]
    assert (infos[1].count, infos[1].min_index, infos[1].max_index) == (3, 5, 7)
    m = read_manifest(tmp_path)
    assert m.classes == ["cat", "dog"] and m.config == CONFIG and verify_manifest(m) == []
    assert all(sha256_file(tmp_path / i.path) == i.sha256 for i in infos)
    health = DataHealth()
    got = list(iter_samples(m, "train", health=health))
    assert [s["meta"]["index"] for s in got] == list(range(8)) and health.bad_total == 0 and health.good == 8
    from data.schema import decode_audio
    ref = sample(6, "cat")
    assert got[6]["key"] == ref["__key__"] and got[6]["frame"].shape == (16, 16, 3)
    assert got[6]["audio"].shape == (NUM_SAMPLES,) and got[6]["audio"].dtype == np.int16
    assert np.array_equal(got[6]["audio"], decode_audio(ref["flac"]))
    assert got[6]["meta"]["label"] == "cat" and got[6]["shard"] == "train-000001.tar"


def test_verify_manifest_finds_changed_and_missing_shards(tmp_path):
    write_dataset(tmp_path, [2, 2])
    with open(tmp_path / "train-000000.tar", "ab") as f:
        f.write(b"\0" * 512)
    (tmp_path / "train-000001.tar").unlink()
    problems = verify_manifest(read_manifest(tmp_path))
    assert any("train-000000.tar: sha256 mismatch" in p for p in problems)
    assert any("train-000001.tar: file missing" in p for p in problems)


def test_crash_mid_write_leaves_nothing(tmp_path):
    def samples():
        yield sample(0)
        raise RuntimeError("worker died")
    with pytest.raises(RuntimeError, match="worker died"):
        ShardWriter(tmp_path).write("train", 0, samples())
    assert list(tmp_path.iterdir()) == []


def test_rerun_skips_finished_shards(tmp_path):
    infos = write_dataset(tmp_path, [3])
    mtime = (tmp_path / "train-000000.tar").stat().st_mtime_ns

    def must_not_run():
        raise AssertionError("finished shard was rewritten")
        yield
    assert ShardWriter(tmp_path).write("train", 0, must_not_run()) == infos[0]
    (tmp_path / "train-000000.tar.info.json").unlink()        # still listed in the manifest
    assert ShardWriter(tmp_path).write("train", 0, must_not_run()) == infos[0]
    assert (tmp_path / "train-000000.tar").stat().st_mtime_ns == mtime


def test_changed_shard_is_rewritten_identically(tmp_path):
    infos = write_dataset(tmp_path, [3])
    (tmp_path / "train-000000.tar").write_bytes(b"junk")
    again = ShardWriter(tmp_path).write("train", 0, [sample(j, ["cat", "dog"][j % 2]) for j in range(3)])
    assert again == infos[0]                                   # byte-identical rewrite


def _bad_shard(tmp_path):
    good = [sample(i) for i in range(6)]
    bad_jpg = {**sample(10), "jpg": b"\xff\xd8not a jpeg"}
    bad_flac = {**sample(11), "flac": b"fLaCnope"}
    missing = {k: v for k, v in sample(12).items() if k != "flac"}
    wrong = sample(13, frame_size=8)
    members = members_of(good[:3] + [bad_jpg, bad_flac, missing, wrong] + good[3:])
    members += members_of([sample(0)])                         # duplicate key, non-consecutive
    write_raw_tar(tmp_path / "train-000000.tar", members)
    manifest_for_raw(tmp_path, "train-000000.tar", 11, 0, 13)


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    _bad_shard(tmp_path)
    health = DataHealth()
    got = list(iter_samples(tmp_path, "train", max_bad_fraction=1.0, health=health))
    assert [s["meta"]["index"] for s in got] == list(range(6))
    assert dict(health.bad) == {"bad_jpg": 1, "bad_flac": 1, "missing_key": 1, "wrong_shape": 1, "duplicate_key": 1}
    assert health.seen == 11 and health.good == 6
    assert {(e["shard"], e["key"], e["reason"]) for e in health.examples} >= {
        ("train-000000.tar", "000000000010", "bad_jpg"), ("train-000000.tar", "000000000013", "wrong_shape")}


def test_too_many_bad_samples_raise_naming_shard_and_reason(tmp_path):
    _bad_shard(tmp_path)
    with pytest.raises(DataHealthError, match=r"shard train-000000\.tar.*bad_jpg"):
        list(iter_samples(tmp_path, "train", max_bad_fraction=0.1))


def test_truncated_tar_keeps_what_was_readable(tmp_path):
    write_dataset(tmp_path, [8])
    path = tmp_path / "train-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])
    health = DataHealth()
    got = list(iter_samples(tmp_path, "train", max_bad_fraction=1.0, health=health))
    assert 0 < len(got) < 8 and [s["meta"]["index"] for s in got] == list(range(len(got)))
    assert health.seen == 8 and dict(health.bad) == {"corrupt_tar": 8 - len(got)}
    with pytest.raises(DataHealthError, match=r"train-000000\.tar.*corrupt_tar"):
        list(iter_samples(tmp_path, "train", max_bad_fraction=0.1))


def test_pickle_entries_are_never_unpickled(tmp_path):
    marker = tmp_path / "created_by_unpickling"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    payload = pickle.dumps(Evil())
    s = sample(0)
    members = members_of([s]) + [(f"{s['__key__']}.pyd", payload), (f"{s['__key__']}.pickle", payload)]
    write_raw_tar(tmp_path / "train-000000.tar", members)
    manifest_for_raw(tmp_path, "train-000000.tar", 1, 0, 0)
    health = DataHealth()
    got = list(iter_samples(tmp_path, "train", health=health))
    assert len(got) == 1 and dict(health.ignored) == {"pyd": 1, "pickle": 1} and health.bad_total == 0
    assert not marker.exists()


def test_sweep_removes_only_dead_writers_temporaries(tmp_path):
    """A killed writer's temp file goes; a live writer's, a recent other-host one and ordinary files stay."""
    import os
    import subprocess
    import sys
    import time
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                     # its pid is now free (reaped)
    live = temp_name(tmp_path / "train-000001.tar")
    assert str(os.getpid()) in live.name and live.name.startswith(".train-000001.tar.tmp-")
    dead_tmp = tmp_path / live.name.replace(f"-{os.getpid()}-", f"-{dead.pid}-").replace("000001", "000002")
    other_new = tmp_path / ".train-000003.tar.tmp-otherhost-1-0123abcd"
    other_old = tmp_path / ".train-000004.tar.tmp-otherhost-1-4567abcd"
    keep = tmp_path / "train-000000.tar"
    for p in (live, dead_tmp, other_new, other_old, keep):
        p.write_bytes(b"x")
    old = time.time() - 2 * 24 * 3600
    os.utime(other_old, (old, old))
    removed = sweep_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead_tmp.name, other_old.name])
    assert {p.name for p in tmp_path.iterdir()} == {live.name, other_new.name, keep.name}
