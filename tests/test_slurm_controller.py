"""launch()'s wait loop against a SLURM controller that answers badly: a fake `squeue` on PATH (no daemons)."""
from __future__ import annotations

import stat
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from distributed.cluster import slurm
from distributed.cluster.slurm import SlurmConfig, _wait_results

# The fake squeue plays the lines of $tmp/script in turn (the last one forever): "list" prints the job id, "gone"
# prints nothing (exit 0), "fail" exits 1 like a controller that does not answer, "hang" sleeps 30 s.
FAKE = """#!/bin/sh
n=$(cat "{d}/calls" 2>/dev/null || echo 0); echo $((n + 1)) > "{d}/calls"
line=$(sed -n "$((n + 1))p" "{d}/script"); [ -n "$line" ] || line=$(tail -n 1 "{d}/script")
case "$line" in
  list) echo 4242 ;;
  gone) ;;
  fail) echo "squeue: error: slurm_load_jobs error: Socket timed out on send/recv operation" >&2; exit 1 ;;
  hang) sleep 30 ;;
esac
"""


class FakeJob:
    """What _wait_results uses of a submitit Job: job_id, done(), results(), paths.stderr."""

    def __init__(self, tmp: Path, done_after: int = 10**9):
        self.job_id, self.polls, self.done_after = "4242", 0, done_after
        self.paths = SimpleNamespace(stderr=tmp / "4242_0_log.err")
        self.paths.stderr.write_text("Traceback ...\nMemoryError: the job died here\n")

    def done(self) -> bool:
        self.polls += 1
        return self.polls > self.done_after

    def results(self) -> list:
        return [{"ok": True}]


@pytest.fixture
def squeue(tmp_path, monkeypatch):
    """Install the fake squeue; returns a function setting its script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "squeue"
    exe.write_text(FAKE.format(d=tmp_path))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")

    def play(*lines: str) -> Path:
        (tmp_path / "script").write_text("\n".join(lines) + "\n")
        return tmp_path / "calls"
    return play


def test_a_failing_squeue_is_not_read_as_job_gone(squeue, tmp_path):
    """Before: squeue exit 1 == "not in the queue", so a controller hiccup failed a running job after grace_s."""
    squeue("fail", "fail", "fail", "fail", "list")
    job = FakeJob(tmp_path, done_after=6)
    assert _wait_results(job, SlurmConfig(), poll_s=0.0, grace_s=0.0) == [{"ok": True}]


def test_a_squeue_timeout_does_not_escape(squeue, tmp_path, monkeypatch):
    """Before: subprocess.TimeoutExpired from squeue escaped launch() uncaught."""
    monkeypatch.setattr(slurm, "SQUEUE_TIMEOUT_S", 0.5)
    squeue("hang", "list")
    job = FakeJob(tmp_path, done_after=2)
    t0 = time.monotonic()
    assert _wait_results(job, SlurmConfig(), poll_s=0.0, grace_s=0.0) == [{"ok": True}]
    assert time.monotonic() - t0 < 10


def test_a_silent_controller_fails_in_bounded_time_naming_the_job(squeue, tmp_path):
    squeue("fail")
    with pytest.raises(RuntimeError, match="SLURM job 4242: the controller has not answered squeue"):
        _wait_results(FakeJob(tmp_path), SlurmConfig(), poll_s=0.05, grace_s=0.0, patience_s=0.5)


def test_a_job_gone_without_a_result_fails_naming_it_and_its_stderr(squeue, tmp_path):
    calls = squeue("list", "gone")
    with pytest.raises(RuntimeError) as e:
        _wait_results(FakeJob(tmp_path), SlurmConfig(), poll_s=0.05, grace_s=0.2)
    assert "SLURM job 4242 left the queue without a result" in str(e.value)
    assert "4242_0_log.err" in str(e.value) and "MemoryError: the job died here" in str(e.value)
    assert int(calls.read_text()) >= 3


def test_submitit_pickles_live_in_a_directory_only_this_user_can_enter(tmp_path):
    """make_executor: log_dir (submitit's pickles, which the job unpickles and runs) is created 0700, an existing
    one of ours loses group/other bits, another user's or a symlink is refused."""
    import os

    from avdet.fileio import UnsafePathError
    from distributed.cluster.slurm import make_executor

    fresh = tmp_path / "fresh" / "logs"
    make_executor(SlurmConfig(mode="local", log_dir=str(fresh)))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    make_executor(SlurmConfig(mode="local", log_dir=str(loose), shared_dir=str(tmp_path / "rdv")))
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "rdv").stat().st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(loose)
    with pytest.raises(UnsafePathError, match="symlink"):
        make_executor(SlurmConfig(mode="local", log_dir=str(link)))
    if os.getuid() == 0:                      # only root can make a directory that belongs to someone else
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 12345, 12345)
        with pytest.raises(UnsafePathError, match="owned by uid 12345"):
            make_executor(SlurmConfig(mode="local", log_dir=str(theirs)))
