"""Detector job: pseudo-annotations + shards -> Faster R-CNN checkpoint (distributed/detector/train.py).

    python jobs/train_detector.py --config clusters/local/detector_tiny.yaml pseudo_dir=... manifest=... out_dir=...
    ray job submit --working-dir . -- python jobs/train_detector.py --config ... ray_address=auto
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distributed.detector.config import DetectorTrainConfig  # noqa: E402
from distributed.detector.train import run_detector_training  # noqa: E402
from jobs.cli import parse, setup_logging  # noqa: E402


def inputs(cfg: DetectorTrainConfig) -> dict[str, str]:
    return {"pseudo_dir": cfg.pseudo_dir, "manifest": cfg.manifest}


def main(argv: list[str]) -> dict:
    setup_logging()
    return run_detector_training(parse(DetectorTrainConfig, argv, __doc__.split("\n")[0], inputs))


if __name__ == "__main__":
    main(sys.argv[1:])
