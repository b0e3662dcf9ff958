"""Start and stop Ray nodes we own: a head and workers, loopback by default, token auth on, stopped by PID.

Each node is ``ray start --block`` of *this* interpreter's venv, run as a child process in a new session. The
``--block`` process supervises the node (GCS, raylet, dashboard, agents, workers); SIGTERM to it drains and stops
them all, and :func:`stop` then SIGKILLs whatever of *that session* is left, by PID. Nothing else is touched: no
``ray stop`` (which kills every Ray process of the machine).

Two traps from shared/docs/ENVIRONMENT.md are handled here, once:

* Loopback. ``--node-ip-address 127.0.0.1`` alone is rewritten to the external address; every process we start
  gets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` and ``--dashboard-host 127.0.0.1`` as well, and every port is
  chosen by binding 127.0.0.1:0. ``tests/netkit.py`` lets tests prove it.
* Token auth. Ray 2.60's defaults (ray/_private/authentication/authentication_token_setup.py) are *not* "on":
  a fresh local ``ray.init()`` turns it on and writes ``~/.ray/auth_token``, but ``ray start --head`` with
  ``RAY_AUTH_MODE`` unset turns it on only when a token already exists (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``
  or ``~/.ray/auth_token``) and otherwise starts an open cluster with a warning; a client given an explicit
  address never turns it on by itself. So we set it **on**, explicitly: each cluster gets its own random token file
  (``<tmp_dir>/auth_token``, mode 0600, or a path the caller shares between nodes) instead of the per-user
  ``~/.ray/auth_token``. Every process of the cluster and every client (``ray.init``, ``ray job submit``) runs with
  ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH=<that file>``: :meth:`RayNode.env` returns exactly these.
  ``tests/test_ray_job_submit.py::test_job_api_refuses_a_submitter_without_the_token`` proves the job API refuses
  a caller without it (HTTP 401; 403 with a wrong token).
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from avdet.fileio import private_dir
from distributed.cluster.net import LOOPBACK, free_ports

log = logging.getLogger(__name__)

_READY_MARK = "This command will now block forever"
# Unix socket paths (<tmp_dir>/session_<date>_<pid>/sockets/plasma_store) must stay under 107 bytes.
_MAX_TMP_DIR_LEN = 48


@dataclass
class RayNode:
    """One Ray node started by this module. ``process`` is the supervising ``ray start --block``."""
    process: subprocess.Popen
    address: str                      # GCS address "host:port" of the cluster (ray.init(address=...))
    node_ip: str
    tmp_dir: Path
    token_path: Path
    log_path: Path
    dashboard_url: str | None = None  # head only: "http://127.0.0.1:<port>" (ray job submit --address ...)
    ports: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def env(self) -> dict[str, str]:
        """Environment a client on this node needs to talk to the cluster (loopback guard + token auth)."""
        return ray_env(self.token_path, loopback=_is_ray_localhost(self.node_ip))

    def pids(self) -> list[int]:
        """Live PIDs of this node: the supervisor and everything in its session."""
        return session_pids(self.pid)

    def stop(self, timeout: float = 30.0) -> None:
        stop(self, timeout)


HeadInfo = RayNode  # what start_head returns: a RayNode with dashboard_url set


def ray_env(token_path: str | Path, loopback: bool = True) -> dict[str, str]:
    """Variables for every Ray process and client of a cluster whose token lives at ``token_path``.

    ``loopback``: the node IP is 127.0.0.1, where ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` stops Ray from rewriting it
    to the external address (and with it binding every interface). On a real multi-node cluster the variable must
    be left on (``=1``): nodes talk over the network.
    """
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0" if loopback else "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def write_token(path: str | Path) -> Path:
    """Create a random cluster token at ``path`` (mode 0600) unless one is there; return the path."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def _ray_cli() -> list[str]:
    """Ray's CLI run by this interpreter (so jobs get the project's venv), through :func:`_cli_main`."""
    return [sys.executable, "-m", "distributed.cluster.raycluster"]


def _cli_main() -> None:
    """``python -m distributed.cluster.raycluster start ...``: Ray's own CLI, except that a worker may join on loopback.

    With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the only way to keep Ray on 127.0.0.1) ``ray start --address``
    refuses to start a worker node, a check meant for laptops. Here only the CLI's copy of that flag is switched
    on; IP resolution still sees 0, so every node of a one-machine cluster stays on 127.0.0.1.
    """
    import types

    from ray._private import ray_constants
    from ray.scripts import scripts

    scripts.ray_constants = types.SimpleNamespace(**{**vars(ray_constants), "ENABLE_RAY_CLUSTER": True})
    scripts.main()


# On SIGTERM, Ray 2.60's `ray start --block` first drains its node, up to this many seconds (Ray's default 30), and
# waits for the raylet to go idle and exit. A head whose workers stay leased (a detached actor, a benchmark's
# retained workers) never does, so the drain took :func:`stop`'s whole 30-s grace and every process of the node was
# SIGKILLed (`benchmarks.stream_scaling`'s head, every full run). Our nodes are stopped when their work is done,
# or by SLURM's SIGTERM before its SIGKILL: 5 s of drain, then Ray's own orderly teardown. The caller's environment
# wins.
DRAIN_ENV, DRAIN_S = "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "5"

NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port", "metrics-export-port")


def _node_ports(node_ip: str) -> dict[str, int]:
    """Distinct free ports for every listener a node opens, so two nodes can share one machine."""
    return dict(zip(NODE_PORTS, free_ports(len(NODE_PORTS), node_ip)))


def _check_tmp_dir(tmp_dir: Path | str | None, role: str) -> Path:
    """``tmp_dir`` resolved and created (mode 0700: it holds the cluster token); empty/None = a fresh directory under
    this user's :func:`avdet.fileio.private_dir` ``ray``."""
    if not tmp_dir:
        tmp_dir = tempfile.mkdtemp(prefix=role[0], dir=private_dir("ray"))
    tmp_dir = Path(tmp_dir).resolve()
    if len(str(tmp_dir)) > _MAX_TMP_DIR_LEN:
        raise ValueError(f"Ray tmp_dir {tmp_dir} is {len(str(tmp_dir))} characters; Ray's unix sockets need it "
                         f"<= {_MAX_TMP_DIR_LEN}: use a short path such as tempfile.mkdtemp(dir='/tmp')")
    tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return tmp_dir


def _launch(args: list[str], tmp_dir: Path, env: dict[str, str], role: str,
            timeout: float) -> tuple[subprocess.Popen, Path]:
    """Run ``ray start --block <args>`` in a new session; return once the node reports it is up."""
    log_path = tmp_dir / f"ray-{role}.log"
    # `ray job submit -- python x.py` runs `python` from the node's PATH: make it this interpreter's venv
    venv_bin = str(Path(sys.executable).parent)
    env = {DRAIN_ENV: DRAIN_S, **os.environ, **env,
           "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")])}
    cmd = [*_ray_cli(), "start", "--block", "--disable-usage-stats", "--log-style", "record",
           "--temp-dir", str(tmp_dir / "ray"), *args]
    log.info("starting Ray %s: %s", role, " ".join(cmd))
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _READY_MARK in log_path.read_text(errors="replace"):
            return proc, log_path
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace")[-3000:]
    _kill_session(proc.pid, grace=5.0)
    raise RuntimeError(f"Ray {role} did not start within {timeout:.0f}s (exit {proc.poll()}); {log_path}:\n{tail}")


def start_head(tmp_dir: str | Path | None, num_cpus: int, num_gpus: int = 0, port: int | None = None,
               dashboard_port: int | None = None, node_ip: str = LOOPBACK, token_path: str | Path | None = None,
               timeout: float = 300.0) -> RayNode:
    """Start a Ray head on ``node_ip`` (loopback by default) with the dashboard/job server on the same address.
    ``timeout`` is a generous bound (an idle start takes ~5 s; on a loaded 2-core machine a clean-clone test run
    measured over 90 s), so a start that fails still fails within it, naming the log.

    ``tmp_dir`` (short path) holds Ray's session dir, the log and, unless ``token_path`` is given, the token;
    ``""``/None = a fresh directory under this user's private ``<tmp>/avdet-<uid>/ray``.
    """
    tmp_dir = _check_tmp_dir(tmp_dir, "head")
    token = write_token(token_path or tmp_dir / "auth_token")
    names = ("port", "dashboard-port", "ray-client-server-port", *NODE_PORTS)
    given = {"port": port, "dashboard-port": dashboard_port}
    # Ray gives the dashboard 60 s to come up, then the head exits 1 ("Failed to start the dashboard"): seen on a
    # loaded 2-core machine. Give it our own start timeout instead (the caller's environment wins).
    env = {**ray_env(token, loopback=_is_ray_localhost(node_ip)),
           "RAY_DASHBOARD_STARTUP_TIMEOUT_S": os.environ.get("RAY_DASHBOARD_STARTUP_TIMEOUT_S", str(int(timeout)))}
    deadline = time.monotonic() + timeout
    while True:
        fresh = iter(free_ports(len(names), node_ip, avoid=tuple(p for p in given.values() if p)))
        ports = {name: given.get(name) or next(fresh) for name in names}
        args = ["--head", "--node-ip-address", node_ip, "--dashboard-host", node_ip, "--include-dashboard", "true",
                "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus)]
        args += [a for name, p in ports.items() for a in (f"--{name}", str(p))]
        try:
            proc, log_path = _launch(args, tmp_dir, env, "head", max(deadline - time.monotonic(), 1.0))
            break
        except RuntimeError as e:
            # Ray waits a fixed 30 s for the raylet to register with the GCS ("The current node timed out during
            # startup"); on a loaded machine a second try often makes it. Retry while our own timeout lasts.
            if "timed out during startup" not in str(e) or deadline - time.monotonic() < 60:
                raise
            log.warning("Ray head timed out during its own startup (loaded machine?); trying again, %.0f s left",
                        deadline - time.monotonic())
    port, dashboard_port = ports["port"], ports["dashboard-port"]
    _wait_tcp(node_ip, dashboard_port, timeout=max(deadline - time.monotonic(), 30.0))
    node = RayNode(proc, f"{node_ip}:{port}", node_ip, tmp_dir, token, log_path,
                   dashboard_url=f"http://{node_ip}:{dashboard_port}", ports=ports)
    log.info("Ray head up: address %s, dashboard %s, pid %d", node.address, node.dashboard_url, node.pid)
    return node


def start_worker(head_address: str, tmp_dir: str | Path | None, num_cpus: int, num_gpus: int = 0,
                 node_ip: str = LOOPBACK, token_path: str | Path | None = None, timeout: float = 300.0) -> RayNode:
    """Start a Ray worker node joining ``head_address``; ``token_path`` is the head's token (default: tmp_dir's)."""
    tmp_dir = _check_tmp_dir(tmp_dir, "worker")
    token = Path(token_path or tmp_dir / "auth_token")
    if not token.is_file():
        raise FileNotFoundError(f"Ray worker: cluster token {token} not found; pass the head's token_path")
    ports = _node_ports(node_ip)
    args = ["--address", head_address, "--node-ip-address", node_ip,
            "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus)]
    args += [a for name, p in ports.items() for a in (f"--{name}", str(p))]
    proc, log_path = _launch(args, tmp_dir, ray_env(token, loopback=_is_ray_localhost(node_ip)), "worker", timeout)
    node = RayNode(proc, head_address, node_ip, tmp_dir, token, log_path, ports=ports)
    log.info("Ray worker up: joined %s from %s, pid %d", head_address, node_ip, node.pid)
    return node


def connect(node: RayNode, **init_kwargs):
    """``ray.init`` this process to ``node``'s cluster: sets :meth:`RayNode.env` in ``os.environ`` first.

    Ray reads ``RAY_AUTH_MODE`` and the loopback flag when it is imported and caches the first token it loads, so both
    are refreshed here: a process may import ray first, or talk to several clusters in turn (tests).
    """
    os.environ.update(node.env())
    import ray
    from ray._private import ray_constants

    from distributed.cluster.ray_local import refresh_ray_process_config, with_ray_data_env

    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1"  # read at import
    refresh_ray_process_config()
    if not _is_ray_localhost(node.node_ip):
        init_kwargs.setdefault("_node_ip_address", node.node_ip)
    return ray.init(address=node.address, **with_ray_data_env(init_kwargs))


def stop(node: RayNode, timeout: float = 30.0) -> None:
    """Stop ``node``: SIGTERM its supervisor (Ray drains and stops its children), then SIGKILL stragglers by PID."""
    _kill_session(node.pid, grace=timeout)
    log.info("Ray node (pid %d) stopped", node.pid)


def _kill_session(sid: int, grace: float) -> None:
    """SIGTERM process ``sid``; after ``grace`` s SIGKILL every process still in session ``sid``; reap ``sid``."""
    try:
        os.kill(sid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while session_pids(sid) and time.monotonic() < deadline:
        _reap(sid)
        time.sleep(0.2)
    for pid in session_pids(sid):
        log.warning("Ray process %d still alive after %.0fs; SIGKILL", pid, grace)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(sid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()  # fields after "pid (comm)": state, ppid, pgrp, session, ...


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) PIDs whose session id is ``sid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None and f[0] != "Z" and int(f[3]) == sid:
                out.append(int(entry))
    return sorted(out)


def _is_ray_localhost(host: str) -> bool:
    """What Ray rewrites unless told not to (``ray._common.network_utils.is_localhost``; 127.0.0.2 is kept).

    Not imported from Ray: importing ray fixes the loopback flag for the process before a caller could set it.
    """
    return host in ("localhost", "127.0.0.1", "::1")


def _wait_tcp(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s") from None
            time.sleep(0.2)


if __name__ == "__main__":
    _cli_main()
