"""The whole pipeline on a tiny synthetic set: submitted with `ray job submit` to a real Ray head on 127.0.0.1 (the
way users run it on a cluster), then re-run in-process, where every stage must be skipped as complete."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from distributed.cluster import raycluster
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = "clusters/local/pipeline_tiny.yaml"


def _artifacts(workdir: Path) -> list[Path]:
    return [workdir / p for p in ("synthetic/done.json", "shards/manifest.json", "stage1/done.json",
                                  "stage1/model.pt", "pseudo/done.json", "pseudo/pseudo_train.json",
                                  "detector/detector.pt", "report/results.json", "report/report.html",
                                  "report/tables.md", "pipeline.json")]


def test_pipeline_via_ray_job_submit_then_resume_skips(tmp_path):
    workdir = tmp_path / "run"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))
    head = raycluster.start_head(ray_tmp, num_cpus=4)
    try:
        env = {**os.environ, **head.env()}
        cli = Path(sys.executable).parent / "ray"
        done = subprocess.run(
            [str(cli), "job", "submit", "--address", head.dashboard_url, "--working-dir", str(ROOT), "--",
             "python", "jobs/full_vggsound.py", "--config", TINY, f"workdir={workdir}", "ray_address=auto"],
            env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"ray job submit failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
        # a run you can read: a line per stage and the summary; the workers' chatter stays in the log files
        console = done.stdout + done.stderr
        assert "Done in" in console and "detector mAP@0.5 (Hungarian)" in console, console[-3000:]
        assert "Reporting training result" not in console and "Execution plan" not in console, console[-3000:]
        ours = [line for line in console.splitlines() if line.strip()
                and not re.search(r"\d+%\s*(\||\[)", line)                        # progress-bar refreshes
                and not re.search(r"\t(INFO|SUCC|WARNING) (cli|sdk|packaging|dashboard_sdk|working_dir)\.py", line)]
        assert len(ours) <= 40, "\n".join(ours)                        # lines of ours, not `ray job submit`s
    finally:
        head.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    missing = [str(p) for p in _artifacts(workdir) if not p.is_file()]
    assert not missing, f"artifacts missing after the submitted pipeline: {missing}"
    results = json.loads((workdir / "report" / "results.json").read_text())
    assert {"hungarian", "argmax"} <= set(results["detection"]), results["detection"].keys()
    assert 0.0 <= results["detection"]["hungarian"]["map_50"] <= 1.0
    timings = json.loads((workdir / "pipeline.json").read_text())["timings_s"]
    assert set(timings) == {"synthetic", "ingest", "stage1", "pseudo", "detector", "evaluate"}

    # a second run (here in-process, on a local Ray) finds every artifact complete and recomputes nothing
    from jobs.full_vggsound import main
    before = {p: p.stat().st_mtime_ns for p in _artifacts(workdir) if p.name != "pipeline.json"}
    again = main(["--config", str(ROOT / TINY), f"workdir={workdir}", "ray_address=local"])
    assert {p: p.stat().st_mtime_ns for p in before} == before
    for stage in ("stage1", "pseudo", "detector"):       # each returned its done.json: skipped, not recomputed
        assert again[stage] == json.loads((workdir / stage / "done.json").read_text()), stage


def test_without_vggsound_paths_the_job_says_what_it_needs(tmp_path, capsys):
    from jobs.full_vggsound import main
    with pytest.raises(SystemExit) as e:
        main([f"workdir={tmp_path / 'w'}", "ray_address=local"])
    assert "videos_dir" in str(e.value) and "make demo" in str(e.value)
    assert not (tmp_path / "w").exists()


def test_proposals_method_runs_the_pipeline_and_its_self_boxes_are_proposals(tmp_path):
    """stage1.method=proposals: the pipeline computes the proposal set beside the shards before stage 1; every
    pseudo-annotation box is one of its frame's stored proposals (seed 001's best proposal, not a map's box); the
    off-screen clips of the synthetic set (heard, not seen) give the evaluation its on/off-screen table."""
    import numpy as np

    from data.proposals import read_sidecar
    from jobs.full_vggsound import main
    workdir = tmp_path / "run"
    out = main(["--config", str(ROOT / TINY), f"workdir={workdir}", "ray_address=local", "stage1.method=proposals",
                "stage1.proposals.top_k=5", "stage1.proposals.set=selective_search-fast-20",
                "synthetic.num_offscreen_per_class=1", "detector.epochs=1"])
    assert out["proposals"]["computed"] >= 1 and out["proposals"]["frames"] > 0
    results = json.loads((workdir / "report" / "results.json").read_text())
    onscreen = results["onscreen"]
    assert onscreen["on_frames"] > 0 and onscreen["off_frames"] > 0
    assert onscreen["frames"] == onscreen["on_frames"] + onscreen["off_frames"]
    assert "On/off-screen sound recognition" in (workdir / "report" / "tables.md").read_text()
    sets = workdir / "shards" / "proposals" / "selective_search-fast-20"
    doc = json.loads((workdir / "pseudo" / "pseudo_train.json").read_text())
    files = {im["id"]: im["file_name"] for im in doc["images"]}
    assert doc["annotations"]
    for ann in doc["annotations"]:
        shard, key = files[ann["image_id"]].split("#")
        stored = read_sidecar(sets / f"{shard}.npz")
        row = stored["keys"].tolist().index(key)
        x, y, w, h = ann["bbox"]
        boxes = stored["boxes"][row, :stored["count"][row]]
        assert np.abs(boxes - np.array([x, y, x + w, y + h], np.float32)).max(1).min() < 1e-3, (ann, boxes)

    # the location-map-only mode: the same stage-1 model, self-boxes from the map (not all of them proposals)
    main(["--config", str(ROOT / TINY), f"workdir={workdir}", "ray_address=local", "stage1.method=proposals",
          "stage1.proposals.top_k=5", "stage1.proposals.set=selective_search-fast-20",
          "synthetic.num_offscreen_per_class=1", "detector.epochs=1", "pseudo.self_box=map", "stages=[pseudo]"])
    mapped = json.loads((workdir / "pseudo" / "pseudo_train.json").read_text())["annotations"]
    assert [a["bbox"] for a in mapped] != [a["bbox"] for a in doc["annotations"]]
