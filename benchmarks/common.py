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


def append_results_row(name: str, summary: str, argv: list[str]) -> None:
    """Append one markdown table row ``| date | benchmark | command | summary |`` to RESULTS.md."""
    if not RESULTS_MD.exists():
        RESULTS_MD.write_text("# Benchmark results\n\n| date | benchmark | command | result |\n|---|---|---|---|\n")
    cmd = " ".join(["python", "-m", f"benchmarks.{name}", *argv])
    with open(RESULTS_MD, "a") as f:
        f.write(f"| {_dt.date.today().isoformat()} | {name} | `{cmd}` | {summary} |\n")
