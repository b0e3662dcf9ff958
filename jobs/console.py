"""The console of a pipeline run, for a person: one line per stage, a progress bar per long stage, stage 1's relabel
rounds, and a closing summary. Everything else — our INFO logs, Ray's, Ray Data's, DeepSpeed's and Python's warnings
— goes to ``<workdir>/logs/pipeline.log``; the Ray workers' own output stays in Ray's session logs (linked as
``<workdir>/logs/ray``). ``--verbose`` brings all of it back to the console.

    with Console(workdir, verbose) as console:
        results = run_pipeline(cfg, console)
        console.summary(results)
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path

from tqdm import tqdm

from avdet.report.seeds import seed_row
from distributed.cluster.progress import read_progress
from distributed.pipeline import Observer

OURS = ("avdet", "data", "distributed", "jobs", "__main__")
LIBRARIES = ("ray", "deepspeed", "torch", "py.warnings", "faiss", "urllib3", "filelock")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HEADLINE = [("stage1_test_acc", "stage-1 test pseudo-class accuracy (Hungarian)", "{:.1%}"),
            ("selfbox_iou50", "self-box IoU@0.5 (localisation)", "{:.1%}"),
            ("detector_map50", "detector mAP@0.5 (Hungarian)", "{:.1f}"),
            ("detector_map50_1shot", "detector mAP@0.5 (1-shot)", "{:.1f}"),
            ("detector_map50_agnostic", "detector mAP@0.5 (class-agnostic)", "{:.1f}"),
            ("selfbox_ap50_agnostic", "self-boxes* AP@0.5 (class-agnostic)", "{:.1f}"),
            ("centre_ap50", "centre box* AP@0.5 (class-agnostic)", "{:.1f}")]


class _OursOnly(logging.Filter):
    """Quiet console: our warnings and errors, and anyone's errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or (record.levelno >= logging.WARNING
                                                   and record.name.split(".")[0] in OURS)


class Console(Observer):
    """A pipeline :class:`~distributed.pipeline.Observer` that draws the run (module docstring)."""

    def __init__(self, workdir: str | Path, verbose: bool = False, stream=None):
        self.workdir, self.verbose = Path(workdir), verbose
        self.quiet = not verbose
        self.stream = stream or sys.stderr
        self.logs = self.workdir / "logs"
        self._handlers: list[logging.Handler] = []
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._step = 0
        self._replaced: list[logging.Handler] = []
        self._saved_levels: dict[logging.Handler, int] = {}       # what _quiet_libraries changed, put back on exit
        self._saved_propagate: dict[logging.Logger, bool] = {}
        self._saved_root_level = logging.NOTSET

    # ------------------------------------------------------------------------------------------------ set-up

    def __enter__(self) -> "Console":
        self.logs.mkdir(parents=True, exist_ok=True)
        root = logging.getLogger()
        self._saved_root_level = root.level
        root.setLevel(logging.INFO)
        terminals = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
        self._replaced = [h for h in root.handlers if type(h) is logging.StreamHandler
                          and getattr(h, "stream", None) in terminals]   # basicConfig's: ours replaces it
        for h in self._replaced:
            root.removeHandler(h)
        file = logging.FileHandler(self.logs / "pipeline.log")
        file.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        console = logging.StreamHandler(self.stream)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        if self.quiet:
            console.addFilter(_OursOnly())
        self._handlers = [file, console]
        for h in self._handlers:
            root.addHandler(h)
        logging.captureWarnings(True)
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)   # its AVX probing is not news
        if self.quiet:
            # Ray's and Ray Data's loggers (with their own console handlers) exist from import on: import both now so
            # they are silenced before a stage speaks — a stage that imports Ray Data and runs a dataset at once
            # (ingest) otherwise printed "Execution plan ..." before the poller's next pass (a race, seen in CI)
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        self._quiet_libraries()
        self.say(f"avdet pipeline: outputs in {self.workdir}/, logs in {self.logs}/"
                 + ("" if self.verbose else " (--verbose shows them here)"))
        return self

    def __exit__(self, *exc) -> None:
        self._stop_poller()
        root = logging.getLogger()
        for h in self._handlers:
            root.removeHandler(h)
            h.close()
        for h in self._replaced:
            root.addHandler(h)
        root.setLevel(self._saved_root_level)
        for h, level in self._saved_levels.items():
            h.setLevel(level)
        for logger, propagate in self._saved_propagate.items():
            logger.propagate = propagate
        self._saved_levels, self._saved_propagate = {}, {}
        logging.captureWarnings(False)

    def _quiet_libraries(self) -> None:
        """Libraries that print through their own console handlers (Ray, Ray Data, Ray Train) are silenced there and
        passed on to ours instead: the file gets everything, the console their errors. Re-run as their loggers
        appear (lazily, at import)."""
        if not self.quiet or not self._handlers:
            return
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if not isinstance(logger, logging.Logger) or not name.startswith(LIBRARIES):
                continue
            for h in logger.handlers:
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                    self._saved_levels.setdefault(h, h.level)
                    h.setLevel(logging.CRITICAL + 1)
            self._saved_propagate.setdefault(logger, logger.propagate)
            logger.propagate = True

    def say(self, line: str) -> None:
        tqdm.write(line, file=self.stream)

    # ------------------------------------------------------------------------------------------------ stages

    def stage_started(self, name: str, out_dir: str | None) -> None:
        self._step += 1
        self._quiet_libraries()
        self._link_ray_logs()
        self.say(f"[{self._step}] {name} ...")
        if out_dir:
            self._poller = threading.Thread(target=self._poll, args=(name, Path(out_dir)), daemon=True)
            self._stop.clear()
            self._poller.start()

    def stage_finished(self, name: str, seconds: float, result: dict) -> None:
        self._stop_poller()
        self.say(f"[{self._step}] {name} done in {_duration(seconds)}{_what(name, result)}")

    def _stop_poller(self) -> None:
        if self._poller is not None:
            self._stop.set()
            self._poller.join()
            self._poller = None

    def _poll(self, name: str, out_dir: Path) -> None:
        """Draw ``out_dir/progress.json`` as a bar while the stage runs; print its new events."""
        bar, seen, stage, shown = None, 0, None, None
        try:
            while True:
                stopping = self._stop.wait(0.5)
                self._quiet_libraries()
                doc = read_progress(out_dir)
                if doc is not None and (bar is None or doc["stage"] != stage):
                    if bar is not None:
                        bar.close()
                    stage, seen = doc["stage"], 0
                    total = doc["epochs"] * doc["steps_per_epoch"] if doc.get("steps_per_epoch") else None
                    bar = tqdm(total=total, desc=f"    {stage}", unit="step", file=self.stream, leave=False,
                               dynamic_ncols=True, mininterval=1.0,
                               bar_format="{desc} {bar} {percentage:3.0f}% [{elapsed}<{remaining}]{postfix}")
                if doc is not None:
                    for event in doc["events"][seen:]:
                        self.say(f"    {event}")
                    seen = len(doc["events"])
                    bar.n = min(doc["step"], bar.total or doc["step"])
                    rate = f", {doc['rate']:.0f} {doc['unit']}/s" if doc.get("rate") else ""
                    epoch = f"epoch {doc['epoch'] + 1}/{doc['epochs']}" if doc["epochs"] > 1 else ""
                    if (doc["step"], rate, epoch) != shown:         # a file, not a terminal: no idle redraws
                        shown = (doc["step"], rate, epoch)
                        bar.set_postfix_str(f"{epoch}{rate}".lstrip(", "), refresh=False)
                        bar.refresh()
                if stopping:
                    break
        finally:
            if bar is not None:
                bar.close()

    def _link_ray_logs(self) -> None:
        """``<workdir>/logs/ray`` -> this Ray session's logs (the workers' output), once Ray is up."""
        link = self.logs / "ray"
        ray = sys.modules.get("ray")
        if link.is_symlink() or ray is None or not ray.is_initialized():
            return
        try:
            from ray._private.worker import _global_node
            os.symlink(Path(_global_node.get_session_dir_path()) / "logs", link)
        except (AttributeError, OSError):
            pass                                 # a remote cluster: its logs are on its nodes

    # ------------------------------------------------------------------------------------------------ summary

    def summary(self, results: dict) -> None:
        """Headline numbers, wall time per stage, and where the report is."""
        times = results.get("timings_s", {})
        self.say("")
        self.say(f"Done in {_duration(sum(times.values()))}: " + ", ".join(f"{k} {_duration(v)}"
                                                                          for k, v in times.items()))
        ev = results.get("evaluate", {})
        if "results" in ev and Path(ev["results"]).is_file():
            row = seed_row(-1, json.loads(Path(ev["results"]).read_text()))
            width = max(len(label) for _, label, _ in HEADLINE)
            for key, label, fmt in HEADLINE:
                value = row.get(key)
                self.say(f"  {label:<{width}}  {'n/a' if value is None else fmt.format(value)}")
            self.say(f"Report: {ev.get('report')}")
        elif ev:
            self.say(f"Evaluation: {ev}")
        self.say(f"Everything the run wrote: {self.workdir}/ (pipeline.json, logs/pipeline.log)")


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def _what(name: str, result: dict) -> str:
    """A few words on what a finished stage made (or that it was reused)."""
    if not isinstance(result, dict):
        return ""
    if result.get("skipped"):
        return f" (skipped: {result['skipped']})"
    def stage1(r):
        last = (r.get("metrics") or [{}])[-1]
        acc = next((v for k, v in last.items() if k.endswith("_true_hungarian_acc")), None)   # relabel_, dictionary_
        return f"{len(r.get('metrics', []))} epochs, label table v{r.get('label_version')}" + (
            f", train pseudo-class accuracy {acc:.1%}" if isinstance(acc, float) else "")

    def evaluate(r):                                # done.json holds fractions
        if r.get("map_50") is None and r.get("map_50_agnostic") is not None:
            return f"class-agnostic AP@0.5 {100 * r['map_50_agnostic']:.1f}"
        return f"mAP@0.5 {100 * r['map_50']:.1f}"

    facts = {"synthetic": lambda r: f"{r['clips']} clips",
             "ingest": lambda r: f"{r['samples']} samples in {r['shards']} shards",
             "stage1": stage1,
             "pseudo": lambda r: f"{r['stats']['annotated']}/{r['stats']['frames']} frames annotated",
             "detector": lambda r: f"{r['epochs']} epochs on {r['num_train_images']} images",
             "evaluate": evaluate}
    try:
        text = facts.get(name, lambda r: "")(result)
    except (KeyError, TypeError, ValueError):
        text = ""
    return f" ({text})" if text else ""
