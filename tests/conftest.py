"""Test-wide settings: every Ray stays on loopback, DeepSpeed's JIT builds are cached in the venv, Ray Train polls fast."""
import os
import sys

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"      # Ray listens on 127.0.0.1 only (ENVIRONMENT.md)
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def ray_local():
    """A 2-CPU local Ray on 127.0.0.1 for one test module (Ray Data progress bars off), shut down after it. A Ray an
    earlier test left running (an in-process pipeline keeps its own, with other CPUs) is shut down first."""
    from distributed.cluster.ray_local import start_local_ray
    import ray
    ray.shutdown()
    start_local_ray(num_cpus=2, object_store_memory=300 * 2**20)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
