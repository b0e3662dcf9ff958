"""Detector job: pseudo-annotations + shards -> Faster R-CNN checkpoint (distributed/detector_train.py).

    python jobs/train_detector.py --config clusters/local/detector_tiny.yaml pseudo_dir=... manifest=... out_dir=...
    ray job submit --working-dir . -- python jobs/train_detector.py --config ... ray_address=auto
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avdet.config import load_config  # noqa: E402
from distributed.detector_train import DetectorTrainConfig, run_detector_training  # noqa: E402


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="jobs/train_detector.py", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML with DetectorTrainConfig fields")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. epochs=2 detector.min_size=128")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_detector_training(load_config(DetectorTrainConfig, args.config, args.overrides))


if __name__ == "__main__":
    main(sys.argv[1:])
