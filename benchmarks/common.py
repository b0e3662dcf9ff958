"""Shared by the benchmarks: machine/version info, JSON output, and a row appended to benchmarks/RESULTS.md."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
RESULTS_MD = BENCH_DIR / "RESULTS.md"


def machine_info() -> dict:
    """CPU count, RAM, platform, Python and key package versions."""
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
            "processor": platform.processor() or platform.machine()}
    try:
        info["ram_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    for mod in ("torch", "torchaudio", "ray", "webdataset", "numpy", "PIL", "soundfile", "av"):
        try:
            info[mod] = getattr(__import__(mod), "__version__", "?")
        except ImportError:
            info[mod] = None
    return info


def write_result(name: str, figures: dict, argv: list[str], out_path: str | Path | None = None) -> Path:
    """Write ``{"name", "time", "command", "machine", "figures"}`` to ``out_path`` (default out/<name>.json)."""
    path = Path(out_path) if out_path else OUT_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "time": _dt.datetime.now().isoformat(timespec="seconds"),
           "command": " ".join(["python", "-m", f"benchmarks.{name}", *argv]),
           "machine": machine_info(), "figures": figures}
    path.write_text(json.dumps(doc, indent=1))
    return path


def append_results_row(name: str, summary: str, argv: list[str], results_md: str | Path | None = None) -> None:
    """Append one markdown table row ``| date | benchmark | command | summary |`` to ``results_md`` (default
    benchmarks/RESULTS.md; tests pass a temp file)."""
    md = Path(results_md) if results_md else RESULTS_MD
    if not md.exists():
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text("# Benchmark results\n\n| date | benchmark | command | result |\n|---|---|---|---|\n")
    cmd = " ".join(["python", "-m", f"benchmarks.{name}", *argv])
    with open(md, "a") as f:
        f.write(f"| {_dt.date.today().isoformat()} | {name} | `{cmd}` | {summary} |\n")


GOALS_JSON = BENCH_DIR / "GOALS.json"


def git_commit() -> str:
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record_goals(goals: list[dict], out_dir: str | Path | None = None) -> Path:
    """Merge ``goals`` ({"goal", "measured", "target", "met"}) into ``<out_dir>/GOALS.json`` (default
    benchmarks/GOALS.json, committed), each stamped with today's date and the commit; an entry replaces the one of
    the same name, the others are kept (every benchmark owns its goals)."""
    path = Path(out_dir) / "GOALS.json" if out_dir else GOALS_JSON
    rows = json.loads(path.read_text()) if path.is_file() else []
    stamp = {"date": _dt.date.today().isoformat(), "commit": git_commit()}
    new = {g["goal"]: {**g, **stamp} for g in goals}
    rows = [r for r in rows if r["goal"] not in new] + list(new.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sorted(rows, key=lambda r: r["goal"]), indent=1) + "\n")
    return path


def loadavg() -> float:
    """1-minute load average (the machine is shared: every row says how busy it was)."""
    return round(os.getloadavg()[0], 2)


class BusyCores:
    """Context manager: the machine's CPUs busy (all processes: Ray's raylets and workers, DataLoader workers, this
    one), in cores, averaged over the block, from /proc/stat. ``.cores`` after exit."""

    @staticmethod
    def _ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]                      # all, idle + iowait

    def __enter__(self) -> "BusyCores":
        self._start = self._ticks()
        return self

    def __exit__(self, *exc) -> None:
        (total, idle), (total0, idle0) = self._ticks(), self._start
        self.cores = round((1 - (idle - idle0) / max(1, total - total0)) * (os.cpu_count() or 1), 2)


def add_common_args(p, name: str) -> None:
    """--tiny, --out DIR (JSON and RESULTS.md go there instead of benchmarks/out and benchmarks/RESULTS.md) and
    --no-results-row, shared by every benchmark but stream (whose --out is a JSON path)."""
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tests)")
    p.add_argument("--out", help=f"output dir for {name}.json and RESULTS.md (default benchmarks/out, "
                                 f"benchmarks/RESULTS.md)")
    p.add_argument("--no-results-row", action="store_true", help="do not append a row to RESULTS.md")


def finish(name: str, figures: dict, summary: str, argv: list[str], args) -> Path:
    """Write the JSON (``args.out``/<name>.json or out/<name>.json), unless ``--no-results-row`` the RESULTS.md row
    (``args.out``/RESULTS.md or benchmarks/RESULTS.md), and with ``--goals`` the figures' ``goals`` into
    benchmarks/GOALS.json. Returns the JSON path."""
    out = Path(args.out) if args.out else None
    path = write_result(name, figures, argv, out / f"{name}.json" if out else None)
    if not args.no_results_row:
        append_results_row(name, summary, argv, out / "RESULTS.md" if out else None)
    if getattr(args, "goals", False):
        record_goals(figures.get("goals", []))
    return path


def interleaved_rates(arms: dict, rounds: int, calls: int, warmup: int = 1,
                      blocks: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Median throughput of each arm, measured in interleaved blocks so that load from other jobs on this shared
    machine hits every arm alike. ``arms`` = {name: (fn, units_per_call)}; each block calls ``fn()`` ``calls``
    times; ``warmup`` untimed calls per arm first. Returns {name: median units/s over ``rounds`` blocks}; every
    block's rate goes into ``blocks`` when given (for :func:`paired_overhead`)."""
    import statistics
    import time

    for fn, _ in arms.values():
        for _ in range(warmup):
            fn()
    rates: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(rounds):
        for name, (fn, units) in arms.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            rates[name].append(units * calls / (time.perf_counter() - t0))
    if blocks is not None:
        blocks.update(rates)
    return {k: statistics.median(v) for k, v in rates.items()}


def paired_overhead(blocks: dict[str, list[float]], arm: str, baseline: str) -> dict:
    """Overhead % of ``arm`` against ``baseline`` in each round of interleaved blocks, 100·(1 − arm/baseline) of
    blocks timed back to back: {"per_round": [...], "median": m, "quartiles": [q1, q3]} (a drift of the machine
    cancels within a round; the quartiles say how far one round's figure can be trusted)."""
    import statistics
    per = [100.0 * (1 - a / b) for a, b in zip(blocks[arm], blocks[baseline])]
    q = statistics.quantiles(per, n=4) if len(per) > 1 else per * 3
    return {"per_round": per, "median": statistics.median(per), "quartiles": [q[0], q[2]]}


class Turns:
    """Interleaved blocks for arms that are separate process groups running at once (Ray Train workers beside
    torch.multiprocessing twins): the file ``<dir>/turn`` holds a position in ``schedule`` (arm names), and only the
    arm at that position runs, then hands the turn on. Every arm announces itself ready first and the schedule
    starts when all have (:meth:`ready`), so no arm's start-up lands in another's timed block; and every arm waits
    for the schedule's end before it tears down (:meth:`wait_end`). :meth:`abort` (a failed arm, or the driver) makes
    every waiting arm raise at once instead of at ``timeout_s``. Plain data, so it travels in a worker's config."""

    def __init__(self, dir: str | Path, schedule: list[str], timeout_s: float = 300.0, poll_s: float = 0.002):
        self.dir, self.schedule, self.timeout_s, self.poll_s = str(dir), list(schedule), timeout_s, poll_s

    def to_dict(self) -> dict:
        return {"dir": self.dir, "schedule": self.schedule, "timeout_s": self.timeout_s, "poll_s": self.poll_s}

    @classmethod
    def from_dict(cls, d: dict) -> "Turns":
        return cls(d["dir"], d["schedule"], d["timeout_s"], d["poll_s"])

    def positions(self, arm: str) -> list[int]:
        """The schedule positions of ``arm``, in order."""
        out = [i for i, a in enumerate(self.schedule) if a == arm]
        if not out:
            raise ValueError(f"Turns: arm {arm!r} is not in the schedule {sorted(set(self.schedule))}")
        return out

    def _path(self, name: str) -> Path:
        return Path(self.dir) / name

    def ready(self, arm: str) -> None:
        """Mark ``arm`` ready; the last arm to be ready starts the schedule (position 0)."""
        self._path(f"ready.{arm}").touch()
        if all(self._path(f"ready.{a}").exists() for a in set(self.schedule)):
            tmp = self._path(f"turn.{arm}.tmp")
            tmp.write_text("0")
            try:
                os.link(tmp, self._path("turn"))       # exclusive: the schedule starts once, whoever sees it first
            except FileExistsError:
                pass
            finally:
                tmp.unlink()

    def _read(self) -> int | None:
        try:
            text = self._path("turn").read_text()
        except FileNotFoundError:
            return None
        if text == "abort":
            raise RuntimeError(f"Turns: another arm aborted the schedule (see its error); {self.dir}")
        return int(text) if text else None

    def wait(self, position: int, arm: str = "") -> None:
        """Block until the turn is at ``position``; raises on :meth:`abort` or after ``timeout_s``."""
        import time
        t0 = time.monotonic()
        while (at := self._read()) != position:
            if time.monotonic() - t0 > self.timeout_s:
                raise RuntimeError(f"Turns: arm {arm or '?'} waited {self.timeout_s:.0f} s for position {position} "
                                   f"of {len(self.schedule)}, the turn is at {at} (an arm died or hangs?); {self.dir}")
            time.sleep(self.poll_s)

    def done(self, position: int) -> None:
        """Hand the turn on from ``position`` (atomic: a reader sees the old or the new position; an abort stays)."""
        self._read()
        tmp = self._path(f"turn.{position}.tmp")
        tmp.write_text(str(position + 1))
        os.replace(tmp, self._path("turn"))

    def wait_end(self, arm: str = "") -> None:
        self.wait(len(self.schedule), arm)

    def abort(self) -> None:
        import threading
        tmp = self._path(f"turn.abort.{os.getpid()}.{threading.get_ident()}.tmp")   # two arms may abort at once
        tmp.write_text("abort")
        os.replace(tmp, self._path("turn"))


class PeakRSS:
    """Context manager: peak resident set size (bytes) above the level at entry, sampled from /proc/self/statm
    every ``interval`` s in a thread (tracemalloc does not see torch's allocations). ``.peak`` after exit."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._base = interval, 0, 0
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self._base)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        import threading
        self._base, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self._base)
