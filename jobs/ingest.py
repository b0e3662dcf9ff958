"""Ingest job: videos + VGGSound CSV -> shards + manifest + ingest_report.json (data/ingest.py).

    python jobs/ingest.py --config clusters/local/ingest_tiny.yaml out_dir=/tmp/shards fps=2
    ray job submit --working-dir . -- python jobs/ingest.py --config ... ray_address=auto
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avdet.config import load_config, save_config  # noqa: E402
from data.config import IngestConfig  # noqa: E402
from data.ingest import ingest  # noqa: E402


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="jobs/ingest.py", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML with IngestConfig fields")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. fps=2 audio.window_s=1.0")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(IngestConfig, args.config, args.overrides)
    report = ingest(cfg)
    save_config(cfg, Path(cfg.out_dir) / "ingest_config.yaml")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
