"""Start (or reuse) a Ray instance bound to loopback only.

Ray 2.60 otherwise rewrites 127.0.0.1 to the machine's external address and listens on every interface
(../shared/docs/ENVIRONMENT.md): ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` must be in the environment of the driver and
the workers before Ray starts.
"""
from __future__ import annotations

import logging
import os

from distributed.cluster.net import LOOPBACK

log = logging.getLogger(__name__)


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


def start_local_ray(num_cpus: int = 2, **kw):
    """``ray.init`` on 127.0.0.1 with no dashboard; a no-op returning the running context if Ray is up already."""
    _loopback_only()
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    kw.setdefault("include_dashboard", False)
    kw.setdefault("log_to_driver", True)
    ctx = ray.init(address="local", _node_ip_address=LOOPBACK, num_cpus=num_cpus, **kw)
    log.info("started local Ray on %s with %d CPUs", LOOPBACK, num_cpus)
    return ctx


def connect_ray(address: str = "local", num_cpus: int = 2, **kw):
    """``address="local"``: :func:`start_local_ray`; anything else (``"auto"``, ``"ray://..."``) joins that cluster."""
    if address == "local":
        return start_local_ray(num_cpus=num_cpus, **kw)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    refresh_ray_process_config()            # this cluster's token (RAY_AUTH_TOKEN_PATH), not a previous one's
    return ray.init(address=address, **kw)
