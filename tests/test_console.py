"""jobs/console.py: what a person sees of a pipeline run — a line per stage, the stage's progress and events read
from its progress.json, the library chatter kept in the log file, and the closing summary."""
from __future__ import annotations

import io
import logging
import time

from distributed.cluster.progress import Progress, read_progress
from jobs.console import Console


def test_progress_file_is_throttled_and_events_are_written_at_once(tmp_path, monkeypatch):
    # a machine booted less than every_s ago (monotonic time near 0, as on a fresh CI machine) still writes at once
    monkeypatch.setattr(time, "monotonic", lambda: 5.0)
    p = Progress(tmp_path, "stage1", epochs=2, steps_per_epoch=10, every_s=3600)
    p.step(0, 1, 64)                                   # the first step writes (nothing was written before)
    assert read_progress(tmp_path)["step"] == 1
    monkeypatch.setattr(time, "monotonic", lambda: 6.0)
    p.step(0, 2, 64)                                   # within every_s: not rewritten
    assert read_progress(tmp_path)["step"] == 1
    p.event("relabel v1 (dense): clusters 3..5")       # an event is written at once, with the latest step
    doc = read_progress(tmp_path)
    assert doc["step"] == 2 and doc["events"] == ["relabel v1 (dense): clusters 3..5"] and doc["rate"] > 0
    assert read_progress(tmp_path / "nowhere") is None


def test_a_stage_shows_its_events_and_one_closing_line(tmp_path):
    out = io.StringIO()
    with Console(tmp_path / "run", stream=out) as console:
        console.stage_started("stage1", str(tmp_path / "s1"))
        (tmp_path / "s1").mkdir()
        p = Progress(tmp_path / "s1", "stage1", epochs=1, steps_per_epoch=4, every_s=0)
        p.step(0, 2, 32)
        p.event("relabel v1 (dense): NMI to v0 0.500, 10.0 % changed, clusters 3..5")
        time.sleep(1.2)                                # the poller reads every 0.5 s
        console.stage_finished("stage1", 75.0, {"metrics": [{"epoch": 0}], "label_version": 1})
    text = out.getvalue()
    assert "avdet pipeline: outputs in" in text and "[1] stage1 ..." in text
    assert "    relabel v1 (dense): NMI to v0 0.500" in text
    assert "[1] stage1 done in 1 min 15 s (1 epochs, label table v1)" in text


def test_library_chatter_goes_to_the_file_and_ours_to_the_console(tmp_path):
    out = io.StringIO()
    with Console(tmp_path / "run", stream=out):
        logging.getLogger("ray.data.whatever").warning("execution plan of dataset X")
        logging.getLogger("distributed.stage1.job").info("stage 1: 60 samples")
        logging.getLogger("distributed.cluster.resources").warning("each worker reserves 0.5 CPU instead of 1")
        logging.getLogger("ray.train").error("a worker died")
    text, log = out.getvalue(), (tmp_path / "run" / "logs" / "pipeline.log").read_text()
    assert "execution plan" not in text and "stage 1: 60 samples" not in text
    assert "each worker reserves 0.5 CPU" in text and "a worker died" in text
    for line in ("execution plan of dataset X", "stage 1: 60 samples", "0.5 CPU", "a worker died"):
        assert line in log


def test_a_quiet_console_gives_the_libraries_their_logging_back_on_exit(tmp_path):
    """Inside, a library's own console handler is silenced and its records reach ours; after, a caller that goes on
    (a notebook, the seeds job's next run) sees the library's handler, propagation and the root level as before."""
    lib = logging.getLogger("ray.test_console_restore")
    own, mine = io.StringIO(), logging.StreamHandler()
    mine.stream = own
    lib.addHandler(mine)
    lib.propagate, root_level = False, logging.getLogger().level
    try:
        with Console(tmp_path / "run", stream=io.StringIO()):
            lib.error("inside")
            assert mine.level > logging.CRITICAL and lib.propagate is True
        lib.error("after")
        assert own.getvalue() == "after\n"
        assert mine.level == logging.NOTSET and lib.propagate is False
        assert logging.getLogger().level == root_level
    finally:
        lib.removeHandler(mine)
        lib.propagate = True


def test_verbose_shows_everything(tmp_path):
    out = io.StringIO()
    with Console(tmp_path / "run", verbose=True, stream=out) as console:
        logging.getLogger("distributed.stage1.job").info("stage 1: 60 samples")
        assert console.quiet is False
    assert "stage 1: 60 samples" in out.getvalue()


def test_summary_lists_the_stage_times(tmp_path):
    out = io.StringIO()
    with Console(tmp_path / "run", stream=out) as console:
        console.summary({"timings_s": {"stage1": 61.0, "detector": 5.0}, "evaluate": {"skipped": "no gt"}})
    text = out.getvalue()
    assert "Done in 1 min 06 s: stage1 1 min 01 s, detector 5 s" in text and "no gt" in text


def test_ray_data_is_silenced_before_any_stage_imports_it(tmp_path):
    """In a fresh process (nothing imported Ray Data yet), a quiet console has silenced Ray Data's own console
    handler on entry: a stage that imports Ray Data and runs a dataset at once (ingest) must not print its
    "Execution plan" before the poller's next pass (a race seen in CI)."""
    import subprocess
    import sys
    code = ("import logging, io\n"
            "from jobs.console import Console\n"
            f"with Console({str(tmp_path)!r}, stream=io.StringIO()):\n"
            "    hs = [h for h in logging.getLogger('ray.data').handlers\n"
            "          if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]\n"
            "    print(len(hs), all(h.level > logging.CRITICAL for h in hs))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    count, silenced = out.stdout.split()[-2:]
    assert int(count) >= 1 and silenced == "True", out.stdout
