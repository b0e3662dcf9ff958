"""End-to-end wall time per pipeline stage, from the ``pipeline.json`` that jobs/full_vggsound.py writes.

    python -m benchmarks.end_to_end --pipeline outputs/demo/pipeline.json   # report a finished run
    python -m benchmarks.end_to_end --run                                   # run clusters/local/pipeline_tiny.yaml
                                                                            # into a temp workdir, then report it
Without --pipeline or --run it reports the newest ``outputs/*/pipeline.json``, or records that none exists.

Figures: seconds per stage (key ``timings_s``), each stage's share of the stage total, and with --run the wall
time of the whole command, so time outside the stages (interpreter and Ray start/stop) = wall − Σ stages.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import BENCH_DIR, add_common_args, finish, loadavg

log = logging.getLogger("benchmarks.end_to_end")

ROOT = BENCH_DIR.parent
TINY_CONFIG = ROOT / "clusters" / "local" / "pipeline_tiny.yaml"


def stage_figures(pipeline_json: str | Path) -> dict:
    """{"timings_s": {stage: s}, "total_stages_s", "share_pct": {stage: %}} from a pipeline.json."""
    doc = json.loads(Path(pipeline_json).read_text())
    timings = {k: float(v) for k, v in doc.get("timings_s", {}).items()}
    if not timings:
        raise ValueError(f"{pipeline_json}: no 'timings_s' (was it written by jobs/full_vggsound.py?)")
    total = sum(timings.values())
    return {"pipeline_json": str(pipeline_json), "timings_s": timings, "total_stages_s": total,
            "share_pct": {k: 100 * v / total if total else 0.0 for k, v in timings.items()}}


def run_tiny(workdir: Path, config: Path = TINY_CONFIG, timeout_s: float = 1800) -> tuple[Path, float]:
    """Run jobs/full_vggsound.py on ``config`` into ``workdir`` as a subprocess; (pipeline.json, wall seconds)."""
    cmd = [sys.executable, str(ROOT / "jobs" / "full_vggsound.py"), "--config", str(config), f"workdir={workdir}"]
    log.info("running %s", " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"tiny pipeline failed (exit {proc.returncode}); last output:\n{proc.stderr[-3000:]}")
    return workdir / "pipeline.json", wall


def newest_pipeline_json() -> Path | None:
    """The most recently written outputs/*/pipeline.json, if any."""
    found = sorted((ROOT / "outputs").glob("*/pipeline.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.end_to_end", description=__doc__.split("\n")[0])
    p.add_argument("--pipeline", help="pipeline.json of a finished run")
    p.add_argument("--run", action="store_true", help="run the tiny pipeline into a temp workdir first")
    add_common_args(p, "end_to_end")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = list(argv or [])
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    load0 = loadavg()
    with tempfile.TemporaryDirectory(prefix="avdet-e2e-") as tmp:
        wall = None
        if args.run:
            path, wall = run_tiny(Path(tmp) / "tiny")
        else:
            path = Path(args.pipeline) if args.pipeline else newest_pipeline_json()
        if path is None:
            log.warning("end_to_end: no pipeline.json given or under outputs/; pass --pipeline or --run")
            return {"skipped": "no pipeline.json"}
        fig = stage_figures(path)
    if wall is not None:
        fig.update({"wall_s": wall, "outside_stages_s": wall - fig["total_stages_s"]})
    fig["loadavg_1m_start_end"] = [load0, loadavg()]
    stages = ", ".join(f"{k} {v:.1f} s ({fig['share_pct'][k]:.0f}%)" for k, v in fig["timings_s"].items())
    summary = (f"{'tiny pipeline (--run)' if args.run else fig['pipeline_json']}: {stages}; stages total "
               f"{fig['total_stages_s']:.1f} s" + (f", wall {wall:.1f} s" if wall is not None else "")
               + f"; load avg {load0:.1f}->{fig['loadavg_1m_start_end'][1]:.1f}")
    out = finish("end_to_end", fig, summary, argv, args)
    log.info("%s -> %s", summary, out)
    return fig


if __name__ == "__main__":
    main(sys.argv[1:])
