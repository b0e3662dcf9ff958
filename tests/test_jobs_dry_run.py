"""``--dry-run`` on every job (issue 15): validates the config and the job's input paths, prints the resolved config
as YAML, exits 0 without starting Ray or writing anything; a bad value or a missing input exits 2 naming the key."""
from __future__ import annotations

import importlib
import os

import pytest
import yaml

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A directory with every input path a job may name (contents do not matter to a dry run); cwd is a fresh
    directory so relative default out_dirs (outputs/...) would show up in the snapshot."""
    d = tmp_path / "in"
    for sub in ("videos", "stage1", "pseudo", "shards"):
        (d / sub).mkdir(parents=True)
    for f in ("vgg.csv", "shards/manifest.json", "gt.json", "pseudo_train.json", "pseudo_test.json", "det.pt"):
        (d / f).write_text("{}")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return d


def _jobs(d):
    m = str(d / "shards" / "manifest.json")
    return {
        "ingest": ([f"videos_dir={d / 'videos'}", f"csv={d / 'vgg.csv'}", f"out_dir={d.parent / 'o'}"], "fps",
                   ["fps=inf"], "csv"),
        "stage1": ([f"manifest={m}", f"out_dir={d.parent / 'o'}"], "train",
                   ["train.lr=inf"], "manifest"),
        "pseudo_annotate": ([f"stage1_dir={d / 'stage1'}", f"manifest={m}", f"out_dir={d.parent / 'o'}"], "selflabel",
                            ["selflabel.beta=2"], "stage1_dir"),
        "train_detector": ([f"pseudo_dir={d / 'pseudo'}", f"manifest={m}", f"out_dir={d.parent / 'o'}"], "detector",
                           ["detector.fg_iou=7"], "pseudo_dir"),
        "evaluate": ([f"manifest={m}", f"gt={d / 'gt.json'}", f"pseudo_train={d / 'pseudo_train.json'}",
                      f"pseudo_test={d / 'pseudo_test.json'}", f"detector={d / 'det.pt'}", f"out_dir={d.parent / 'o'}"],
                     "m_shots", ["num_pictures=-1"], "detector"),
        "full_vggsound": ([f"workdir={d.parent / 'o'}", "dataset=vggsound", f"videos_dir={d / 'videos'}",
                           f"csv={d / 'vgg.csv'}"], "stage1", ["num_clusters=0"], "csv"),
        "make_synthetic": (["--out", str(d.parent / "o"), "num_train_per_class=1"], "classes",
                           ["fps=inf"], None),
        "seeds": ([f"workdir={d.parent / 'o'}", "dataset=vggsound", f"videos_dir={d / 'videos'}",
                   f"csv={d / 'vgg.csv'}", "--seeds", "2"], "stage1", ["seed=-1"], "csv"),
        "k_sweep": ([f"workdir={d.parent / 'o'}", "dataset=vggsound", f"videos_dir={d / 'videos'}",
                     f"csv={d / 'vgg.csv'}", "--k", "3,5"], "stage1", ["num_clusters=0"], "csv"),
        "compare": ([f"workdir={d.parent / 'o'}", "dataset=vggsound", f"videos_dir={d / 'videos'}",
                     f"csv={d / 'vgg.csv'}", "--methods", "afouras,iterative"], "stage1", ["seed=-1"], "csv"),
    }


JOBS = ["ingest", "stage1", "pseudo_annotate", "train_detector", "evaluate", "full_vggsound", "make_synthetic",
        "seeds", "k_sweep", "compare"]


@pytest.mark.parametrize("job", JOBS)
def test_dry_run_prints_the_config_and_touches_nothing(job, inputs, tmp_path, capsys):
    import ray
    argv, key, _bad, _input = _jobs(inputs)[job]
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"jobs.{job}").main([*argv, "--dry-run"])
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    assert key in yaml.safe_load(out)                       # the resolved config, as YAML
    assert _tree(tmp_path) == before                        # nothing written anywhere (out dirs, cwd)
    assert not ray.is_initialized()


def test_full_pipeline_dry_run_shows_the_derived_stage_configs(inputs, tmp_path, capsys):
    from jobs import full_vggsound
    with pytest.raises(SystemExit) as e:
        full_vggsound.main([f"workdir={tmp_path / 'w'}", "dataset=synthetic", "--dry-run"])
    assert e.value.code == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["stage1"]["manifest"] == str(tmp_path / "w" / "shards" / "manifest.json")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("job", JOBS)
def test_dry_run_with_a_bad_value_exits_2_naming_the_key(job, inputs, tmp_path, capsys):
    argv, _key, bad, _input = _jobs(inputs)[job]
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"jobs.{job}").main([*argv, *bad, "--dry-run"])
    assert e.value.code == 2
    assert bad[0].split("=")[0].split(".")[-1] in capsys.readouterr().err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("job", [j for j in JOBS if j != "make_synthetic"])
def test_dry_run_with_a_missing_input_exits_2_naming_it(job, inputs, tmp_path, capsys):
    argv, _key, _bad, input_key = _jobs(inputs)[job]
    gone = tmp_path / "gone"
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"jobs.{job}").main([*argv, f"{input_key}={gone}", "--dry-run"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{input_key}: {gone} does not exist" in err, err


def test_launch_slurm_dry_run_checks_profile_and_job(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from jobs import launch_slurm
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    profile = str(root / "clusters" / "slurm" / "local.yaml")
    with pytest.raises(SystemExit) as e:
        launch_slurm.main(["--profile", profile, "--job", str(root / "jobs" / "stage1.py"), "--dry-run"])
    assert e.value.code == 0 and yaml.safe_load(capsys.readouterr().out)["mode"] == "slurm"
    for argv, word in [(["--set", "ray_port=70000"], "ray_port"), (["--job", "jobs/nope.py"], "--job"),
                       (["--job", "nopkg.nomod:main"], "--job")]:
        job = [] if "--job" in argv else ["--job", str(root / "jobs" / "stage1.py")]
        with pytest.raises(SystemExit) as e:
            launch_slurm.main(["--profile", profile, *job, *argv, "--dry-run"])
        assert e.value.code == 2 and word in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
