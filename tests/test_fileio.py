"""avdet.fileio: atomic writes keep the old file or write the whole new one, and leave no temporaries."""
import json

import numpy as np
import pytest

from avdet.fileio import TEMP_RE, temp_name, write_atomic, write_json


def test_payload_kinds_round_trip(tmp_path):
    assert write_atomic(tmp_path / "a" / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"   # creates the directory
    assert write_atomic(tmp_path / "t.txt", "é").read_text(encoding="utf-8") == "é"
    write_atomic(tmp_path / "x.npz", lambda f: np.savez(f, x=np.arange(3)))
    assert np.load(tmp_path / "x.npz")["x"].tolist() == [0, 1, 2]
    assert json.loads(write_json(tmp_path / "d.json", {"k": [1, 2]}).read_text()) == {"k": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "d.json", "t.txt", "x.npz"]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_atomic(tmp_path / "keep.json", b"old")

    def boom(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, boom)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_temp_names_parse_back_to_their_writer(tmp_path):
    """The stale-temp sweeper (data.shards.sweep_stale_temps) reads host and pid back from the name."""
    import os
    m = TEMP_RE.match(temp_name(tmp_path / "train-000001.tar").name)
    assert m is not None and int(m["pid"]) == os.getpid() and m["host"]
    assert TEMP_RE.match("train-000001.tar") is None and TEMP_RE.match(".x.tmp-host-12-notahex!") is None
