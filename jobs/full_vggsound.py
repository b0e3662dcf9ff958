"""The whole pipeline: ingest (if shards are missing) → stage 1 → pseudo-annotations → detector → evaluation.

On a Ray cluster (VGGSound):
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/full_vggsound.py --config clusters/ray/vggsound.yaml \\
            videos_dir=/data/vggsound csv=/data/vggsound.csv
On the embedded synthetic benchmark (what `make demo` runs):
    python jobs/full_vggsound.py --config clusters/local/demo.yaml
Every stage is skipped when its artifact under ``workdir`` is complete, so re-running resumes.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `python jobs/...`

from avdet.config import ConfigError  # noqa: E402
from distributed.pipeline import PipelineConfig, pipeline_inputs, resolve, run_pipeline  # noqa: E402
from jobs.cli import add_verbose, parse_args  # noqa: E402
from jobs.console import Console  # noqa: E402


def main(argv: list[str]) -> dict:
    cfg, args = parse_args(PipelineConfig, argv, __doc__, pipeline_inputs, show=resolve, add_arguments=add_verbose)
    try:
        resolve(cfg)                    # a bad config is reported before anything is written
    except ConfigError as e:
        sys.exit(f"full_vggsound: {e}")
    with Console(cfg.workdir, args.verbose) as console:
        try:
            results = run_pipeline(cfg, console)
        except ConfigError as e:
            sys.exit(f"full_vggsound: {e}")
        console.summary(results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
