"""Pseudo-annotation job: stage-1 model + shards -> COCO pseudo-annotations (distributed/pseudo/annotate.py).

    python jobs/pseudo_annotate.py --config clusters/local/pseudo_tiny.yaml stage1_dir=... manifest=... out_dir=...
    ray job submit --working-dir . -- python jobs/pseudo_annotate.py --config ... ray_address=auto
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distributed.pseudo.annotate import run_pseudo  # noqa: E402
from distributed.pseudo.config import PseudoConfig  # noqa: E402
from jobs.cli import parse, setup_logging  # noqa: E402


def inputs(cfg: PseudoConfig) -> dict[str, str]:
    return {"stage1_dir": cfg.stage1_dir, "manifest": cfg.manifest}


def main(argv: list[str]) -> dict:
    setup_logging()
    return run_pseudo(parse(PseudoConfig, argv, __doc__.split("\n")[0], inputs))


if __name__ == "__main__":
    main(sys.argv[1:])
