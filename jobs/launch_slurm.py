"""Run a job on SLURM with a Ray cluster inside the allocation.

    python jobs/launch_slurm.py --profile clusters/slurm/gpu_4x8.yaml --job jobs/full_vggsound.py -- --config ...
    python jobs/launch_slurm.py --profile clusters/slurm/local.yaml --set mode=local --job pkg.module:main -- ...

``--profile`` is a SlurmConfig YAML (clusters/slurm/), ``--set key=value`` overrides it, ``--job`` is a script with
``main(argv)`` or ``"package.module:function"``; everything after ``--`` (or any argument not known here) goes to
the job. Prints the job's metrics as one JSON line and returns them.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from avdet.config import load_config
from distributed.slurm import SlurmConfig, launch

log = logging.getLogger("avdet.launch_slurm")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True, help="SLURM profile YAML, e.g. clusters/slurm/local.yaml")
    parser.add_argument("--job", required=True, help="script path with main(argv), or package.module:function")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile key")
    if "--" in argv:
        cut = argv.index("--")
        return parser.parse_args(argv[:cut]), argv[cut + 1:]
    args, rest = parser.parse_known_args(argv)
    return args, rest


def main(argv: list[str] | None = None) -> dict:
    """Load the profile, launch the job on SLURM (or submitit's local executor), return its metrics."""
    args, job_argv = parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg = load_config(SlurmConfig, args.profile, args.set)
    log.info("launching %s %s with %s (%d node(s) x %d task(s))", args.job, job_argv, args.profile, cfg.nodes,
             cfg.tasks_per_node)
    metrics = launch(args.job, job_argv, cfg)
    sys.stdout.write(json.dumps(metrics) + "\n")
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    main()
