"""The Ray Data path as CPUs join: samples/s with the head node alone vs with a CPU-only reader node added, one run.

    python -m benchmarks.stream_scaling         # 8192 samples (JPEG + stored log-mel), 3 rounds
    python -m benchmarks.stream_scaling --tiny  # seconds-long smoke run

A Ray head with ``--cpus-per-node`` CPUs (the trainer's node: the consumer runs in the driver, as a train worker
iterates its stream) and a second raylet with as many CPUs and no GPU (a CPU-only reader node), both on 127.0.0.1.
The stream takes its read concurrency from the cluster, as stage 1 does (``stream.read_concurrency: 0``: as many
read tasks as the free CPUs hold, :func:`data.stream.auto_read_concurrency`; 1 CPU per read task here), so it reads
with the head's CPUs alone and with both nodes' once the reader node has joined. Each round times one epoch without
the reader node and one with it (the order alternates by round; the node is started, warmed by one untimed epoch,
and stopped between them, outside the timing), so load from other processes hits both arms alike; the figure is
the median over rounds. Frames are delivered uint8, as trainers consume them.

On one machine the two raylets share its physical cores (and the consumer runs beside them), so the ratio shows
that reads spread to an added node and how far the path follows the CPUs it is given, bounded by the cores there
are; on separate machines the reader node brings its own. Goal ``stream_scaling_reader_node``: the samples/s ratio
(head + reader node vs head alone) ≥ 1.5, with the read CPUs doubled (``_substreams<k>`` appended for a
``--substreams`` other than the config's default). Each epoch also records how many of the
machine's cores were busy (:class:`benchmarks.common.BusyCores`, every process): the cores over the head arm's busy
cores is the most any ratio can reach on this machine, whatever the path does.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import BusyCores, add_common_args, finish, loadavg
from data.config import StreamConfig

log = logging.getLogger("benchmarks.stream_scaling")

TARGET = 1.5


def _wait_for_cpus(cpus: float, timeout: float = 120.0) -> None:
    """Until Ray counts exactly ``cpus`` CPUs in the cluster and all of them are free (a joined or stopped node is
    seen by the GCS within seconds, by the resource view a little later)."""
    import ray
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.cluster_resources().get("CPU", 0) == cpus and ray.available_resources().get("CPU", 0) == cpus:
            return
        time.sleep(0.5)
    now, free = ray.cluster_resources().get("CPU", 0), ray.available_resources().get("CPU", 0)
    raise RuntimeError(f"stream_scaling: the cluster did not settle at {cpus} free CPUs within {timeout:.0f} s "
                       f"(now {now} CPUs, {free} free)")


def _restore_env(saved: dict[str, str | None]) -> None:
    """Put back the variables ``raycluster.connect`` set (this cluster's token path, auth mode, ...), so a later Ray
    in this process (a test session) does not look for the token of a cluster that is gone."""
    from distributed.cluster.ray_local import refresh_ray_process_config
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if saved:
        refresh_ray_process_config()


def _epoch(manifest: Path, batch_size: int, shards_per_task: int, substreams: int) -> tuple[int, int]:
    """One epoch of the Ray path with the cluster's read concurrency: (samples, read concurrency used)."""
    from data.stream import auto_read_concurrency, part_batches
    from data.shards import read_manifest
    cfg = StreamConfig(batch_size=batch_size, shuffle=False, shuffle_buffer=0, read_concurrency=0,
                       shards_per_task=shards_per_task, substreams=substreams)
    shards = len(read_manifest(manifest).split_shards("train"))
    concurrency = auto_read_concurrency(1.0, -(-shards // shards_per_task))
    batches = part_batches(manifest, "train", cfg, 0, None, normalise=False, read_num_cpus=1.0)
    return sum(len(b["index"]) for b in batches), concurrency


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream_scaling", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--per-shard", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--shards-per-task", type=int, default=StreamConfig().shards_per_task,
                   help="stream.shards_per_task of the read tasks (default: the config's default)")
    p.add_argument("--substreams", type=int, default=StreamConfig().substreams,
                   help="stream.substreams: Ray executions the epoch is read as (default: the config's default)")
    p.add_argument("--goals", action="store_true", help="write the goal to benchmarks/GOALS.json (make bench)")
    add_common_args(p, "stream_scaling")
    args = p.parse_args(argv)
    StreamConfig(shards_per_task=args.shards_per_task, substreams=args.substreams).check()   # before any Ray starts
    return args


def main(argv: list[str] | None = None) -> dict:
    import ray

    from benchmarks.stream import make_shards, train_count
    from distributed.cluster import raycluster
    argv = list(argv or [])
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.tiny:
        args.samples, args.per_shard, args.rounds = 256, 64, 2        # 2: both arm orders
    per_node = args.cpus_per_node
    load_start = loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="avsc-", dir="/tmp"))     # short: Ray's socket paths have a length limit
    head = reader = None
    saved_env: dict[str, str | None] = {}
    rates: dict[str, list[float]] = {"head": [], "head_plus_reader": []}
    busy: dict[str, list[float]] = {"head": [], "head_plus_reader": []}
    concurrency: dict[str, int] = {}
    try:
        manifest = make_shards(tmp / "shards", args.samples, args.per_shard, store_logmel=True)
        n = train_count(manifest)
        head = raycluster.start_head(tmp / "h", num_cpus=per_node)
        saved_env = {k: os.environ.get(k) for k in head.env()}     # connect() sets them; restored below
        raycluster.connect(head, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        _wait_for_cpus(per_node)
        _epoch(manifest, args.batch_size, args.shards_per_task, args.substreams)    # warm-up: workers, imports
        for r in range(args.rounds):
            for arm in (("head", "head_plus_reader") if r % 2 == 0 else ("head_plus_reader", "head")):
                if arm == "head_plus_reader" and reader is None:
                    reader = raycluster.start_worker(head.address, tmp / f"w{r}", num_cpus=per_node,
                                                     token_path=head.token_path)
                    _wait_for_cpus(2 * per_node)
                    # untimed: the new node's workers start, import
                    _epoch(manifest, args.batch_size, args.shards_per_task, args.substreams)
                elif arm == "head" and reader is not None:
                    raycluster.stop(reader)
                    reader = None
                    _wait_for_cpus(per_node)
                _wait_for_cpus(per_node * (2 if arm == "head_plus_reader" else 1))   # the last epoch's tasks gone
                t0 = time.perf_counter()
                with BusyCores() as cores:
                    got, concurrency[arm] = _epoch(manifest, args.batch_size, args.shards_per_task, args.substreams)
                dt = time.perf_counter() - t0
                busy[arm].append(cores.cores)
                if got != n:
                    raise RuntimeError(f"stream_scaling {arm}: an epoch yielded {got} samples, expected {n}")
                rates[arm].append(got / dt)
                log.info("round %d %s (read concurrency %d): %.0f samples/s", r, arm, concurrency[arm], got / dt)
    finally:
        ray.shutdown()
        for node in (reader, head):
            if node is not None:
                raycluster.stop(node)
        shutil.rmtree(tmp, ignore_errors=True)
        _restore_env(saved_env)
    fig = {arm: statistics.median(v) for arm, v in rates.items()}
    ratio = fig["head_plus_reader"] / fig["head"]
    head_busy = statistics.median(busy["head"])
    ceiling = (os.cpu_count() or 1) / head_busy         # the most this machine's cores allow over the head alone
    fig.update({"rounds": rates, "busy_cores": busy, "ceiling_on_this_machine": round(ceiling, 2),
                "read_concurrency": concurrency, "cpus_per_node": per_node, "samples": n,
                "physical_cores": os.cpu_count(), "loadavg_start_end": [load_start, loadavg()],
                "goals": [{"goal": "stream_scaling_reader_node" + (f"_substreams{args.substreams}" if
                                                                    args.substreams != StreamConfig().substreams
                                                                    else ""),
                           "measured": round(ratio, 3),
                           "target": f">= {TARGET} (read CPUs {per_node} -> {2 * per_node}; "
                                     f"this machine's cores allow x{ceiling:.2f})",
                           "met": bool(ratio >= TARGET)}]})
    summary = (f"{n} samples (JPEG + stored log-mel, uint8 frames; {args.shards_per_task} shard(s) per read task, "
               f"{args.substreams} substream(s)), "
               f"{args.rounds} alternating rounds, "
               f"{os.cpu_count()} physical cores: head ({per_node} CPU, read concurrency {concurrency['head']}) "
               f"{fig['head']:.0f}/s; + CPU-only reader node ({per_node} CPU, read concurrency "
               f"{concurrency['head_plus_reader']}) {fig['head_plus_reader']:.0f}/s: x{ratio:.2f}; machine busy "
               f"{head_busy:.2f} -> {statistics.median(busy['head_plus_reader']):.2f} of {os.cpu_count()} cores, "
               f"so at most x{ceiling:.2f} here; load avg "
               f"{load_start:.1f}->{loadavg():.1f}")
    path = finish("stream_scaling", fig, summary, argv, args)
    log.info("%s -> %s", summary, path)
    return fig


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
