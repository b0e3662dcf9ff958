"""Start (or reuse) a Ray instance bound to loopback only.

Ray 2.60 otherwise rewrites 127.0.0.1 to the machine's external address and listens on every interface
(../shared/docs/ENVIRONMENT.md): ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` must be in the environment of the driver and
the workers before Ray starts.

Every process that runs a Ray Data execution gets :data:`RAY_DATA_ENV` (:func:`ray_data_env`): the driver and, through
the job's ``runtime_env``, the actors of a cluster (each train worker runs its own part's execution,
``data.stream.ray_dataset(part=)``).
"""
from __future__ import annotations

import logging
import os

from distributed.cluster.net import LOOPBACK

log = logging.getLogger(__name__)

# Ray Data (2.60) fetches each block's metadata on a background thread by default. With that, our read tasks ran about
# one at a time (1.06-1.10 running on average at read_concurrency 2, a finished task keeping its slot for about a
# task-length); with the metadata fetched inline by the executor, 1.45-1.53 and +22 % samples/s, every round (idle,
# interleaved: docs/INVESTIGATIONS.md, "Ray Data ran our read tasks one at a time"). A value the environment sets
# already (a job's runtime_env, a user's export) wins.
RAY_DATA_ENV = {"RAY_DATA_METADATA_PREFETCH_ON_THREAD": "0"}

_SET_HERE: set[str] = set()     # the RAY_DATA_ENV keys this process put into os.environ itself


def ray_data_env() -> dict[str, str]:
    """Put :data:`RAY_DATA_ENV` into ``os.environ`` where the environment does not set a key already (for this process
    and a local Ray it starts; a job's ``runtime_env`` or a user's export wins), and into Ray Data's module if this
    process imported it already (it reads the variable once, at import). Returns the variables this process set, to
    pass on to a cluster's workers (what the environment set is not passed: a job's ``runtime_env`` has it already,
    and repeating it there would conflict)."""
    for k, v in RAY_DATA_ENV.items():
        if k not in os.environ:
            os.environ[k] = v
            _SET_HERE.add(k)
    import sys

    fetcher = sys.modules.get("ray.data._internal.execution.metadata_fetcher")
    if fetcher is not None and hasattr(fetcher, "_PREFETCH_ON_THREAD"):
        fetcher._PREFETCH_ON_THREAD = os.environ["RAY_DATA_METADATA_PREFETCH_ON_THREAD"].lower() in ("1", "true")
    return {k: os.environ[k] for k in sorted(_SET_HERE)}


def with_ray_data_env(init_kwargs: dict) -> dict:
    """``ray.init`` keyword arguments with :func:`ray_data_env`'s variables added to the job's ``runtime_env``."""
    ours = ray_data_env()
    if not ours:
        return init_kwargs
    env = dict(init_kwargs.get("runtime_env") or {})
    env["env_vars"] = {**ours, **(env.get("env_vars") or {})}
    return {**init_kwargs, "runtime_env": env}


def _loopback_only() -> None:
    """Ray reads the variable once, at import: set it for the child processes and patch the constant in case this
    process imported Ray before (otherwise the head silently binds to the external interface)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = False
    refresh_ray_process_config()


def refresh_ray_process_config() -> None:
    """Re-read Ray's process-wide settings (``RAY_AUTH_MODE``, ``RAY_*`` system config) from ``os.environ`` and drop
    the cached auth token.

    Ray's C++ layer reads them once per process: after this process talked to a token-protected cluster, a later
    ``ray.init`` of a fresh local instance would otherwise present a stale token (or demand one) and fail with
    ``InvalidAuthToken``.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def idle_workers_kept(num_cpus: int) -> int:
    """Idle worker processes a local raylet keeps between epochs: as many as read tasks of
    ``distributed.cluster.resources.READ_CPUS`` fit on its CPUs. Ray keeps as many as there are free CPUs and kills
    the rest after a second idle, so with more half-CPU read tasks than CPUs every epoch started that many workers
    afresh (importing torch each): ``python scripts/read_task_probe.py --concurrency 4 --samples 8192 --epochs 3``
    on 2 CPUs went from 1801-1826 samples/s (``--idle-workers 2``, Ray's rule) to 3354-3643 with them kept
    (docs/INVESTIGATIONS.md, "The read path's own cost")."""
    from distributed.cluster.resources import READ_CPUS
    return max(num_cpus, int(num_cpus / READ_CPUS))


def start_local_ray(num_cpus: int = 2, **kw):
    """``ray.init`` on 127.0.0.1 with no dashboard; a no-op returning the running context if Ray is up already. The
    raylet keeps :func:`idle_workers_kept` idle workers (``_system_config`` ``num_workers_soft_limit``) unless
    ``kw`` sets it."""
    _loopback_only()
    import ray

    ray_data_env()                          # before ray.init: the local raylet's workers inherit the environment
    if ray.is_initialized():
        return ray.get_runtime_context()
    kw.setdefault("include_dashboard", False)
    kw.setdefault("log_to_driver", True)
    kw["_system_config"] = {"num_workers_soft_limit": idle_workers_kept(num_cpus), **kw.get("_system_config", {})}
    ctx = ray.init(address="local", _node_ip_address=LOOPBACK, num_cpus=num_cpus, **kw)
    log.info("started local Ray on %s with %d CPUs", LOOPBACK, num_cpus)
    return ctx


def train_state_api() -> dict:
    """``ray.init`` keywords for a local Ray that runs Ray Train: its dashboard, on 127.0.0.1, serves the state API
    that Ray Train's placement-group cleaner polls every second. Without it the cleaner logs "Failed to query Ray
    Train Controller actor state" each time and could not free a dead controller's placement group."""
    return {"include_dashboard": True, "dashboard_host": LOOPBACK}


def connect_ray(address: str = "local", num_cpus: int = 2, **kw):
    """``address="local"``: :func:`start_local_ray`; anything else (``"auto"``, ``"ray://..."``) joins that cluster."""
    if address == "local":
        return start_local_ray(num_cpus=num_cpus, **kw)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    refresh_ray_process_config()            # this cluster's token (RAY_AUTH_TOKEN_PATH), not a previous one's
    return ray.init(address=address, **with_ray_data_env(kw))
