"""Lineage (data.artifacts + distributed.pipeline): a stage's ``done.json`` records the config it ran with and the
sha256 of its inputs; a pipeline re-run whose config or inputs differ moves the stage's old output aside and re-runs
it and every stage after it — never the ones before. The stages here are fakes (no Ray): each writes one artifact
that depends on its config and inputs, through the real ``write_done``/``read_done``."""
from __future__ import annotations

import json
import shutil
import logging
from pathlib import Path

import pytest

from avdet.config import load_config
from data.artifacts import DONE, LINEAGE, lineage_changes, make_lineage, read_done, write_done
from distributed import pipeline

CALLS: list[str] = []


def _fake_stage(name: str, out_dir: str, payload: dict) -> dict:
    out = Path(out_dir)
    done = read_done(out, name)
    if done is not None:
        return done
    CALLS.append(name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "artifact.json").write_text(json.dumps(payload, sort_keys=True, default=str))
    return write_done(out, {"stage": name, **payload}, [out / "artifact.json"])


@pytest.fixture
def fake_stages(monkeypatch):
    import data.ingest
    import data.synthetic.generate
    import distributed.detector.train
    import distributed.evaluation.evaluate
    import distributed.pseudo.annotate
    import distributed.stage1.job
    from data.shards import write_manifest

    def generate(cfg, root):
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        (root / "gt_test.json").write_text("{}")
        (root / "vggsound.csv").write_text("")
        return {}

    def ingest(cfg):
        CALLS.append("ingest")
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        write_manifest(cfg.out_dir, [], ["a", "b"], {"frame_size": cfg.frame_size, "fps": cfg.fps})
        (Path(cfg.out_dir) / "ingest_report.json").write_text("{}")
        return {}

    def upstream(*paths):
        return [Path(p).read_text() if Path(p).is_file() else None for p in paths]

    monkeypatch.setattr(data.synthetic.generate, "generate", generate)
    monkeypatch.setattr(data.ingest, "ingest", ingest)
    monkeypatch.setattr(distributed.stage1.job, "run_stage1", lambda c: _fake_stage(
        "stage1", c.out_dir, {"epochs": c.train.epochs, "manifest": upstream(c.manifest)}))
    monkeypatch.setattr(distributed.pseudo.annotate, "run_pseudo", lambda c: _fake_stage(
        "pseudo", c.out_dir, {"beta": c.selflabel.beta, "up": upstream(Path(c.stage1_dir) / DONE)}))
    monkeypatch.setattr(distributed.detector.train, "run_detector_training", lambda c: _fake_stage(
        "detector", c.out_dir, {"epochs": c.epochs, "up": upstream(Path(c.pseudo_dir) / DONE)}))
    monkeypatch.setattr(distributed.evaluation.evaluate, "run_evaluation", lambda c: _fake_stage(
        "evaluate", c.out_dir, {"up": upstream(c.stage1_done, c.pseudo_train, c.detector)}))
    CALLS.clear()
    return CALLS


def _run(work: Path, *overrides: str) -> list[str]:
    CALLS.clear()
    cfg = load_config(pipeline.PipelineConfig, None, [f"workdir={work}", "dataset=synthetic", "ray_address=auto",
                                                      "num_clusters=3", "ingest.use_ray=false",   # fakes: no Ray
                                                      *overrides])
    pipeline.run_pipeline(cfg)
    return list(CALLS)


def test_changed_stage1_config_reruns_stage1_and_everything_after_it(fake_stages, tmp_path, caplog):
    work = tmp_path / "run"
    assert _run(work, "stage1.train.epochs=2") == ["ingest", "stage1", "pseudo", "detector", "evaluate"]
    record = json.loads((work / "stage1" / DONE).read_text())
    assert record["lineage"]["config"]["train.epochs"] == 2
    assert set(record["lineage"]["inputs"]) == {"shards/manifest.json"} and record["lineage"]["config_sha256"]
    assert set(json.loads((work / "report" / DONE).read_text())["lineage"]["inputs"]) == {
        "shards/manifest.json", "gt", "stage1/done.json", "pseudo/done.json", "detector/done.json", "ksweep.json",
        "weak_sup/results.json", "gt_test_offscreen.json"}
    assert _run(work, "stage1.train.epochs=2") == []                          # same config, same inputs: all skipped
    assert _run(work, "stage1.train.epochs=2", "stage1.train.report_every=7") == []   # a key that changes nothing
    with caplog.at_level(logging.WARNING, logger="distributed.pipeline"):
        assert _run(work, "stage1.train.epochs=3") == ["stage1", "pseudo", "detector", "evaluate"]
    assert "stage1: config changed (train.epochs 2 -> 3); re-running stage1, pseudo, detector, evaluate" in caplog.text
    assert (work / "stage1.stale-1" / DONE).is_file() and (work / "pseudo.stale-1").is_dir()
    assert json.loads((work / "stage1" / "artifact.json").read_text())["epochs"] == 3
    assert _run(work, "stage1.train.epochs=3", "pseudo.selflabel.beta=0.3") == ["pseudo", "detector", "evaluate"]
    assert _run(work, "stage1.train.epochs=3", "pseudo.selflabel.beta=0.3", "detector.epochs=2") == \
        ["detector", "evaluate"]


def test_changed_shard_manifest_reruns_every_stage_that_reads_it(fake_stages, tmp_path, caplog):
    work = tmp_path / "run"
    _run(work)
    manifest = work / "shards" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["classes"] = ["a", "c"]                                               # re-ingested with other data
    manifest.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="distributed.pipeline"):
        assert _run(work) == ["stage1", "pseudo", "detector", "evaluate"]
    assert "stage1: inputs changed: shards/manifest.json" in caplog.text


def test_changed_ingest_config_reingests_and_reruns_every_later_stage(fake_stages, tmp_path, caplog):
    work = tmp_path / "run"
    _run(work)
    assert _run(work, "ingest.concurrency=1") == []                           # how it runs changes nothing
    with caplog.at_level(logging.WARNING, logger="distributed.pipeline"):
        assert _run(work, "ingest.fps=2.0") == ["ingest", "stage1", "pseudo", "detector", "evaluate"]
    assert "ingest: config changed (fps 1.0 -> 2.0)" in caplog.text and (work / "shards.stale-1").is_dir()


def test_a_moved_workdir_reruns_nothing(fake_stages, tmp_path):
    """Paths are not results: the lineage records what the inputs hold (sha256s), not where they are, for every stage
    (evaluation's Table-4 and weak-sup. inputs included: they used to enter its config as paths)."""
    assert _run(tmp_path / "run", "stage1.train.epochs=2") == ["ingest", "stage1", "pseudo", "detector", "evaluate"]
    shutil.move(tmp_path / "run", tmp_path / "moved")
    assert _run(tmp_path / "moved", "stage1.train.epochs=2") == []


def test_half_finished_stage_of_another_config_is_moved_aside_not_resumed(fake_stages, tmp_path, caplog):
    """Stage 1 started with epochs=2 and was killed (lineage.json, Ray Train checkpoints, labels; no done.json);
    the re-run with epochs=3 must not resume from those checkpoints: the directory is moved aside, whole."""
    work = tmp_path / "run"
    _run(work, "stage1.train.epochs=2")
    s1 = work / "stage1"
    (s1 / DONE).unlink()
    (s1 / "ray" / "stage1" / "checkpoint_000000").mkdir(parents=True)
    (s1 / "labels").mkdir()
    with caplog.at_level(logging.WARNING, logger="distributed.pipeline"):
        assert _run(work, "stage1.train.epochs=3") == ["stage1", "pseudo", "detector", "evaluate"]
    assert "config changed (train.epochs 2 -> 3)" in caplog.text
    assert not (s1 / "ray").exists() and (work / "stage1.stale-1" / "ray" / "stage1" / "checkpoint_000000").is_dir()
    # the same config resumes its own half-finished run in place
    (s1 / DONE).unlink()
    (s1 / "ray").mkdir()
    assert _run(work, "stage1.train.epochs=3") == ["stage1"] and (s1 / "ray").is_dir()


def test_output_without_lineage_is_not_trusted(fake_stages, tmp_path, caplog):
    """A stage directory written before lineage existed (or by a stage's own job) cannot be checked: it is moved
    aside and recomputed rather than reused."""
    work = tmp_path / "run"
    _run(work)
    (work / "pseudo" / LINEAGE).unlink()
    record = json.loads((work / "pseudo" / DONE).read_text())
    record.pop("lineage")
    (work / "pseudo" / DONE).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="distributed.pipeline"):
        assert _run(work) == ["pseudo"]         # its new done.json equals the one detector recorded: kept
    assert "pseudo: no lineage recorded" in caplog.text and (work / "pseudo.stale-1").is_dir()


def test_lineage_changes_names_keys_and_inputs(tmp_path):
    (tmp_path / "m.json").write_text("1")
    old = make_lineage({"train": {"epochs": 10, "report_every": 5}, "k": 3}, {"shards/manifest.json": tmp_path /
                                                                              "m.json"}, ignore=("train.report_every",))
    assert "train.report_every" not in old["config"]
    (tmp_path / "m.json").write_text("2")
    new = make_lineage({"train": {"epochs": 12, "report_every": 9}, "k": 3}, {"shards/manifest.json": tmp_path /
                                                                              "m.json"}, ignore=("train.report_every",))
    assert lineage_changes(old, new) == ["config changed (train.epochs 10 -> 12)",
                                         "inputs changed: shards/manifest.json"]
    assert lineage_changes(json.loads(json.dumps(new)), new) == []            # survives the JSON round trip
    out = tmp_path / "stage"
    out.mkdir()
    (out / "a").write_text("x")
    (out / LINEAGE).write_text(json.dumps(new))
    assert write_done(out, {}, [out / "a"])["lineage"] == new


def test_a_setting_added_since_counts_as_unchanged_only_at_its_default(tmp_path):
    """Outputs of an older checkout stay valid when the code gains a setting whose default keeps the old behaviour
    (e.g. stage1.method, afouras): at its default it is no change, at another value it is; a setting the old record
    has and the code no longer compares (removed, or now a path) and an optional input absent both times are no
    change either."""
    old = make_lineage({"epochs": 10, "k_sweep_json": "/old/place.json"}, {"manifest": tmp_path / "absent"})
    new = make_lineage({"epochs": 10, "method": "afouras"}, {"manifest": tmp_path / "absent", "ksweep.json": ""})
    defaults = {"epochs": 10, "method": "afouras"}
    assert lineage_changes(old, new, defaults) == []
    other = make_lineage({"epochs": 10, "method": "iterative"}, {"manifest": tmp_path / "absent"})
    assert lineage_changes(old, other, defaults) == ["config changed (method '<unset>' -> 'iterative')"]
    assert lineage_changes(old, new) == ["config changed (method '<unset>' -> 'afouras')"]     # no defaults given
    (tmp_path / "k.json").write_text("{}")
    appeared = make_lineage({"epochs": 10}, {"manifest": tmp_path / "absent", "ksweep.json": tmp_path / "k.json"})
    assert lineage_changes(old, appeared, defaults) == ["inputs changed: ksweep.json"]
