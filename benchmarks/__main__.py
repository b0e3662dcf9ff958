"""Run every benchmark (or the named ones) in sequence, each in a fresh interpreter.

    python -m benchmarks                                   # train_step relabel faiss_bench detector end_to_end stream stream_scaling scale proposals
    python -m benchmarks train_step relabel --tiny         # the named ones, smoke size
    python -m benchmarks faiss_bench --out /tmp/bench      # JSON + RESULTS.md rows into /tmp/bench

Options after the names are --tiny, --full (relabel, faiss_bench) and --out DIR; each benchmark runs as
``python -m benchmarks.<name>`` would, in a process of its own, so its figures cannot depend on what ran before it
(Ray sessions, process groups, threads, memory). When they shared one process, the stream benchmark gave ×0.92 of
the plain reader after the others and ×1.11 alone right after (one pair, 2026-12-06: too few to say which it was).
Each writes its JSON and appends its RESULTS.md row as when run alone. A benchmark that fails prints
its traceback and the others still run; the exit status is 1 if any failed. The last line printed is a JSON summary
{name: "ok" | "exit <code>"}.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("benchmarks")

ALL = ("train_step", "relabel", "faiss_bench", "detector", "end_to_end", "stream", "stream_scaling", "scale",
       "proposals")
TAKES_FULL = ("relabel", "faiss_bench")
TAKES_GOALS = ("stream", "stream_scaling", "train_step", "relabel", "scale", "proposals")      # benchmarks that write their goals to benchmarks/GOALS.json (full runs, default out)


def bench_argv(name: str, tiny: bool, full: bool, out: str | None) -> list[str]:
    """The argv one benchmark's ``main`` gets (stream's --out is a JSON path, and it has no --out dir)."""
    argv = ["--tiny"] if tiny else []
    if full and name in TAKES_FULL:
        argv.append("--full")
    if not tiny and not out and name in TAKES_GOALS:
        argv.append("--goals")
    if out:
        if name == "stream":
            argv += ["--out", str(Path(out) / "stream.json"), "--no-results-row"]
        else:
            argv += ["--out", out]
    return argv


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help=f"any of {', '.join(ALL)} (default: all)")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--full", action="store_true")
    p.add_argument("--out", help="output dir for the JSON files and RESULTS.md (default: benchmarks/)")
    args = p.parse_args(list(argv or []))
    unknown = [n for n in args.names if n not in ALL]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(ALL)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    status: dict[str, str] = {}
    for name in args.names or ALL:
        log.info("=== benchmark %s ===", name)
        status[name] = run_one(name, bench_argv(name, args.tiny, args.full, args.out))
        if status[name] != "ok":
            log.error("benchmark %s failed (%s); going on with the others", name, status[name])
    return status


def run_one(name: str, argv: list[str]) -> str:
    """``python -m benchmarks.<name> <argv>`` in a fresh interpreter, its output streamed through: "ok" or
    "exit <code>"."""
    code = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *argv]).returncode
    return "ok" if code == 0 else f"exit {code}"


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print(json.dumps(result))
    sys.exit(0 if all(v == "ok" for v in result.values()) else 1)
