"""Helpers for the reliability tests: find the processes of *our* Ray session (never another user's), kill one by
PID, kill a subprocess after a delay, hash a directory, and the loopback probe run in a subprocess."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

TAG_VAR = "AVDET_FAULT_SESSION"


def tag_session() -> str:
    """Put a unique tag in this process's environment before Ray starts: every Ray process it starts inherits it."""
    tag = os.environ.get(TAG_VAR) or uuid.uuid4().hex
    os.environ[TAG_VAR] = tag
    return tag


def tagged_pids(tag: str) -> list[int]:
    """PIDs of live processes of this user whose environment carries ``TAG_VAR=tag`` (our Ray session only)."""
    if len(tag) < 16:                        # an empty tag would match every process of the machine
        raise ValueError(f"session tag {tag!r} is too short to identify our own processes")
    needle = f"{TAG_VAR}={tag}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            out.append(int(entry))
    return sorted(out)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def train_worker_pids(tag: str) -> list[int]:
    """Ray Train worker processes of our tagged session."""
    return [p for p in tagged_pids(tag) if cmdline(p).startswith("ray::RayTrainWorker")]


def kill_worker_when(tag: str, ready, timeout: float = 300.0) -> dict:
    """Background thread: once ``ready()`` is true, SIGKILL one Ray Train worker of our session (the newest PID).
    Returns a dict filled in with {"pid", "t_kill"} when it fires."""
    info: dict = {}

    def run():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ready():
            time.sleep(0.2)
        pids = train_worker_pids(tag)
        if not pids:
            info["error"] = "no Ray Train worker of this session found"
            return
        os.kill(pids[-1], signal.SIGKILL)
        info.update(pid=pids[-1], t_kill=time.monotonic())
        log.warning("fault: SIGKILLed Ray Train worker pid %d", pids[-1])
    threading.Thread(target=run, daemon=True).start()
    return info


def run_killed(cmd: list[str], delay: float, cwd: str | Path, env: dict | None = None, after=None) -> int:
    """Start ``cmd``, SIGKILL it ``delay`` s after ``after()`` first holds (default: after the start), if it is still
    running; returns its exit status (-9 when killed)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while after is not None and not after() and proc.poll() is None:
        time.sleep(0.02)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


def tree_hashes(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """{relative path: sha256} of every regular file under ``root`` except dotfiles and names in ``ignore``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and p.name not in ignore:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------------------------------
# loopback probe: run as `python -m tests.faultkit probe <out.json>` (its own Ray session, its own process)


def _train_func(config: dict) -> None:
    """Two gloo ranks rendezvous, all-reduce once, then hold the group while the driver lists the sockets."""
    import torch
    import torch.distributed as tdist
    t = torch.ones(1)
    tdist.all_reduce(t)
    time.sleep(config["hold_s"])


def _sockets_during(fn, tag: str) -> list[list]:
    """Run ``fn()`` while a thread collects every listening socket of our tagged session: [[host, port, comm]]."""
    from tests.netkit import listening_sockets
    seen: set = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for pid, host, port in listening_sockets(tagged_pids(tag)):
                seen.add((host, port, cmdline(pid).split(" ")[0][:40]))
            time.sleep(0.25)
    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        fn()
    finally:
        stop.set()
        th.join()
    return sorted(list(s) for s in seen)


def _probe(out: Path) -> None:
    tag = tag_session()
    from distributed.cluster.ray_local import start_local_ray
    start_local_ray(num_cpus=3)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from distributed.cluster.torch_loopback import LoopbackTorchConfig

    def data_pass():
        assert ray.data.range(64, override_num_blocks=4).map_batches(lambda b: b).count() == 64

    def train(torch_config):
        def fit():
            TorchTrainer(_train_func, train_loop_config={"hold_s": 3.0}, torch_config=torch_config,
                         scaling_config=ScalingConfig(num_workers=2),
                         run_config=RunConfig(storage_path=str(out.parent / "ray_probe"))).fit()
        return fit
    result = {"data": _sockets_during(data_pass, tag),
              "train_default": _sockets_during(train(TorchConfig()), tag),
              "train_loopback": _sockets_during(train(LoopbackTorchConfig()), tag)}
    ray.shutdown()
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if sys.argv[1] == "probe":
        _probe(Path(sys.argv[2]))
