"""distributed.cluster.resources: a stage sizes itself to the cluster it joins, or fails fast naming what is missing."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from distributed.cluster import raycluster
from distributed.cluster.resources import ClusterTooSmall, fit, pool_demand, train_demand

ROOT = Path(__file__).resolve().parents[1]
KNOBS = "stage1.train.num_workers or stage1.stream.read_concurrency"


def test_stage1_demand_reserves_the_reads_and_shrinks_the_workers():
    d = train_demand("stage 1", 2, 1.0, 2, KNOBS)
    assert d.describe() == "stage 1 needs 2 workers x 1 CPU + 2 read tasks x 0.5 CPU = 3 CPU"
    assert fit(d, 4) == d                                   # fits: unchanged
    assert fit(d, 2).cpus_per_worker == 0.5                 # 2 CPU: reads keep 1, the two workers share 1
    assert fit(d, 2).cpus <= 2
    # more workers than read_concurrency: one read task per worker's own stream
    assert train_demand("stage 1", 4, 1.0, 2, KNOBS).reads == 4


def test_too_small_a_cluster_is_an_error_naming_the_arithmetic_and_the_knobs():
    with pytest.raises(ClusterTooSmall) as e:
        fit(train_demand("stage 1", 2, 1.0, 2, KNOBS), 1)
    msg = str(e.value)
    assert "stage 1 needs 2 workers x 1 CPU + 2 read tasks x 0.5 CPU = 3 CPU; the cluster has 1 CPU" in msg
    assert "lower stage1.train.num_workers or stage1.stream.read_concurrency, or add nodes" in msg
    with pytest.raises(ClusterTooSmall, match="pseudo-annotation needs 2 workers x 1 CPU"):
        fit(pool_demand("pseudo-annotation", 2, 1.0, 4, "pseudo.num_actors"), 2)   # reads alone take 2
    det = train_demand("detector", 1, 1.0, 2, "detector.num_workers", join_cpus=0.25)
    assert det.cpus == 2.25 and fit(det, 2).cpus_per_worker == 0.75


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_pipeline_on_a_2_cpu_head_sizes_stage1_down_instead_of_hanging(tmp_path):
    """`ray start --head --num-cpus 2` + the tiny pipeline through ray_address=auto: stage 1 used to hang forever
    (two workers took both CPUs, the read tasks never scheduled). Now it shrinks each worker to 0.5 CPU and
    finishes; a hang would hit the subprocess timeout."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))
    head = None
    try:
        head = raycluster.start_head(ray_tmp, num_cpus=2, timeout=300)   # a loaded 2-core machine is slow
        env = {**os.environ, **head.env(), "RAY_ADDRESS": head.address,
               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
        argv = [sys.executable, str(ROOT / "jobs" / "full_vggsound.py"), "--config",
                str(ROOT / "clusters" / "local" / "pipeline_tiny.yaml"), f"workdir={tmp_path / 'run'}",
                "ray_address=auto", "stages=[ingest,stage1]"]
        t0 = time.monotonic()
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        wall = time.monotonic() - t0
        log = done.stdout[-3000:] + done.stderr[-6000:]
        assert done.returncode == 0, log
        assert "each worker reserves 0.5 CPU instead of 1" in done.stderr, log
        assert (tmp_path / "run" / "stage1" / "done.json").is_file()
        print(f"tiny ingest+stage1 on a 2-CPU head: {wall:.0f} s")
    finally:
        if head is not None:
            head.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
