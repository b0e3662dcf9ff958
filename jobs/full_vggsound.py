"""The whole pipeline: ingest (if shards are missing) → stage 1 → pseudo-annotations → detector → evaluation.

On a Ray cluster (VGGSound):
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/full_vggsound.py --config clusters/ray/vggsound.yaml videos_dir=/data/vggsound csv=/data/vggsound.csv
On the embedded synthetic benchmark (what `make demo` runs):
    python jobs/full_vggsound.py --config clusters/local/demo.yaml
Every stage is skipped when its artifact under ``workdir`` is complete, so re-running resumes.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `python jobs/...`

from avdet.config import ConfigError  # noqa: E402
from distributed.pipeline import PipelineConfig, pipeline_inputs, resolve, run_pipeline  # noqa: E402
from jobs.cli import parse, setup_logging  # noqa: E402


def main(argv: list[str]) -> dict:
    setup_logging()
    cfg = parse(PipelineConfig, argv, __doc__, pipeline_inputs, show=resolve)
    try:
        results = run_pipeline(cfg)
    except ConfigError as e:
        sys.exit(f"full_vggsound: {e}")
    ev = results.get("evaluate", {})
    print(json.dumps({"workdir": cfg.workdir, "timings_s": results["timings_s"], "report": ev.get("report"),
                      "headline": {k: v for k, v in ev.items() if k.startswith(("map_", "test_"))}}, indent=1))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
