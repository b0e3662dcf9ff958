"""Real Ray nodes on loopback: start, connect, run tasks, every listener on 127.0.0.1, stop by PID."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from distributed.cluster import net, raycluster
from tests import netkit
pytestmark = pytest.mark.slow


@pytest.fixture
def short_tmp():
    """Ray's unix sockets need a short temp dir (pytest's tmp_path is too long)."""
    d = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ray_client(monkeypatch):
    """Connect with raycluster.connect; always shut the driver down and restore the environment. A driver an earlier
    test left connected (an in-process pipeline run keeps its local Ray) is shut down first."""
    import ray

    ray.shutdown()

    def connect(node):
        for k, v in node.env().items():
            monkeypatch.setenv(k, v)
        return raycluster.connect(node, log_to_driver=False)

    yield connect
    ray.shutdown()


def _assert_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
        time.sleep(0.2)
    assert not alive, f"Ray processes still alive after stop: {alive}"


def _state(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "Z"
    return raw[raw.rfind(")") + 2]


def test_head_on_loopback_runs_tasks_and_stops(short_tmp, ray_client):
    import ray

    head = raycluster.start_head(short_tmp, num_cpus=1)
    try:
        assert head.address.startswith("127.0.0.1:") and head.dashboard_url.startswith("http://127.0.0.1:")
        ray_client(head)

        @ray.remote
        def square(x):
            return x * x

        assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
        pids = head.pids()
        sockets = netkit.listening_sockets(pids)
        assert len(sockets) >= 4, f"expected GCS, raylet, dashboard, agents listening; got {sockets}"
        outside = [s for s in sockets if not net.is_loopback(s[1])]
        assert not outside, f"Ray listens outside loopback: {outside}"
        assert any(port == int(head.address.split(":")[1]) for _, _, port in sockets)
        ray.shutdown()
    finally:
        pids = head.pids()
        head.stop()
    _assert_gone(pids)


def test_a_head_that_still_leases_a_worker_stops_in_seconds_without_sigkill(short_tmp, ray_client, caplog):
    """A detached actor outlives its driver and keeps a worker leased, so the head's raylet never goes idle: Ray's
    SIGTERM drain (30 s by default) used to take all of stop()'s grace, and every process was SIGKILLed."""
    import ray

    head = raycluster.start_head(short_tmp, num_cpus=1)
    try:
        ray_client(head)

        @ray.remote(num_cpus=0)
        class Holder:
            def ping(self):
                return 1

        h = Holder.options(name="holder", lifetime="detached").remote()
        assert ray.get(h.ping.remote()) == 1
        ray.shutdown()
    finally:
        pids = head.pids()
        t0 = time.monotonic()
        with caplog.at_level("WARNING", logger="distributed.cluster.raycluster"):
            head.stop()
        took = time.monotonic() - t0
    _assert_gone(pids)
    assert not [r for r in caplog.records if "SIGKILL" in r.getMessage()], "stop() had to SIGKILL the head"
    assert took < 20, f"stop() took {took:.0f} s"


def test_a_clusters_workers_get_the_ray_data_settings_through_the_jobs_runtime_env(short_tmp, ray_client,
                                                                                      monkeypatch):
    """A head started without ``RAY_DATA_ENV`` (as ``ray start`` on a cluster is): ``raycluster.connect`` hands it to
    the job's workers (where ``streaming_split``'s coordinator runs the trainers' stream) in the job's runtime_env."""
    import ray

    from distributed.cluster import ray_local

    for k in ray_local.RAY_DATA_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(ray_local, "_SET_HERE", set())
    head = raycluster.start_head(short_tmp, num_cpus=1)
    try:
        ray_client(head)

        @ray.remote
        def env(keys):
            import os
            return {k: os.environ.get(k) for k in keys}

        assert ray.get(env.remote(list(ray_local.RAY_DATA_ENV))) == ray_local.RAY_DATA_ENV
        ray.shutdown()
    finally:
        head.stop()


def test_head_and_worker_form_two_node_cluster(short_tmp, ray_client):
    import ray

    head = raycluster.start_head(short_tmp / "h", num_cpus=1)
    nodes = [head]
    try:
        nodes.append(raycluster.start_worker(head.address, short_tmp / "w", num_cpus=1,
                                             token_path=head.token_path))
        ray_client(head)
        deadline = time.monotonic() + 30
        while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) == 2, alive
        assert {n["NodeManagerAddress"] for n in alive} == {"127.0.0.1"}
        assert ray.cluster_resources().get("CPU") == 2
        outside = [s for n in nodes for s in netkit.listening_sockets(n.pids())
                   if not net.is_loopback(s[1])]
        assert not outside, f"Ray listens outside loopback: {outside}"
        ray.shutdown()
    finally:
        pids = [p for n in nodes for p in n.pids()]
        for n in reversed(nodes):
            n.stop()
    _assert_gone(pids)


def test_listening_sockets_sees_a_plain_listener():
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert (os.getpid(), "127.0.0.1", port) in netkit.listening_sockets([os.getpid()])
    assert net.is_loopback("::ffff:127.0.0.1") and net.is_loopback("::1")
    assert not net.is_loopback("0.0.0.0")


def test_free_ports_are_distinct_and_avoid_the_given_ones():
    """Separate free_port() calls can return one port twice (CI: Ray refused to start on a clash); free_ports not."""
    for _ in range(50):
        avoid = (net.free_port(),)
        ports = net.free_ports(9, avoid=avoid)
        assert len(set(ports)) == 9 and avoid[0] not in ports


def test_start_head_rejects_long_tmp_dir(tmp_path):
    with pytest.raises(ValueError, match="short path"):
        raycluster.start_head(tmp_path / ("x" * 60), num_cpus=1)


def test_stage1_spread_over_two_raylets(short_tmp, ray_client, tmp_path):
    """Simulated multi-node stage 1: a head and a worker raylet on 127.0.0.1, two training workers placed
    STRICT_SPREAD (one per node) and a relabel actor pool of two, SPREAD over both nodes. Round 1 is the FAISS
    k-means warm start, round 2 Sinkhorn in the actor pool; the label table is complete and balanced."""
    import numpy as np

    from distributed.stage1.labels import LabelTable
    from distributed.stage1.job import run_stage1
    from tests.avshards import make_toy_shards
    from tests.test_stage1 import K, PER_CLASS, _cfg

    head = raycluster.start_head(short_tmp / "h", num_cpus=2)
    nodes = [head]
    try:
        nodes.append(raycluster.start_worker(head.address, short_tmp / "w", num_cpus=2, token_path=head.token_path))
        ray_client(head)
        manifest = make_toy_shards(tmp_path / "shards", num_classes=K, per_class=PER_CLASS, size=64, per_shard=16,
                                   seed=1)
        out = tmp_path / "stage1"
        summary = run_stage1(_cfg(manifest, out, "train.epochs=2", "train.placement_strategy=STRICT_SPREAD",
                                  "relabel.warm_start=kmeans", "relabel.mode=actors", "relabel.num_actors=2",
                                  "relabel.actor_cpus=0.25", f"ray_address={head.address}"))
        metrics = summary["metrics"]
        assert [m["nodes"] for m in metrics] == [2, 2]
        assert [m["relabel_method"] for m in metrics] == ["kmeans", "actors"]
        assert metrics[1]["relabel_actor_nodes"] == 2
        table = LabelTable.load(out / "labels", 2)
        assert len(table) == K * PER_CLASS
        sizes = np.bincount(table.labels, minlength=K)
        assert np.all(np.abs(sizes - PER_CLASS) <= 0.25 * PER_CLASS), sizes
    finally:
        import ray
        ray.shutdown()
        pids = [p for n in nodes for p in n.pids()]
        for n in reversed(nodes):
            n.stop()
    _assert_gone(pids)
