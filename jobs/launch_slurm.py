"""Run a job on SLURM with a Ray cluster inside the allocation.

    python jobs/launch_slurm.py --profile clusters/slurm/gpu_4x8.yaml --job jobs/full_vggsound.py -- --config ...
    python jobs/launch_slurm.py --profile clusters/slurm/local.yaml --set mode=local --job pkg.module:main -- ...

``--profile`` is a SlurmConfig YAML (clusters/slurm/), ``--set key=value`` overrides it, ``--job`` is a script with
``main(argv)`` or ``"package.module:function"``; everything after ``--`` (or any argument not known here) goes to
the job. Prints the job's metrics as one JSON line and returns them. ``--dry-run`` checks the profile and that the job
exists, prints the profile and exits (check the job's own arguments with the job's ``--dry-run``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avdet.config import ConfigError, load_config  # noqa: E402
from distributed.cluster.slurm import SlurmConfig, launch  # noqa: E402
from jobs.cli import dry_run  # noqa: E402

log = logging.getLogger("avdet.launch_slurm")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True, help="SLURM profile YAML, e.g. clusters/slurm/local.yaml")
    parser.add_argument("--job", required=True, help="script path with main(argv), or package.module:function")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile key")
    parser.add_argument("--dry-run", action="store_true", help="check the profile and the job, print, exit")
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = _parser()
    if "--" in argv:
        cut = argv.index("--")
        return parser.parse_args(argv[:cut]), argv[cut + 1:]
    args, rest = parser.parse_known_args(argv)
    return args, rest


def main(argv: list[str] | None = None) -> dict:
    """Load the profile, launch the job on SLURM (or submitit's local executor), return its metrics."""
    args, job_argv = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = load_config(SlurmConfig, args.profile, args.set)
    except ConfigError as e:
        _parser().error(f"bad profile: {e}")
    if args.dry_run:
        dry_run(_parser(), cfg, lambda _cfg: _job_input(args.job))
    log.info("launching %s %s with %s (%d node(s) x %d task(s))", args.job, job_argv, args.profile, cfg.nodes,
             cfg.tasks_per_node)
    metrics = launch(args.job, job_argv, cfg)
    sys.stdout.write(json.dumps(metrics) + "\n")
    return metrics


def _job_input(job: str) -> dict[str, str]:
    """``--job`` as an input path: the script, or the module's file (``""`` = cannot be found)."""
    if job.endswith(".py"):
        return {"--job": job}
    try:
        spec = importlib.util.find_spec(job.split(":", 1)[0]) if ":" in job else None
    except (ImportError, ValueError):
        spec = None
    return {"--job": (spec.origin or "") if spec else ""}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    main()
