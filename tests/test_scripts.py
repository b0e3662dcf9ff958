"""The diagnosis scripts under scripts/ (cluster_probe runs in test_stage1 on a trained model)."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oracle_pseudo_takes_each_frames_first_sounding_box(tmp_path):
    gt = {"images": [{"id": 0, "video_id": "a", "timestamp": 0.0}, {"id": 1, "video_id": "a", "timestamp": 0.5},
                     {"id": 2, "video_id": "b", "timestamp": 0.0}],
          "annotations": [{"image_id": 0, "bbox": [1, 1, 5, 5], "category_id": 2, "area": 25, "sounding": False},
                          {"image_id": 0, "bbox": [2, 2, 4, 4], "category_id": 1, "area": 16, "sounding": True},
                          {"image_id": 1, "bbox": [3, 3, 2, 2], "category_id": 0, "area": 4, "sounding": True},
                          {"image_id": 2, "bbox": [0, 0, 9, 9], "category_id": 2, "area": 81, "sounding": False}],
          "categories": [{"id": 0, "name": "violin"}, {"id": 1, "name": "drum"}, {"id": 2, "name": "piano"}]}
    pseudo = {"images": [{"id": 10, "video_id": "a", "timestamp": 0.0}, {"id": 11, "video_id": "a", "timestamp": 0.5},
                         {"id": 12, "video_id": "b", "timestamp": 0.0}]}
    run = tmp_path / "run"
    (run / "pseudo").mkdir(parents=True)
    (run / "synthetic").mkdir()
    (run / "pseudo" / "pseudo_train.json").write_text(json.dumps(pseudo))
    (run / "synthetic" / "gt_train.json").write_text(json.dumps(gt))
    _script("oracle_pseudo").main([str(run), str(tmp_path / "oracle")])
    doc = json.loads((tmp_path / "oracle" / "pseudo_train.json").read_text())
    got = {a["image_id"]: (a["bbox"], a["category_id"]) for a in doc["annotations"]}
    assert got == {10: ([2, 2, 4, 4], 2), 11: ([3, 3, 2, 2], 1)}        # frame b has no sounding object
    assert [c["id"] for c in doc["categories"]] == [1, 2, 3] and doc["info"]["annotated"] == 2

    from data.pseudo_coco import training_rows            # the detector job reads it
    table, k = training_rows(tmp_path / "oracle" / "pseudo_train.json")
    assert k == 3 and table["index"].tolist() == [10, 11] and table["box"][0].tolist() == [2, 2, 6, 6]


def test_selfbox_probe_known_answers():
    """Six 8x8 heatmaps on 64x64 frames (8 px cells), one sounding box each. Frame 0 peaks on its sounding object (a
    3x3-cell blob exactly on the box, its maximum in the middle); frame 1 on a silent object; frame 2 on the
    background; frames 3-5 peak inside the object but the box misses it: one hot cell in a 64-px object (too
    small), a 6x6-cell plateau around an 8-px object (too large), the blob of frame 0 shifted by a cell (offset)."""
    import numpy as np
    probe = _script("selfbox_probe").probe
    heat = np.zeros((6, 8, 8), np.float32)
    heat[0, 2:5, 2:5] = 1.8                                   # pixels [16, 40) x [16, 40)
    heat[0, 3, 3] = 2.0
    heat[1, 6, 6] = 1.0                                       # pixel centre (52, 52): the silent box
    heat[2, 0, 7] = 1.0                                       # top-right corner: nothing there
    heat[3, 3, 3] = 1.0
    heat[4, 1:7, 1:7] = 1.0
    heat[4, 3, 3] = 1.2                                       # pixel centre (28, 28)
    heat[5, 3:6, 3:6] = 1.8                                   # pixels [24, 48): 24 px, like its object
    heat[5, 4, 4] = 2.0                                       # pixel centre (36, 36), inside the object
    sounding = [np.array([[16.0, 16, 40, 40]]), np.array([[0.0, 0, 16, 16]]), np.array([[20.0, 20, 40, 40]]),
                np.array([[0.0, 0, 64, 64]]), np.array([[24.0, 24, 32, 32]]), np.array([[16.0, 16, 40, 40]])]
    silent = [np.zeros((0, 4)), np.array([[48.0, 48, 60, 60]])] + [np.zeros((0, 4))] * 4
    res = probe(heat, sounding, silent, (64, 64), betas=[0.5], beta=0.5,
                scores={"good": np.arange(6, 0, -1.0), "bad": np.arange(6.0)})
    sixth = lambda k: round(k / 6, 4)                         # noqa: E731
    assert res["frames"] == 6
    assert res["pointing"] == {"sounding": sixth(4), "silent_only": sixth(1), "background": sixth(1)}
    assert res["by_beta"]["0.5"]["iou50"] == sixth(1)         # only frame 0's box finds its object
    assert res["failures"] == {"beta": 0.5, "all": sixth(5), "peak_off_object": sixth(2), "too_small": sixth(1),
                               "too_large": sixth(1), "offset": sixth(1)}
    assert res["true_size_at_peak"] == sixth(3)               # frames 0, 3 and 4: their peaks are near the centre
    assert res["ranking"]["good"] == [round(1 / 2, 4), round(1 / 3, 4), round(1 / 4, 4), sixth(1)]  # top 2, 3, 4, 6
    assert res["ranking"]["bad"] == [0.0, 0.0, 0.0, sixth(1)]


def test_selfbox_probe_scores_a_proposal_bag_and_its_self_box():
    """Frame 0's bag holds its object (second proposal) but the self-box is the other one; frame 1's only match
    is a padded (non-existing) slot, its self-box half-overlaps (IoU 1/3)."""
    import numpy as np
    proposal_probe = _script("selfbox_probe").proposal_probe
    bag = np.array([[[0, 0, 8, 8], [10, 10, 20, 20]], [[0, 0, 10, 20], [30, 30, 40, 40]]], np.float32)
    exists = np.array([[True, True], [True, False]])
    self_box = np.array([[0, 0, 8, 8], [0, 0, 10, 20]], np.float32)
    sounding = [np.array([[10.0, 10, 20, 20]]), np.array([[30.0, 30, 40, 40], [0, 10, 10, 30]])]
    res = proposal_probe(bag, exists, self_box, sounding)
    assert res == {"bag_recall": 0.5, "self_box_iou50": 0.0, "self_box_mean_iou": round((0 + 1 / 3) / 2, 4),
                   "bag_size": 1.5}


def test_selfbox_probe_averages_within_each_clip_in_time_order():
    import numpy as np
    avg = _script("selfbox_probe").average_over_clips
    heat = np.array([1.0, 10.0, 2.0, 20.0, 4.0])[:, None, None] * np.ones((5, 2, 2))
    vid, ts = ["a", "b", "a", "b", "a"], np.array([0.0, 0.0, 1.0, 0.5, 0.5])   # clip a in time: rows 0, 4, 2
    whole = avg(heat, vid, ts, None)[:, 0, 0]
    assert np.allclose(whole, [7 / 3, 15, 7 / 3, 15, 7 / 3])
    near = avg(heat, vid, ts, 1)[:, 0, 0]                   # a: t0 -> (1+4)/2, t0.5 -> (1+4+2)/3, t1 -> (4+2)/2
    assert np.allclose(near, [2.5, 15, 3.0, 15, 7 / 3])


def test_selfbox_probe_refuses_what_it_cannot_score():
    import numpy as np
    import pytest
    probe = _script("selfbox_probe").probe
    with pytest.raises(ValueError, match="no frame with a sounding"):
        probe(np.zeros((0, 8, 8)), [], [], (64, 64), [0.5], 0.5)
    with pytest.raises(ValueError, match="2 heatmaps need 2 lists"):
        probe(np.zeros((2, 8, 8)), [np.array([[0.0, 0, 8, 8]])], [np.zeros((0, 4))] * 2, (64, 64), [0.5], 0.5)
    with pytest.raises(ValueError, match="each non-empty"):
        probe(np.zeros((1, 8, 8)), [np.zeros((0, 4))], [np.zeros((0, 4))], (64, 64), [0.5], 0.5)


def _setup_sandbox(tmp_path, pip_body: str) -> tuple[Path, dict]:
    """A copy of scripts/setup.sh in a fake project whose .venv has a scripted pip and a python that imports fine;
    ``dpkg`` is shimmed to say every Debian package is installed (so nothing touches apt)."""
    import os
    import shutil
    proj = tmp_path / "proj"
    (proj / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", proj / "scripts" / "setup.sh")
    (proj / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    shims, vbin = tmp_path / "shims", proj / ".venv" / "bin"
    shims.mkdir()
    vbin.mkdir(parents=True)
    for path, body in [(shims / "dpkg", "exit 0"), (vbin / "pip", pip_body), (vbin / "python", "exit 0")]:
        path.write_text(f"#!/usr/bin/env bash\n{body}\n")
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}"}
    return proj, env


def test_cluster_probe_restart_sweep_finds_the_blobs_with_more_restarts():
    """Nine separated Gaussian blobs: one random k-means start often merges two and splits another (accuracy < 0.9);
    30 restarts do better on average and reach the blobs' own partition's objective."""
    import numpy as np

    rng = np.random.default_rng(0)
    k = 9
    true = np.repeat(np.arange(k), 200)
    x = (rng.normal(size=(k, 16)) * 3)[true] + rng.normal(size=(true.size, 16)) * 0.5
    runs = _script("cluster_probe").restart_sweep(x, true, k, [1, 30], tries=10)
    assert runs["1"]["below_0.9"] >= 3 and runs["30"]["acc_mean"] > runs["1"]["acc_mean"] + 0.1
    own = sum(float(((x[true == c] - x[true == c].mean(0)) ** 2).sum()) for c in range(k))
    assert runs["30"]["objective_min"] <= own * 1.0001 and runs["1"]["objective_max"] > 2 * own


def test_setup_fails_loudly_when_pip_fails(tmp_path):
    """Before the fix `pip ... | grep -v ... || true` swallowed pip's status and the stamp was written anyway."""
    import subprocess
    proj, env = _setup_sandbox(tmp_path, 'echo "ERROR: No matching distribution found for torch" >&2; exit 3')
    r = subprocess.run(["bash", str(proj / "scripts" / "setup.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "No matching distribution" in r.stdout + r.stderr           # pip's own message still shows
    assert "pip install -e '.[test]' failed (exit 3)" in r.stderr
    assert not list((proj / ".venv").glob(".installed-*"))             # no stamp: the next run retries


def test_setup_succeeds_when_pip_prints_only_filtered_warnings(tmp_path):
    """grep exits 1 when it filters every line; that must not fail the set-up."""
    import subprocess
    proj, env = _setup_sandbox(tmp_path, 'echo "WARNING: Location x is ignored"; exit 0')
    r = subprocess.run(["bash", str(proj / "scripts" / "setup.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING: Location" not in r.stdout
    assert len(list((proj / ".venv").glob(".installed-*"))) == 1


def test_read_task_probe_times_every_block_of_an_epoch(capsys):
    """The probe streams the whole epoch and logs one entry per block a read task yielded: one per shard, or one per
    two shards when a task reads two (their blocks joined in the task)."""
    probe = _script("read_task_probe")
    one = probe.main(["--samples", "1024", "--per-shard", "128", "--epochs", "1", "--skip", "0"])
    two = probe.main(["--samples", "1024", "--per-shard", "128", "--epochs", "1", "--skip", "0",
                      "--shards-per-task", "2"])
    assert one["samples"] == two["samples"] == 1024
    assert one["blocks"] == 8 and two["blocks"] == 4
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == two


def test_detector_budget_probe_builds_each_variant_it_is_given(tmp_path, capsys):
    """Each ``--variant`` is the DetectorConfig it names (lists as a/b/c), measured; a bad override is refused."""
    import pytest
    probe = _script("detector_budget_probe")
    doc = probe.main(["--size", "64", "--batch-size", "1", "--rounds", "1", "--steps", "1", "--threads", "1",
                      "--variant", "l234:backbone=resnet18_fpn,box_batch_size_per_image=32,returned_layers=2/3/4",
                      "--out", str(tmp_path / "p.json")])
    (row,) = doc["rows"]
    assert row["variant"] == "l234" and row["config"]["returned_layers"] == [2, 3, 4]
    assert row["config"]["box_batch_size_per_image"] == 32 and row["train_images_per_s"] > 0
    assert json.loads((tmp_path / "p.json").read_text())["rows"][0]["variant"] == "l234"
    assert "| l234 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="bad override 'box_batch=3'"):
        probe.main(["--variant", "x:box_batch=3"])
    with pytest.raises(SystemExit, match=r"returned_layers='two' .* is not a list \(write lists a/b/c\)"):
        probe.main(["--variant", "x:backbone=resnet18_fpn,returned_layers=two"])
    with pytest.raises(ValueError, match="returned_layers"):       # DetectorConfig.check: resnet18_fpn only
        probe.main(["--variant", "x:backbone=mobilenet_v3_fpn,returned_layers=2/3/4"])
