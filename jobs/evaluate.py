"""Evaluation job: stage artifacts -> results.json, tables.md, report.html (distributed/evaluation/evaluate.py).

    python jobs/evaluate.py --config clusters/local/eval.yaml          # a finished `make demo` (outputs/demo)
    python jobs/evaluate.py manifest=... gt=.../gt_test.json pseudo_train=... pseudo_test=... detector=... use_ray=true
    python jobs/evaluate.py images_dir=openimages/test gt=openimages_gt.json manifest=... pseudo_train=... \
        detector=... class_names=data/classlists/vggsound_instruments_39.txt dataset=OpenImages

With ``images_dir`` the test set is a folder of still images with COCO boxes (``file_name`` relative to it): the
detector runs on them and classes are matched by name (distributed/evaluation/images.py); no shards or test self-labels.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distributed.evaluation.evaluate import EvalConfig, run_evaluation  # noqa: E402
from jobs.cli import parse, setup_logging  # noqa: E402

REQUIRED = ("manifest", "gt", "pseudo_train", "pseudo_test", "detector")
OPTIONAL = ("heatmaps", "detector_history", "stage1_done")        # "" = not used


IMAGE_SET = ("images_dir", "gt", "manifest", "pseudo_train", "detector")


def inputs(cfg: EvalConfig) -> dict[str, str]:
    if cfg.images_dir:
        return {**{k: getattr(cfg, k) for k in IMAGE_SET}, **({"class_names": cfg.class_names} if cfg.class_names
                                                                else {})}
    return {**{k: getattr(cfg, k) for k in REQUIRED}, **{k: getattr(cfg, k) for k in OPTIONAL if getattr(cfg, k)}}


def main(argv: list[str]) -> dict:
    """Parse ``--config`` + dotted overrides, run the evaluation, return its ``done.json`` summary."""
    setup_logging()
    return run_evaluation(parse(EvalConfig, argv, __doc__.split("\n")[0], inputs))


if __name__ == "__main__":
    main(sys.argv[1:])
