"""Pseudo-annotation job: stage-1 model + shards -> COCO pseudo-annotations (distributed/pseudo.py).

    python jobs/pseudo_annotate.py --config clusters/local/pseudo_tiny.yaml stage1_dir=... manifest=... out_dir=...
    ray job submit --working-dir . -- python jobs/pseudo_annotate.py --config ... ray_address=auto
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avdet.config import load_config  # noqa: E402
from distributed.pseudo import run_pseudo  # noqa: E402
from distributed.pseudo_config import PseudoConfig  # noqa: E402


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="jobs/pseudo_annotate.py", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML with PseudoConfig fields")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. selflabel.beta=0.6 num_actors=2")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_pseudo(load_config(PseudoConfig, args.config, args.overrides))


if __name__ == "__main__":
    main(sys.argv[1:])
