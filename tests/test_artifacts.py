"""distributed.artifacts: done.json records the sha256 of every artifact; a complete stage whose artifact went
missing or changed is an error naming the file, not a silent skip."""
import json
from pathlib import Path

import pytest

from data.shards import sha256_file
from data.artifacts import DONE, ArtifactError, read_done, write_done


def _stage(tmp_path):
    out = tmp_path / "stage"
    (out / "img").mkdir(parents=True)
    (out / "model.pt").write_bytes(b"weights")
    (out / "img" / "a.png").write_bytes(b"png")
    record = write_done(out, {"epochs": 3}, [out / "model.pt", out / "img" / "a.png"])
    return out, record


def test_round_trip_records_relative_paths_and_checksums(tmp_path):
    out, record = _stage(tmp_path)
    assert set(record["artifacts"]) == {"model.pt", "img/a.png"} and record["epochs"] == 3
    assert read_done(out, "stage") == record == json.loads((out / DONE).read_text())
    moved = tmp_path / "moved"
    out.rename(moved)                                              # relative paths: a moved workdir still checks
    assert read_done(moved, "stage") == record


def test_relative_stage_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("runs") / "stage"                                   # what a config's relative out_dir gives
    out.mkdir(parents=True)
    (out / "model.pt").write_bytes(b"w")
    assert write_done(out, {}, [out / "model.pt"])["artifacts"] == {"model.pt": sha256_file(out / "model.pt")}
    assert read_done(out, "stage")["artifacts"] == {"model.pt": sha256_file(out / "model.pt")}


def test_no_record_means_run_the_stage(tmp_path):
    assert read_done(tmp_path, "stage") is None


@pytest.mark.parametrize("damage, why", [(lambda p: p.write_bytes(b"other"), "sha256 differs"),
                                         (lambda p: p.unlink(), "missing")])
def test_changed_or_missing_artifact_is_named(tmp_path, damage, why):
    out, _ = _stage(tmp_path)
    damage(out / "model.pt")
    with pytest.raises(ArtifactError, match=f"model.pt: {why}") as e:
        read_done(out, "stage 1")
    assert "stage 1" in str(e.value) and str(out / DONE) in str(e.value)
    assert (out / "img" / "a.png").read_bytes() == b"png"         # nothing else touched


def test_record_without_checksums_is_accepted(tmp_path):
    (tmp_path / DONE).write_text(json.dumps({"model": "m.pt"}))   # written before checksums existed
    assert read_done(tmp_path, "stage") == {"model": "m.pt"}


def test_artifact_outside_the_stage_is_refused(tmp_path):
    (tmp_path / "elsewhere.bin").write_bytes(b"x")
    (tmp_path / "stage").mkdir()
    with pytest.raises(ValueError):
        write_done(tmp_path / "stage", {}, [tmp_path / "elsewhere.bin"])


def test_pipeline_ingest_skip_names_missing_shards_and_keeps_the_rest(tmp_path):
    from data.config import IngestConfig
    from distributed.pipeline import _ingest
    from tests.avshards import make_toy_shards
    manifest = make_toy_shards(tmp_path / "shards", per_class=8, per_shard=8)
    (tmp_path / "shards" / "ingest_report.json").write_text("{}")
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    shards[0].unlink()
    called = []
    with pytest.raises(FileNotFoundError, match=shards[0].name):
        _ingest(lambda cfg: called.append(cfg), IngestConfig(out_dir=str(tmp_path / "shards")))
    assert not called and all(p.is_file() for p in shards[1:]) and manifest.is_file()
