"""docs/REAL_DATA.md's "From the datasets' files to the paper's tables" commands — every subset builder and converter —
run as written on tiny fixtures in each dataset's own layout under $DATA (the pipeline runs are not: they are tested
on synthetic data elsewhere)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

from data.subsets import read_classlist
from jobs import convert_gt, make_subset
from tests.test_eval_images import BOX_HEADER
from tests.test_gt_formats import FLICKR_XML
from tests.test_subsets import BALANCED, UNBALANCED, VGGSOUND_CSV

ROOT = Path(__file__).resolve().parents[1]
LISTS = ROOT / "data" / "classlists"
JOBS = {"jobs/make_subset.py": make_subset.main, "jobs/convert_gt.py": convert_gt.main}


def readme_commands() -> list[str]:
    """The builder / converter commands of that section, continuation lines joined."""
    text = (ROOT / "docs" / "REAL_DATA.md").read_text()
    start = text.index("### From the datasets' files to the paper's tables")
    section = text[start:text.index("## The paper's baselines")]
    lines = [ln.split() for b in re.findall(r"```bash\n(.*?)```", section, re.S) for ln in
             b.replace("\\\n", " ").splitlines()]
    return [" ".join(ln) for ln in lines if len(ln) > 1 and ln[1] in JOBS]


def _ontology() -> list[dict]:
    """An ontology.json holding every name of the committed AudioSet list (fake MIDs) and the fixture's nodes."""
    from tests.test_subsets import ONTOLOGY
    have = {n["name"] for n in ONTOLOGY}
    extra = [{"id": f"/m/x{i}", "name": n, "child_ids": []}
             for i, n in enumerate(read_classlist(LISTS / "audioset_instruments_30.txt")) if n not in have]
    nodes = [dict(n) for n in ONTOLOGY]
    root = next(n for n in nodes if n["name"] == "Musical instrument")
    root["child_ids"] = root["child_ids"] + [e["id"] for e in extra]
    return nodes + extra


def write_data(data: Path) -> None:
    (data / "vggsound").mkdir(parents=True)
    (data / "vggsound" / "vggsound.csv").write_text(VGGSOUND_CSV)
    (data / "vggss").mkdir()
    (data / "vggss" / "vggss.json").write_text(json.dumps([
        {"file": "-0BIyqJj9ZU_000030", "class": "playing violin, fiddle", "bbox": [[0.1, 0.2, 0.5, 0.9]]}]))
    a = data / "audioset"
    a.mkdir()
    (a / "ontology.json").write_text(json.dumps(_ontology()))
    (a / "unbalanced_train_segments.csv").write_text(UNBALANCED)
    (a / "balanced_train_segments.csv").write_text(BALANCED)
    (a / "audioset_box.json").write_text(json.dumps({"--4gqARaEJE/3": {"bbox": [{"category": 1,
                                                                                  "normbox": [0.1, 0.1, 0.3, 0.5]}]}}))
    (a / "names.json").write_text(json.dumps({"1": "Violin, fiddle"}))
    o = data / "openimages"
    (o / "test").mkdir(parents=True)
    names = [*read_classlist(LISTS / "openimages_instruments.txt"),
             *read_classlist(LISTS / "openimages_general_10.txt")]
    (o / "class-descriptions-boxable.csv").write_text("".join(f"/m/oi{i},{n}\n" for i, n in enumerate(names)))
    mid = {n: f"/m/oi{i}" for i, n in enumerate(names)}
    rows = [("00aa", "Accordion"), ("00aa", "Cat"), ("00bb", "French horn"), ("00cc", "Computer mouse")]
    (o / "test-annotations-bbox.csv").write_text(BOX_HEADER + "".join(
        f"{i},xclick,{mid[n]},1,0.1,0.6,0.2,0.7,0,0,0,0,0\n" for i, n in rows))
    for i in ("00aa", "00bb", "00cc"):
        Image.new("RGB", (64, 48)).save(o / "test" / f"{i}.jpg")
    (data / "flickr" / "Annotations").mkdir(parents=True)
    (data / "flickr" / "Annotations" / "10000130166.xml").write_text(FLICKR_XML)


def test_the_readme_lists_a_command_per_dataset():
    cmds = readme_commands()
    assert len([c for c in cmds if "make_subset.py" in c]) == 2
    assert {c.split()[2] for c in cmds if "convert_gt.py" in c} == {"vggss", "dsol-audioset", "openimages", "flickr"}


@pytest.mark.parametrize("n", range(len(readme_commands())))
def test_readme_command_runs_on_a_fixture(n, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)                                  # class lists are given relative to the repo root
    write_data(tmp_path)
    cmd = readme_commands()[n].replace("$DATA", str(tmp_path))
    argv = shlex.split(cmd)
    out = JOBS[argv[1]](argv[2:])
    written = Path(out["out"])
    assert written.is_file() and written.stat().st_size > 0, cmd
    if "make_subset.py" in cmd:
        assert out["kept"] >= 1, out
    else:
        gt = json.loads(written.read_text())
        assert gt["images"] and gt["annotations"], cmd
