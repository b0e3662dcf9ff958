"""The submitit launcher on a real single-node SLURM (scripts/slurm_local.sh), Ray head + workers inside the job."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from avdet.config import ConfigError, load_config
from distributed.cluster.slurm import SlurmConfig, launch, make_executor, resolve_job

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm_local.sh"
JOB = "tests.slurm_job_fixture:main"


@pytest.fixture(scope="module")
def slurm_cluster():
    """munged + slurmctld + slurmd on localhost (installed via apt when missing and root); stopped by PID after."""
    state = Path(tempfile.mkdtemp(prefix="sl", dir="/tmp"))
    env = {**os.environ, "SLURM_LOCAL_DIR": str(state)}
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600)
    try:
        if started.returncode != 0:
            pytest.fail(f"scripts/slurm_local.sh start failed (rc {started.returncode}); SLURM and munge must be "
                        f"installable (root + apt) or installed:\n{started.stderr[-3000:]}")
        conf = state / "etc" / "slurm.conf"
        old = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(conf)
        yield state
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
    finally:
        pids = [p.read_text().strip() for p in (state / "pids").glob("*.pid")] if (state / "pids").is_dir() else []
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)
        alive = [p for p in pids if Path(f"/proc/{p}").exists()]
        shutil.rmtree(state, ignore_errors=True)
        assert not alive, f"SLURM/munge daemons still running after stop: {alive}"


def _cfg(tmp: Path, **kw) -> SlurmConfig:
    fields = {"mode": "slurm", "nodes": 1, "cpus_per_task": 2, "time_min": 5, "partition": "debug",
              "log_dir": str(tmp / "logs"), "job_name": "avdet-test", **kw}
    return SlurmConfig(**fields)


@pytest.mark.slow
def test_launch_one_task_on_real_slurm(slurm_cluster, tmp_path):
    metrics = launch(JOB, ["--n", "5"], _cfg(tmp_path))
    assert metrics == {"sum": 0 + 1 + 4 + 9 + 16, "nodes": 1, "argv": ["--n", "5"]}


@pytest.mark.slow
def test_two_tasks_rendezvous_into_one_ray_cluster(slurm_cluster, tmp_path):
    """ntasks=2 on the 2-CPU node: task 0 is the head, task 1 joins as a worker (both on 127.0.0.1)."""
    cfg = _cfg(tmp_path, tasks_per_node=2)
    cfg.cpus_per_task = 1
    metrics = launch(JOB, ["--n", "4"], cfg)
    assert metrics["nodes"] == 2 and metrics["sum"] == 14
    rdv = list((tmp_path / "logs" / "rendezvous").iterdir())
    assert len(rdv) == 1 and {"head.json", "worker-1.ready", "done"} <= {p.name for p in rdv[0].iterdir()}


def test_resolve_job_from_module_and_script(tmp_path):
    assert resolve_job(JOB).__name__ == "main"
    script = tmp_path / "job.py"
    script.write_text("def main(argv):\n    return {'n': len(argv)}\n")
    assert resolve_job(str(script))(["a", "b"]) == {"n": 2}
    with pytest.raises(ValueError, match="module:function"):
        resolve_job("no_colon_here")


def test_profiles_load_and_choose_executor_explicitly(tmp_path, monkeypatch):
    local = load_config(SlurmConfig, ROOT / "clusters" / "slurm" / "local.yaml")
    assert (local.nodes, local.cpus_per_task, local.gpus_per_node) == (1, 2, 0)
    big = load_config(SlurmConfig, ROOT / "clusters" / "slurm" / "gpu_4x8.yaml")
    assert (big.nodes, big.gpus_per_node, big.num_tasks) == (4, 8, 4)
    with pytest.raises(ConfigError, match="nodes"):
        load_config(SlurmConfig, None, ["nodes=2", "mode=local"])
    import submitit

    cfg = load_config(SlurmConfig, None, ["mode=local", f"log_dir={tmp_path}"])
    assert isinstance(make_executor(cfg), submitit.LocalExecutor)
    monkeypatch.setenv("PATH", str(tmp_path))   # no sbatch: a clear error, never a silent fallback
    with pytest.raises(RuntimeError, match="sbatch"):
        make_executor(load_config(SlurmConfig, None, [f"log_dir={tmp_path}"]))


@pytest.mark.slow
def test_tiny_pipeline_on_real_slurm_returns_its_metrics(slurm_cluster, tmp_path):
    """The real job, jobs/full_vggsound.py, inside a SLURM allocation with Ray started by the launcher."""
    workdir = tmp_path / "run"
    argv = ["--config", str(ROOT / "clusters" / "local" / "pipeline_tiny.yaml"), f"workdir={workdir}",
            "ray_address=auto"]
    metrics = launch("jobs.full_vggsound:main", argv, _cfg(tmp_path, ray_cpus=4, time_min=20))
    assert set(metrics["timings_s"]) == {"synthetic", "ingest", "stage1", "pseudo", "detector", "evaluate"}
    assert (workdir / "detector" / "detector.pt").is_file()
    assert metrics["evaluate"]["map_50"] is not None and 0.0 <= metrics["evaluate"]["map_50"] <= 1.0


@pytest.mark.slow
def test_a_job_that_dies_without_a_result_fails_launch_naming_it_and_its_stderr(slurm_cluster, tmp_path,
                                                                                 monkeypatch):
    """The batch script dies before submitit's wrapper runs (a setup line exits 7): no result file ever comes, and
    without accounting submitit would wait forever. launch() raises, naming the job id and its stderr's last lines."""
    import time

    from distributed.cluster import slurm
    monkeypatch.setattr(slurm, "GONE_GRACE_S", 5.0)
    cfg = _cfg(tmp_path, setup=["echo 'avdet-test: node lost its scratch disk' >&2", "exit 7"])
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as e:
        launch(JOB, ["--n", "2"], cfg)
    msg = str(e.value)
    assert "left the queue without a result" in msg and "SLURM job " in msg
    assert "avdet-test: node lost its scratch disk" in msg, msg
    assert time.monotonic() - t0 < 120
    logs = Path(cfg.log_dir)      # submitit's pickles (executed by the job) sit below a directory only we can enter
    assert oct(logs.stat().st_mode & 0o777) == oct(0o700) and list(logs.glob("*/*_submitted.pkl"))
    print(f"dead job reported after {time.monotonic() - t0:.0f} s")


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_resumes_from_its_finished_artifacts(slurm_cluster, tmp_path):
    """SIGUSR2 to the running job (what SLURM sends before preemption / the time limit): RayJob.checkpoint() stops
    Ray and requeues the job; the rerun (SLURM_RESTART_COUNT=1) skips stage a, whose marker the first run wrote."""
    import threading
    import time

    work = tmp_path / "work"
    work.mkdir()
    cfg = _cfg(tmp_path, time_min=15, tasks_per_node=1)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(r=launch("tests.slurm_job_fixture:staged",
                                                            ["--workdir", str(work)], cfg)), daemon=True)
    t0 = time.monotonic()
    t.start()
    deadline = time.monotonic() + 400
    while not (work / "b.waiting").exists():
        assert time.monotonic() < deadline and t.is_alive(), "the job never reached stage b"
        time.sleep(1)
    jobs = subprocess.run(["squeue", "-h", "-o", "%i", "-n", cfg.job_name], capture_output=True, text=True,
                          timeout=60).stdout.split()
    assert len(jobs) == 1, jobs
    subprocess.run(["scancel", "--signal=USR2", jobs[0]], check=True, timeout=60)
    t.join(timeout=600)
    assert not t.is_alive(), "launch() did not return after the requeue"
    assert out["r"] == {"ran": ["b", "c"], "skipped": ["a"], "attempt": 1}
    assert (work / "a.done").read_text() == "0" and (work / "c.done").read_text() == "1"
    print(f"preempted + requeued job finished in {time.monotonic() - t0:.0f} s")
