"""Run a job on a Ray cluster that lives inside a SLURM allocation, launched with submitit.

``launch(job, job_argv, cfg)`` asks SLURM (``submitit.SlurmExecutor``, chosen explicitly: AutoExecutor picks SLURM
whenever ``sbatch`` exists, controller or not) or, with ``cfg.mode == "local"``, ``submitit.LocalExecutor`` for
``cfg.nodes × cfg.tasks_per_node`` tasks. Inside the allocation (:class:`RayJob`):

* task 0 starts the Ray head on its node and writes ``<rendezvous>/head.json`` (address, token path, dashboard);
* every other task waits for that file, starts a Ray worker pointing at it, writes ``worker-<rank>.ready``, and
  stays until task 0 writes ``done``;
* task 0 waits for all workers, runs the job — ``"package.module:function"`` or a script path with ``main(argv)``,
  called as ``job_main(argv) -> dict`` with ``RAY_ADDRESS`` set — then writes ``done``, stops Ray and returns the
  metrics, which :func:`launch` returns.

Addresses: with one node everything is on 127.0.0.1 (tasks of one node included). Only when ``nodes > 1`` does
the head bind to its node's hostname, resolved (``socket.gethostbyname``): the nodes must reach each other, so Ray
then listens on the cluster network, as a multi-node Ray cluster must. Token auth stays on: the cluster token is
written (0600) into the shared rendezvous directory, which must be visible to every node (``cfg.shared_dir``).

Preemption / timeout: :class:`RayJob` is ``submitit.helpers.Checkpointable``. On the signal SLURM sends before the
end, ``checkpoint()`` stops Ray and requeues the same job (up to ``cfg.max_retries`` times); the rerun starts a
fresh Ray cluster and calls the job again, which skips the stages whose artifacts are already on disk.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit

from avdet.config import require
from avdet.fileio import UnsafePathError, private_dir, write_json
from distributed.cluster.net import LOOPBACK
from distributed.cluster import raycluster
log = logging.getLogger(__name__)

GONE_GRACE_S = 60.0      # a job out of the queue this long with no result file is failed (result writes are quick)


@dataclass
class SlurmConfig:
    """Where and how big: one SLURM profile (clusters/slurm/*.yaml)."""
    mode: str = "slurm"              # "slurm" (sbatch) or "local" (submitit.LocalExecutor, for debugging)
    nodes: int = 1
    tasks_per_node: int = 1          # Ray nodes per SLURM node (1 on real clusters; 2 tests rendezvous on one node)
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    ray_cpus: int = 0                # logical CPUs each Ray node advertises; 0 = cpus_per_task (more lets train
                                     # workers and their read tasks share cores on small nodes)
    mem_gb: int = 0                  # 0 = partition default
    partition: str = ""              # "" = cluster default
    time_min: int = 60
    job_name: str = "avdet"
    log_dir: str = "runs/slurm"      # submitit logs and pickles; on a shared filesystem
    shared_dir: str = ""             # rendezvous files + cluster token; "" = <log_dir>/rendezvous (shared too)
    ray_tmp_dir: str = ""            # node-local, short (Ray's unix socket paths); "" = <tmp>/avdet-<uid>/ray
                                     # (avdet.fileio.private_dir: mode 0700, ours): never a shared fixed /tmp name
    ray_port: int = 0                # 0 = a free port
    ray_dashboard_port: int = 0
    rendezvous_timeout_s: int = 300
    requeue: bool = True             # requeue on preemption/timeout (Checkpointable)
    max_retries: int = 3             # how many requeues before giving up
    signal_delay_s: int = 120        # SIGUSR2 this long before the time limit
    setup: list[str] = field(default_factory=list)        # shell lines before the tasks (module load, ...)
    additional: dict[str, Any] = field(default_factory=dict)  # extra #SBATCH parameters (account, qos, constraint)

    def check(self) -> None:
        require(self.mode in ("slurm", "local"), "mode", "must be 'slurm' or 'local'")
        require(self.nodes >= 1, "nodes", "must be >= 1")
        require(self.mode == "slurm" or self.nodes == 1, "nodes", "must be 1 in local mode")
        require(self.tasks_per_node >= 1, "tasks_per_node", "must be >= 1")
        require(self.gpus_per_node >= 0, "gpus_per_node", "must be >= 0")
        require(self.gpus_per_node % self.tasks_per_node == 0, "gpus_per_node", "must divide by tasks_per_node")
        require(self.cpus_per_task >= 1, "cpus_per_task", "must be >= 1")
        require(self.ray_cpus >= 0, "ray_cpus", "must be >= 0 (0 = cpus_per_task)")
        require(self.mem_gb >= 0, "mem_gb", "must be >= 0")
        require(self.time_min >= 1, "time_min", "must be >= 1")
        require(self.max_retries >= 0, "max_retries", "must be >= 0")
        require(len(self.ray_tmp_dir) <= 32, "ray_tmp_dir", "must be a short path (<= 32 chars; Ray unix sockets)")
        require(self.rendezvous_timeout_s >= 1, "rendezvous_timeout_s", "must be >= 1")
        require(0 <= self.ray_port <= 65535, "ray_port", "must be a port in [0, 65535] (0 = a free one)")
        require(0 <= self.ray_dashboard_port <= 65535, "ray_dashboard_port",
                "must be a port in [0, 65535] (0 = a free one)")
        require(self.signal_delay_s >= 0, "signal_delay_s", "must be >= 0")

    @property
    def num_tasks(self) -> int:
        return self.nodes * self.tasks_per_node


def resolve_job(spec: str) -> Callable[[list[str]], dict]:
    """``"pkg.module:function"`` or ``"path/to/script.py"`` (its ``main``) -> the callable ``job_main(argv)``."""
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"job script {spec} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"avdet_job_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        name = "main"
    else:
        if ":" not in spec:
            raise ValueError(f"job {spec!r}: expected 'package.module:function' or a path ending in .py")
        mod_name, name = spec.split(":", 1)
        module = importlib.import_module(mod_name)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"job {spec!r}: {module.__name__} has no callable {name}(argv)")
    return fn


def _wait_file(path: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {path} did not appear within {timeout:.0f}s")
        time.sleep(0.2)


def _disconnect_driver() -> None:
    """ray.shutdown() in this process if the job left it connected to the cluster."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()



class RayJob(submitit.helpers.Checkpointable):
    """What every SLURM task runs: rendezvous, Ray node, and (task 0) the job. Picklable; requeue-safe."""

    def __init__(self, job: str, job_argv: list[str], cfg: SlurmConfig, cwd: str):
        self.job, self.job_argv, self.cfg, self.cwd = job, list(job_argv), cfg, cwd
        self._node: raycluster.RayNode | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_node": None}   # a running node never travels (requeue pickles self)

    def __call__(self) -> dict | None:
        env = submitit.JobEnvironment()
        # before anything imports ray (it reads the flag once): loopback on one node, network across nodes
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0" if self.cfg.nodes == 1 else "1"
        os.chdir(self.cwd)
        if self.cwd not in sys.path:
            sys.path.insert(0, self.cwd)
        attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
        rdv = Path(self.cfg.shared_dir or Path(self.cfg.log_dir) / "rendezvous") / f"{env.job_id}-{attempt}"
        rdv.mkdir(parents=True, exist_ok=True)
        node_ip = LOOPBACK if self.cfg.nodes == 1 else socket.gethostbyname(socket.gethostname())
        tmp = (Path(self.cfg.ray_tmp_dir) if self.cfg.ray_tmp_dir else private_dir("ray")) / \
            f"{env.job_id}-{attempt}-{env.global_rank}"
        log.info("task %d/%d on %s (%s), rendezvous %s", env.global_rank, env.num_tasks, env.hostname, node_ip, rdv)
        try:
            if env.global_rank == 0:
                return self._run_head(rdv, tmp, node_ip, env.num_tasks)
            self._run_worker(rdv, tmp, node_ip, env.global_rank)
            return None
        finally:
            _disconnect_driver()     # before the head goes: a driver whose GCS vanishes exits 1 ~30 s later,
            self._stop_ray()         # before submitit has written the result
            shutil.rmtree(tmp, ignore_errors=True)

    def _run_head(self, rdv: Path, tmp: Path, node_ip: str, num_tasks: int) -> dict:
        cfg = self.cfg
        gpus = cfg.gpus_per_node // cfg.tasks_per_node
        self._node = raycluster.start_head(tmp, cfg.ray_cpus or cfg.cpus_per_task, gpus, port=cfg.ray_port or None,
                                           dashboard_port=cfg.ray_dashboard_port or None, node_ip=node_ip,
                                           token_path=raycluster.write_token(rdv / "auth_token"))
        write_json(rdv / "head.json", {"address": self._node.address, "token_path": str(self._node.token_path),
                                        "dashboard_url": self._node.dashboard_url})
        try:
            for rank in range(1, num_tasks):
                _wait_file(rdv / f"worker-{rank}.ready", cfg.rendezvous_timeout_s, f"Ray worker of task {rank}")
            os.environ.update(self._node.env())
            os.environ["RAY_ADDRESS"] = self._node.address
            log.info("Ray cluster of %d node(s) at %s; running %s %s", num_tasks, self._node.address, self.job,
                     self.job_argv)
            metrics = resolve_job(self.job)(list(self.job_argv))
        finally:
            (rdv / "done").touch()
        if not isinstance(metrics, dict):
            raise TypeError(f"job {self.job} returned {type(metrics).__name__}; job_main(argv) must return a dict")
        return metrics

    def _run_worker(self, rdv: Path, tmp: Path, node_ip: str, rank: int) -> None:
        cfg = self.cfg
        _wait_file(rdv / "head.json", cfg.rendezvous_timeout_s, f"task {rank} waiting for the Ray head")
        head = json.loads((rdv / "head.json").read_text())
        self._node = raycluster.start_worker(head["address"], tmp, cfg.ray_cpus or cfg.cpus_per_task,
                                             cfg.gpus_per_node // cfg.tasks_per_node, node_ip=node_ip,
                                             token_path=head["token_path"])
        (rdv / f"worker-{rank}.ready").touch()
        while not (rdv / "done").exists():   # the head's task writes it when the job ends (or fails)
            if self._node.process.poll() is not None:
                raise RuntimeError(f"Ray worker of task {rank} exited ({self._node.log_path})")
            time.sleep(1.0)

    def _stop_ray(self) -> None:
        if self._node is not None:
            node, self._node = self._node, None
            node.stop()

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Preempted or out of time: stop Ray, requeue this same job; the rerun resumes from artifacts on disk."""
        log.warning("job %s preempted/timed out: stopping Ray and requeueing (stages skip finished artifacts)",
                    self.job)
        self._stop_ray()
        return super().checkpoint(*args, **kwargs)


def owned_private_dir(path: str | Path, what: str) -> Path:
    """``path`` created with mode 0700, or an existing directory of this user's closed to others (chmod 0700 if it
    was not). submitit's pickles there are *executed* by the job (``RayJob`` is unpickled on the node) and the
    rendezvous holds the cluster token: a directory another user can write is a way to run code as us. ``log_dir``
    must be on the filesystem the nodes share, so this is not :func:`avdet.fileio.private_dir` (node-local /tmp).
    Raises :class:`UnsafePathError` for a symlink, a non-directory or another user's directory."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{what} {path} is a symlink or not a directory; give a directory of your own")
    if st.st_uid != os.getuid():
        raise UnsafePathError(f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {os.getuid()}); "
                              f"give a directory of your own")
    if st.st_mode & 0o077:
        log.warning("%s %s had mode %04o; now 0700 (submitit pickles and the cluster token live there)", what, path,
                    stat.S_IMODE(st.st_mode))
        os.chmod(path, 0o700)
    return path


def make_executor(cfg: SlurmConfig) -> submitit.Executor:
    """The submitit executor of ``cfg.mode``, chosen explicitly (never AutoExecutor), writing its pickles and logs
    under a ``log_dir`` only this user can enter (:func:`owned_private_dir`)."""
    folder = owned_private_dir(cfg.log_dir, "log_dir") / "%j"
    if cfg.shared_dir:
        owned_private_dir(cfg.shared_dir, "shared_dir")
    if cfg.mode == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(tasks_per_node=cfg.tasks_per_node, nodes=1, cpus_per_task=cfg.cpus_per_task,
                                   gpus_per_node=cfg.gpus_per_node, timeout_min=cfg.time_min)
        return executor
    if shutil.which("sbatch") is None:
        raise RuntimeError("SLURM mode but no 'sbatch' on PATH: install slurm-client (scripts/slurm_local.sh start "
                           "for a local cluster) or use mode=local")
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=cfg.max_retries if cfg.requeue else 0)
    params = dict(job_name=cfg.job_name, nodes=cfg.nodes, ntasks_per_node=cfg.tasks_per_node,
                  cpus_per_task=cfg.cpus_per_task, time=cfg.time_min, signal_delay_s=cfg.signal_delay_s,
                  setup=list(cfg.setup), additional_parameters=dict(cfg.additional))
    if cfg.gpus_per_node:
        params["gpus_per_node"] = cfg.gpus_per_node
    if cfg.mem_gb:
        params["mem"] = f"{cfg.mem_gb}GB"
    if cfg.partition:
        params["partition"] = cfg.partition
    executor.update_parameters(**params)
    return executor


def launch(job: str, job_argv: list[str], cfg: SlurmConfig) -> dict:
    """Submit ``job`` (see :func:`resolve_job`) on ``cfg.num_tasks`` Ray nodes; wait; return task 0's metrics."""
    if job.endswith(".py"):
        job = str(Path(job).resolve())   # the compute node imports it by path
    executor = make_executor(cfg)
    submitted = executor.submit(RayJob(job, job_argv, cfg, os.getcwd()))
    log.info("submitted %s as %s job %s (%d task(s)); logs in %s", job, cfg.mode, submitted.job_id,
             cfg.num_tasks, Path(cfg.log_dir) / str(submitted.job_id))
    results = _wait_results(submitted, cfg)
    log.info("job %s finished: %s", submitted.job_id, results[0])
    return results[0]


SQUEUE_TIMEOUT_S = 60.0      # one squeue call; a controller busy longer than this is "unknown", not "gone"
CONTROLLER_PATIENCE_S = 1800.0   # how long launch() keeps asking a controller that does not answer


def _in_queue(job_id: str, timeout: float | None = None) -> bool | None:
    """Whether SLURM still lists the job (pending, running, requeued): True; False once it has left the queue;
    None when the controller did not answer (squeue failed or timed out) — that says nothing about the job.

    ``squeue -j <gone id>`` on some SLURM versions exits 1 with "Invalid job id specified": that is an answer."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%i"], capture_output=True, text=True,
                             timeout=timeout or SQUEUE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("squeue for job %s did not answer within %.0f s; asking again", job_id,
                    timeout or SQUEUE_TIMEOUT_S)
        return None
    except OSError as e:
        log.warning("squeue for job %s could not run (%s); asking again", job_id, e)
        return None
    if out.returncode == 0:
        return bool(out.stdout.strip())
    if "invalid job id" in out.stderr.lower():
        return False
    log.warning("squeue for job %s failed (exit %d: %s); asking again", job_id, out.returncode,
                out.stderr.strip()[-300:])
    return None


def _wait_results(submitted, cfg: SlurmConfig, poll_s: float = 5.0, grace_s: float | None = None,
                  patience_s: float | None = None) -> list:
    """``submitted.results()``, but a SLURM job that left the queue without a result (killed, or exited non-zero
    outside submitit's wrapper) is an error naming the job and its stderr after ``grace_s``. submitit alone would
    wait forever where ``sacct`` has no accounting to ask (e.g. a cluster without slurmdbd).

    A controller that does not answer (squeue fails or times out) is never read as "the job is gone": polling goes
    on, and only after ``patience_s`` without one answer does this raise, naming the job."""
    grace_s = GONE_GRACE_S if grace_s is None else grace_s
    patience_s = CONTROLLER_PATIENCE_S if patience_s is None else patience_s
    gone_since = None
    silent_since = None
    while not submitted.done():
        if cfg.mode == "slurm":
            listed = _in_queue(submitted.job_id)
            if listed is None:
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > patience_s:
                    raise RuntimeError(f"SLURM job {submitted.job_id}: the controller has not answered squeue for "
                                       f"{patience_s:.0f} s; the job may still run (scontrol show job "
                                       f"{submitted.job_id}; logs in {Path(submitted.paths.stderr).parent})")
            else:
                silent_since = None
            if listed:
                gone_since = None
            elif listed is False and gone_since is None:
                gone_since = time.monotonic()
            elif listed is False and time.monotonic() - gone_since > grace_s:
                err = Path(submitted.paths.stderr)
                tail = err.read_text(errors="replace")[-3000:] if err.exists() else "(no stderr file)"
                raise RuntimeError(f"SLURM job {submitted.job_id} left the queue without a result; stderr "
                                   f"{err}, last lines:\n{tail}")
        time.sleep(poll_s)
    return submitted.results()
