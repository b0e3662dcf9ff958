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


# ---------------------------------------------------------------------------------------------------------------
# private scratch directories instead of fixed /tmp/avdet-... names (issue 15)

def test_private_dir_is_ours_mode_0700_and_nested(tmp_path):
    import os
    import stat

    from avdet.fileio import private_dir
    d = private_dir("ray", "x", base=tmp_path)
    top = tmp_path / f"avdet-{os.getuid()}"
    assert d == top / "ray" / "x" and d.is_dir()
    for p in (top, top / "ray", d):
        st = os.lstat(p)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    assert private_dir("ray", base=tmp_path) == top / "ray"             # idempotent


def test_private_dir_refuses_a_prepared_directory(tmp_path, monkeypatch):
    """What another user could have done first: a symlink, an open mode, a directory they own."""
    import os

    import pytest

    from avdet.fileio import UnsafePathError, private_dir
    top = tmp_path / f"avdet-{os.getuid()}"
    (tmp_path / "elsewhere").mkdir()
    top.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="is a symlink"):
        private_dir("ray", base=tmp_path)
    assert not (tmp_path / "elsewhere" / "ray").exists()
    top.unlink()
    top.mkdir(mode=0o700)
    top.chmod(0o777)
    with pytest.raises(UnsafePathError, match=r"has mode 0777, expected 0700"):
        private_dir(base=tmp_path)
    top.chmod(0o700)
    other = os.getuid() + 4242                                          # as if another user made avdet-<our uid>
    (tmp_path / f"avdet-{other}").mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: other)
    with pytest.raises(UnsafePathError, match=rf"owned by uid {other - 4242}, not by this user \(uid {other}\)"):
        private_dir(base=tmp_path)


def test_no_fixed_tmp_avdet_paths_in_code_scripts_or_profiles():
    """Fixed names such as /tmp/avdet-ray or /tmp/avdet-slurm can be created first by another user."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    hits = []
    for sub in ("avdet", "data", "distributed", "jobs", "scripts", "clusters", "benchmarks"):
        for p in (root / sub).rglob("*"):
            if p.is_file() and p.suffix in (".py", ".sh", ".yaml", ".yml"):
                hits += [f"{p.relative_to(root)}:{n}" for n, line in enumerate(p.read_text().splitlines(), 1)
                         if re.search(r"/tmp/avdet", line)]
    assert not hits, hits


def test_slurm_local_refuses_a_state_dir_it_does_not_own(tmp_path):
    """The check runs first in `start` (before any install or daemon)."""
    import os
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm_local.sh"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / f"avdet-slurm-{os.getuid()}").symlink_to(tmp_path / "elsewhere")
    env = {k: v for k, v in os.environ.items() if k != "SLURM_LOCAL_DIR"}
    env["TMPDIR"] = str(tmp_path)
    r = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "is a symlink" in r.stderr, r.stderr
    assert not list((tmp_path / "elsewhere").iterdir())
    r = subprocess.run(["bash", str(script), "env"], env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == f"export SLURM_CONF={tmp_path}/avdet-slurm-{os.getuid()}/etc/slurm.conf"


def test_ray_nodes_without_a_tmp_dir_get_a_fresh_private_one(monkeypatch):
    """raycluster.start_head/start_worker(tmp_dir=None): a new 0700 directory under <tmp>/avdet-<uid>/ray."""
    import os
    import shutil
    import stat
    import tempfile
    from pathlib import Path

    from distributed.cluster import raycluster
    base = Path(tempfile.mkdtemp(prefix="pd", dir="/tmp"))          # short: Ray's socket paths
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(base))
        a, b = raycluster._check_tmp_dir(None, "head"), raycluster._check_tmp_dir("", "worker")
        assert a != b and a.parent == b.parent == (base / f"avdet-{os.getuid()}" / "ray").resolve()
        assert all(stat.S_IMODE(os.lstat(d).st_mode) == 0o700 for d in (a, b, a.parent, a.parent.parent))
    finally:
        shutil.rmtree(base, ignore_errors=True)
