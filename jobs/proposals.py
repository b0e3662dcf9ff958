"""Region proposals for every frame of a shard set, stored beside the shards (distributed/proposals/job.py).

    python jobs/proposals.py manifest=outputs/demo/shards/manifest.json [settings.mode=quality settings.max_boxes=100]
    ray job submit --working-dir . -- python jobs/proposals.py manifest=... ray_address=auto

Writes ``<shards>/proposals/<method>-<mode>-<max_boxes>/``; a stream joins it with ``stream.proposals=<that name>``.
Re-running computes only the shards that are missing or were re-ingested.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distributed.proposals.job import ProposalsConfig, run_proposals  # noqa: E402
from jobs.cli import parse, setup_logging  # noqa: E402


def inputs(cfg: ProposalsConfig) -> dict[str, str]:
    out = {"manifest": cfg.manifest}
    if cfg.settings.method == "edge_boxes":
        out["settings.edge_model"] = cfg.settings.edge_model
    return out


def main(argv: list[str]) -> dict:
    setup_logging()
    result = run_proposals(parse(ProposalsConfig, argv, __doc__.split("\n")[0], inputs))
    print(f"proposals: {result['computed']} shards computed, {result['frames']} frames in {result['seconds']:.1f} s "
          f"({result['frames_per_s']:.1f} frames/s) -> {result['dir']}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
