"""Ingest job: videos + VGGSound CSV -> shards + manifest + ingest_report.json (data/ingest.py).

    python jobs/ingest.py --config clusters/local/ingest_tiny.yaml out_dir=/tmp/shards fps=2
    ray job submit --working-dir . -- python jobs/ingest.py --config ... ray_address=auto
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avdet.config import save_config  # noqa: E402
from data.config import IngestConfig  # noqa: E402
from data.ingest import ingest  # noqa: E402
from distributed.cluster.ray_local import connect_ray  # noqa: E402
from jobs.cli import parse, setup_logging  # noqa: E402


def inputs(cfg: IngestConfig) -> dict[str, str]:
    return {"videos_dir": cfg.videos_dir, "csv": cfg.csv}


def main(argv: list[str]) -> dict:
    setup_logging()
    cfg = parse(IngestConfig, argv, __doc__.split("\n")[0], inputs)
    if cfg.use_ray:
        connect_ray(cfg.ray_address, num_cpus=max(cfg.concurrency, os.cpu_count() or 1))
    report = ingest(cfg)
    save_config(cfg, Path(cfg.out_dir) / "ingest_config.yaml")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
