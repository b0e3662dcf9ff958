"""How many Ray read tasks actually run at once? A timeline of the read tasks of one streamed epoch.

    python scripts/read_task_probe.py [--samples 32768] [--concurrency 2] [--shards-per-task 1] [--epochs 2]

Makes synthetic shards (``benchmarks.stream.make_shards``: 128² JPEG + stored log-mel, 512 per shard), starts a local
Ray on 127.0.0.1 with the machine's CPUs, and streams ``--epochs`` epochs through ``data.stream.ray_dataset`` +
``iter_torch_batches`` (uint8 frames) as a trainer does. The read UDF is wrapped to log when each shard's block is
started and finished (in the read task; the log is a file under a temporary folder); for the last epoch it prints one
JSON object: samples/s, the time to the first batch, the mean number of read tasks running after the first ``--skip``
seconds (Ray Data's start-up of an execution excluded), and the mean wall and CPU seconds a read task took per
block it yielded (one block per task's shards, up to Ray's target block size). See
docs/INVESTIGATIONS.md, "Ray Data ran our read tasks one at a time".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root


def _traced_udf(udf, log_path: str):
    """The read UDF ``udf`` appending {start, end, cpu} per yielded block to ``log_path``."""
    def traced(batch, **kw):
        t0, c0 = time.time(), time.process_time()
        for block in udf(batch, **kw):
            t1, c1 = time.time(), time.process_time()
            yield block
            with open(log_path, "a") as f:
                f.write(json.dumps({"start": t0, "end": t1, "cpu": c1 - c0}) + "\n")
            t0, c0 = time.time(), time.process_time()
    return traced


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python scripts/read_task_probe.py", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=32768)
    p.add_argument("--per-shard", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=2, help="stream.read_concurrency")
    p.add_argument("--shards-per-task", type=int, default=1, help="stream.shards_per_task")
    p.add_argument("--epochs", type=int, default=2, help="epochs streamed; the last one is reported")
    p.add_argument("--idle-workers", type=int, default=0,
                   help="idle workers the raylet keeps (num_workers_soft_limit; default: ours, "
                        "distributed.cluster.ray_local.idle_workers_kept; Ray's own is the CPU count)")
    p.add_argument("--skip", type=float, default=2.0, help="seconds of each epoch's start left out of 'running'")
    args = p.parse_args(argv)

    import ray

    import data.stream as stream
    from benchmarks.stream import make_shards
    from data.config import StreamConfig
    from distributed.cluster.ray_local import start_local_ray

    with tempfile.TemporaryDirectory(prefix="avdet-probe-") as tmp:
        log_path = os.path.join(tmp, "tasks.jsonl")
        manifest = make_shards(Path(tmp) / "shards", args.samples, args.per_shard, store_logmel=True)
        cfg = StreamConfig(batch_size=64, shuffle=False, shuffle_buffer=0, read_concurrency=args.concurrency,
                           shards_per_task=args.shards_per_task)
        original = stream._read_shards_udf
        stream._read_shards_udf = _traced_udf(original, log_path)   # picked up by ray_dataset at call time
        owns_ray = not ray.is_initialized()
        kept = {"_system_config": {"num_workers_soft_limit": args.idle_workers}} if args.idle_workers else {}
        start_local_ray(num_cpus=os.cpu_count() or 1, object_store_memory=2 * 2**30, **kept)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            for _ in range(args.epochs):
                if os.path.exists(log_path):
                    os.remove(log_path)
                t0, arrivals = time.time(), []
                for b in stream.iter_torch_batches(stream.ray_dataset(manifest, "train", cfg), cfg, normalise=False):
                    arrivals.append((time.time() - t0, len(b["index"])))
        finally:
            stream._read_shards_udf = original
            if owns_ray:
                ray.shutdown()
        rows = [json.loads(line) for line in open(log_path)]
    total = arrivals[-1][0]
    late = [r for r in rows if r["start"] - t0 >= args.skip]
    span = max(r["end"] for r in rows) - t0 - args.skip
    out = {"samples": sum(n for _, n in arrivals), "samples_per_s": round(sum(n for _, n in arrivals) / total),
           "first_batch_s": round(arrivals[0][0], 3), "read_concurrency": args.concurrency,
           "shards_per_task": args.shards_per_task, "idle_workers": args.idle_workers or "ours",
           "mean_tasks_running_after_skip": round(sum(r["end"] - r["start"] for r in late) / span, 2)
           if span > 0 else None,
           "block_wall_s": round(sum(r["end"] - r["start"] for r in rows) / len(rows), 3),
           "block_cpu_s": round(sum(r["cpu"] for r in rows) / len(rows), 3), "blocks": len(rows),
           "cpus": os.cpu_count()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
