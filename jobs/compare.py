"""The stage-1 methods compared as one command: the whole pipeline per method and seed on one set of shards, and
the table of every method's figures over its seeds beside the whole-image and centre-box predictions.

    python jobs/compare.py --config clusters/local/demo.yaml --methods afouras,iterative --seeds 3 [key=value ...]

Method ``m`` with seed ``s`` runs stage 1 → pseudo-annotations → detector → evaluation with
``stage1.method=m seed=s``: ``afouras`` under ``<workdir>/seeds/seed-<s>/`` (the runs of ``jobs/seeds.py``, so
neither job repeats the other's), every other method under ``<workdir>/methods/<m>/seed-<s>/``; the synthetic data
and the shards live once in ``<workdir>`` (``data_dir``). Every method gets the config's stage-1 and detector budget
and the same random initialisation scheme. Finished stages are skipped (``done.json``), so a re-run resumes.
Writes ``<workdir>/methods/methods.json`` (``{"commit", "command", "runs": [row per run], "summary"}``),
``methods.md`` and ``methods.html`` (the table, ``methods.png`` — every method's map and self-box on the same test
frames — and links to each run's report); ``--publish PATH`` copies the JSON
there too (the repo keeps ``docs/results/demo_methods.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `python jobs/...`

import numpy as np  # noqa: E402

from avdet.fileio import write_atomic  # noqa: E402
from avdet.report.compare import method_row, methods_table, summarise_methods  # noqa: E402
from avdet.report.figures import methods_grid  # noqa: E402
from distributed.pipeline import PipelineConfig, git_commit, pipeline_inputs, resolve  # noqa: E402
from distributed.stage1.methods import METHODS  # noqa: E402
from jobs.cli import add_verbose, parse_args  # noqa: E402
from jobs.variants import Variant, run_variants, variant_config, write_table  # noqa: E402


def method_config(base: PipelineConfig, method: str, seed: int, variant: str = "") -> PipelineConfig:
    """The pipeline of one method and seed: its own stage outputs, the shared data of ``base.workdir``; a named
    ``variant`` (an ablation: the overrides of this command) under ``methods/<method>-<variant>``."""
    stage1 = dataclasses.replace(base.stage1, method=method)
    if method == "afouras" and not variant:
        return variant_config(base, "seeds", f"seed-{seed}", seed=seed, stage1=stage1)
    name = f"{method}-{variant}" if variant else method
    return variant_config(base, str(Path("methods") / name), f"seed-{seed}", seed=seed, stage1=stage1)


def label(method: str, variant: str) -> str:
    """The table's name of a method run as ``variant``: ``proposals (k10)``."""
    return f"{method} ({variant})" if variant else method


def _picture(out: Path, done: list[Variant]) -> str:
    """``<out>/methods.png`` (each method's first finished seed: its map and self-box on the same test frames,
    :func:`avdet.report.figures.methods_grid`) and the HTML that shows it; "" when there is nothing to show."""
    panels = {}
    for v in done:
        path = Path(v.cfg.workdir) / "pseudo" / "heatmaps_test.npz"
        if v.key[0] not in panels and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                if "frame" in z.files:
                    panels[v.key[0]] = {k: z[k] for k in ("index", "heatmap", "box", "frame")}
    grid = methods_grid(panels)
    if grid is None:
        return ""
    write_atomic(out / "methods.png", lambda f: grid.save(f, format="PNG"))
    return ("<h2>The same test frames</h2><p>Each method's map over the frame and its self-box (first seed).</p>"
            "<img src='methods.png' alt='every method: map and self-box on the same test frames'>")


def merged(rows: list[dict], provenance: dict[str, str], earlier: dict) -> tuple[list[dict], dict[str, str]]:
    """``rows`` run now (their ``provenance`` entries) and the rows of an ``earlier`` published doc for the
    (method, seed) pairs not run now, with theirs; ordered by method (as they first appear) then seed."""
    now = {(r["method"], r["seed"]) for r in rows}
    kept = [r for r in earlier.get("runs", []) if (r["method"], r["seed"]) not in now]
    old = earlier.get("provenance", {})
    prov = {**{f"{r['method']} seed {r['seed']}": old.get(f"{r['method']} seed {r['seed']}",
                                                          f"published at {earlier.get('commit', '?')}") for r in kept},
            **provenance}
    order = list(dict.fromkeys(r["method"] for r in rows + kept))
    return sorted(rows + kept, key=lambda r: (order.index(r["method"]), r["seed"])), prov


def _methods(text: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [n for n in names if n not in METHODS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"--methods {text!r}: unknown {bad}; known: {', '.join(METHODS)}")
    return names


def _variant(text: str) -> str:
    import re
    if not re.fullmatch(r"[A-Za-z0-9_.]{0,32}", text):
        raise argparse.ArgumentTypeError(f"--variant {text!r}: letters, digits, '_' and '.' only (a directory name)")
    return text


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", type=_methods, default=list(METHODS),
                        help=f"comma-separated stage-1 methods (default: all, {','.join(METHODS)})")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    parser.add_argument("--first", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--publish", default="", help="also write the JSON here (e.g. docs/results/demo_methods.json)")
    parser.add_argument("--merge", default="", help="keep the rows of this published JSON for (method, seed) pairs "
                                                    "not run now, with their provenance (seeds run on other days)")
    parser.add_argument("--variant", default="", type=_variant,
                        help="name these runs an ablation: they go under methods/<method>-<variant>, their column "
                             "is '<method> (<variant>)'; the overrides say what differs (e.g. --variant k10 "
                             "stage1.proposals.top_k=10)")
    add_verbose(parser)


def main(argv: list[str]) -> dict:
    base, args = parse_args(PipelineConfig, argv, __doc__, pipeline_inputs,
                            show=lambda c: resolve(method_config(c, "afouras", 0)), add_arguments=_arguments)
    if args.seeds < 1 or args.first < 0:
        sys.exit("compare: --seeds must be >= 1 and --first >= 0")
    out = Path(base.workdir) / "methods"
    command = "python jobs/compare.py " + " ".join(argv)

    seeds = range(args.first, args.first + args.seeds)
    variants = [Variant((label(m, args.variant), s), f"{label(m, args.variant)}, seed {s}",
                        method_config(base, m, s, args.variant)) for m in args.methods for s in seeds]

    earlier = json.loads(Path(args.merge).read_text()) if args.merge else {}
    commit, today = git_commit(), datetime.date.today().isoformat()

    def write(rows: list[dict], reports: dict) -> dict:
        now = {f"{r['method']} seed {r['seed']}": f"jobs/compare.py at {commit} on {today}" for r in rows}
        rows, prov = merged(rows, now, earlier)
        doc = {"commit": commit, "command": command, "runs": rows, "summary": summarise_methods(rows),
               "provenance": prov}
        return write_table(out, "methods", doc, methods_table(rows, command), "Stage-1 methods compared",
                           {f"{m} seed {s}": r for (m, s), r in reports.items()}, args.publish,
                           _picture(out, [v for v in variants if v.key in reports]))
    rows, timings, doc = run_variants("compare", variants, lambda key, results, wall, multi: method_row(*key, results, multi),
                                      write, args.verbose)
    print(methods_table(doc["runs"], command).markdown())
    print(f"Wall time per run (s): { {f'{m} seed {s}': t for (m, s), t in timings.items()} }; table: "
          f"{out / 'methods.html'}")
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
