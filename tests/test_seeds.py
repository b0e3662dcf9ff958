"""Results over seeds: the summary maths (known answers) and jobs/seeds.py end to end on the tiny pipeline —
seeds share the data, one seed gives one result, another seed another."""
import json
import math
from pathlib import Path

import pytest

from avdet.report.seeds import paper_ordering, seed_row, seeds_table, summarise

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "clusters/local/pipeline_tiny.yaml")

RESULTS = {"clusters": {"test": {"hungarian_acc": 0.9}},
           "localisation": {"methods": {"self_boxes": {"iou50_success": 0.4}}},
           "detection": {"hungarian": {"map_50": 0.25}, "argmax": {"map_50": 0.24}, "1-shot": {"map_50": 0.2},
                         "10-shot": {"map_50": 0.23}},
           "baselines": {"detector_agnostic": {"map_50": 0.3}, "self_boxes": {"map_50": 0.1},
                         "centre_box": {"map_50": 0.011}}}


def test_seed_row_reads_results_json_in_the_published_units():
    row = seed_row(3, RESULTS)
    assert row == {"seed": 3, "stage1_test_acc": 0.9, "selfbox_iou50": 0.4, "detector_map50": 25.0,
                   "detector_map50_argmax": 24.0, "detector_map50_1shot": 20.0, "detector_map50_10shot": 23.0,
                   "detector_map50_agnostic": 30.0, "selfbox_ap50_agnostic": 10.0, "centre_ap50": 1.1}
    assert paper_ordering(row) is True
    assert paper_ordering({**row, "selfbox_ap50_agnostic": 0.5}) is False      # self-boxes below the centre box
    assert seed_row(0, {})["detector_map50"] is None and paper_ordering(seed_row(0, {})) is None


def test_summary_is_mean_sample_std_and_minimum():
    rows = [{"seed": s, "detector_map50": v} for s, v in ((0, 20.0), (1, 30.0), (2, 40.0))]
    got = summarise(rows)["detector_map50"]
    assert got == {"mean": 30.0, "std": 10.0, "min": 20.0, "max": 40.0, "n": 3}   # sqrt((100+0+100)/2)
    assert summarise(rows[:1])["detector_map50"]["std"] == 0.0
    assert "stage1_test_acc" not in summarise(rows)                                # no seed had it
    md = seeds_table(rows, "python jobs/seeds.py x").markdown()
    assert "30.0 ± 10.0" in md and "python jobs/seeds.py x" in md


@pytest.mark.slow
@pytest.mark.timeout(2400)          # three tiny pipelines: ~5 min on an idle 2-core machine
def test_seeds_job_shares_data_and_repeats_a_seed(tmp_path):
    """Two seeds in one workdir, then seed 0 again in another workdir on the same data: the repeat's figures and
    label tables equal the first seed-0 run's, and seed 1 differs from seed 0."""
    import numpy as np

    from jobs.seeds import main

    a, b = tmp_path / "a", tmp_path / "b"
    doc = main(["--config", TINY, f"workdir={a}", "--seeds", "2", "--publish", str(tmp_path / "pub.json")])
    assert [r["seed"] for r in doc["seeds"]] == [0, 1]
    assert json.loads((tmp_path / "pub.json").read_text())["seeds"] == doc["seeds"]
    assert (a / "shards" / "manifest.json").is_file() and not (a / "seeds" / "seed-0" / "shards").exists()
    assert (a / "seeds" / "seeds.html").is_file() and "Results over 2 seeds" in (a / "seeds" / "seeds.md").read_text()
    assert all(math.isfinite(v) for r in doc["seeds"] for k, v in r.items() if v is not None)
    again = main(["--config", TINY, f"workdir={b}", f"data_dir={a}", "--seeds", "1"])
    assert again["seeds"][0] == doc["seeds"][0]
    last = sorted((a / "seeds" / "seed-0" / "stage1" / "labels").glob("labels-*.npz"))[-1].name
    tables = [np.load(d / "seeds" / f"seed-{s}" / "stage1" / "labels" / last)["labels"]
              for d, s in ((a, 0), (b, 0), (a, 1))]
    assert np.array_equal(tables[0], tables[1]) and not np.array_equal(tables[0], tables[2])


def test_readme_seed_table_is_the_published_one():
    """Every row of the README's seed table is the row seeds_table renders from docs/results/demo_seeds.json (the
    README may leave rows out, not change them)."""
    root = Path(__file__).resolve().parents[1]
    published = json.loads((root / "docs/results/demo_seeds.json").read_text())
    rendered = set(seeds_table(published["seeds"], published["command"]).markdown().splitlines())
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Results on the demo set, over seeds"):]
    section = section[:section.index("\n## ", 1)]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "seed 0" not in line]
    assert len(rows) >= 8 and all(row in rendered for row in rows), [r for r in rows if r not in rendered]
