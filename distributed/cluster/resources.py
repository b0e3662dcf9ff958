"""What a stage asks of the Ray cluster it joins, checked before it starts: fit it, shrink it, or fail fast.

A Ray Train job (stage 1, the detector) or an actor pool (pseudo-annotation) reserves CPUs for its workers, and the
shards are read by Ray Data tasks (``data.stream.ray_dataset``: 0.5 CPU each, ``read_concurrency`` at a time) that
need CPUs *beyond* the workers': the training stream is built inside each Ray Train worker, per epoch. If the workers
take every CPU the reads never schedule and the stage hangs forever — what ``ray start --head --num-cpus 2`` plus
the tiny pipeline with ``ray_address=auto`` once did.

:func:`fit_to_cluster` reserves the reads' share first, then gives the workers what is left: a worker's CPUs are a
*logical* reservation (it runs ``torch_threads`` threads whatever it reserves), so it is shrunk — logged — down to
:data:`MIN_WORKER_CPUS`; below that the stage raises :class:`ClusterTooSmall`, naming the arithmetic and the knobs.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

READ_CPUS = 0.5          # data.stream.ray_dataset's read_num_cpus
MIN_WORKER_CPUS = 0.25   # a worker reserving less is not a plan, it is a time-share of a quarter core or worse


class ClusterTooSmall(RuntimeError):
    """The cluster cannot hold a stage's workers and its read tasks at once."""


@dataclass(frozen=True)
class Demand:
    """CPUs a stage needs at once: ``workers`` x ``cpus_per_worker`` + ``reads`` x ``read_cpus`` + ``extra``.

    ``knobs`` names the config fields that lower it (for the error message)."""
    stage: str
    workers: int
    cpus_per_worker: float
    reads: int
    read_cpus: float = READ_CPUS
    extra: float = 0.0
    extra_what: str = ""
    knobs: str = ""

    @property
    def reads_cpus(self) -> float:
        return self.reads * self.read_cpus + self.extra

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker + self.reads_cpus

    def describe(self) -> str:
        """``"stage 1 needs 2 workers x 1 CPU + 2 read tasks x 0.5 CPU = 3 CPU"``."""
        extra = f" + {_n(self.extra)} CPU {self.extra_what}" if self.extra else ""
        return (f"{self.stage} needs {self.workers} workers x {_n(self.cpus_per_worker)} CPU + {self.reads} read "
                f"tasks x {_n(self.read_cpus)} CPU{extra} = {_n(self.cpus)} CPU")


def _n(x: float) -> str:
    return f"{x:g}"


def train_demand(stage: str, workers: int, cpus_per_worker: float, read_concurrency: int, knobs: str,
                 join_cpus: float = 0.0, actor_cpus: float = 0.0) -> Demand:
    """A Ray Train job whose every worker streams its own part of each epoch: at least one read task per worker
    must be able to run beside the workers, ``read_concurrency`` in all; ``join_cpus`` per worker for a map step
    after the read (the detector's pseudo-box join); ``actor_cpus`` for helper actors (stage 1's relabel pool)."""
    what = [f"for {workers} join tasks"] * bool(join_cpus) + ["for the relabel actors"] * bool(actor_cpus)
    return Demand(stage, workers, cpus_per_worker, max(read_concurrency, workers),
                  extra=workers * join_cpus + actor_cpus, extra_what=" and ".join(what), knobs=knobs)


def pool_demand(stage: str, actors: int, actor_cpus: float, read_concurrency: int, knobs: str) -> Demand:
    """An actor pool fed by one stream of ``read_concurrency`` read tasks."""
    return Demand(stage, actors, actor_cpus, max(1, read_concurrency), knobs=knobs)   # 0 = auto: at least one


def fit(demand: Demand, cluster_cpus: float) -> Demand:
    """``demand`` as it fits ``cluster_cpus``: unchanged, or with ``cpus_per_worker`` shrunk to what is left after
    the reads (never below :data:`MIN_WORKER_CPUS`). Raises :class:`ClusterTooSmall` otherwise. Pure arithmetic."""
    if demand.cpus <= cluster_cpus + 1e-9:
        return demand
    per_worker = int((cluster_cpus - demand.reads_cpus) / demand.workers * 100) / 100   # 2 decimals, rounded down
    if per_worker >= MIN_WORKER_CPUS:
        return dataclasses.replace(demand, cpus_per_worker=per_worker)
    raise ClusterTooSmall(
        f"{demand.describe()}; the cluster has {_n(cluster_cpus)} CPU (even at {_n(MIN_WORKER_CPUS)} CPU per worker "
        f"it would need {_n(demand.workers * MIN_WORKER_CPUS + demand.reads_cpus)}): lower {demand.knobs}, "
        f"or add nodes")


def fit_to_cluster(demand: Demand) -> Demand:
    """:func:`fit` against the connected Ray cluster's total CPUs (``ray.cluster_resources()``); logs a shrink, and
    warns when other work holds CPUs now (``ray.available_resources()``: the stage waits for them, it fits)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 0.0))
    fitted = fit(demand, total)
    if fitted.cpus_per_worker != demand.cpus_per_worker:
        log.warning("%s; the cluster has %s CPU: each worker reserves %s CPU instead of %s (a logical reservation: "
                    "workers time-share the cores with the read tasks). To keep %s, add nodes.", demand.describe(),
                    _n(total), _n(fitted.cpus_per_worker), _n(demand.cpus_per_worker), _n(demand.cpus_per_worker))
    else:
        log.info("%s; the cluster has %s CPU", demand.describe(), _n(total))
    free = float(ray.available_resources().get("CPU", 0.0))
    if free + 1e-9 < fitted.cpus:
        log.warning("%s: only %s of the cluster's %s CPU are free now; it starts when other work releases them",
                    demand.stage, _n(free), _n(total))
    return fitted
