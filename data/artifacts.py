"""A stage's completion record, ``done.json``: its summary plus the sha256 of every artifact the stage wrote.

Every stage writes its artifacts atomically (temp name, rename) and ``done.json`` last, through :func:`write_done`.
A re-run finds the record with :func:`read_done`, which checks every listed artifact against its checksum before the
stage is skipped: a missing or changed file is an error naming it (nothing is silently reused, nothing recomputed
over the user's files). Paths in the record are relative to the stage's directory, so a moved workdir still checks.
Records written before checksums existed (no ``artifacts`` key) are accepted as they are.

Lineage: a driver (the pipeline) writes ``lineage.json`` into a stage's directory *before* the stage runs — the
stage's resolved config (minus keys that do not change results) and the sha256 of every input it reads (upstream
``done.json`` files, the shard manifest). :func:`write_done` copies it into the record as ``"lineage"``. A later run
compares the lineage it would write with the recorded one (:func:`lineage_changes`); on any difference the old
directory is moved aside (:func:`move_aside`) and the stage recomputed, so neither a finished output nor a
half-finished one (Ray Train checkpoints, label tables) of another config or other inputs is ever reused.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable

from avdet.fileio import UnsafePathError, path_under
from data.shards import sha256_file, write_atomic

log = logging.getLogger(__name__)

DONE = "done.json"
LINEAGE = "lineage.json"


class ArtifactError(RuntimeError):
    """A complete stage's artifact is missing or differs from the checksum in its ``done.json``."""


def write_done(out: str | Path, summary: dict, artifacts: Iterable[str | Path]) -> dict:
    """Write ``out/done.json`` = ``summary`` + ``{"artifacts": {relative path: sha256}}`` atomically; return it.
    Artifacts are paths as given (absolute, or relative to the working directory, like ``out``); every one must exist
    and lie under ``out``."""
    out = Path(out)
    sums = {}
    for a in artifacts:
        p = Path(a)
        sums[p.resolve().relative_to(out.resolve()).as_posix()] = sha256_file(p)
    record = {**summary, "artifacts": sums}
    if (out / LINEAGE).is_file():
        record["lineage"] = json.loads((out / LINEAGE).read_text())
    write_atomic(out / DONE, json.dumps(record, indent=1).encode())
    return record


def verify(out: str | Path, record: dict) -> list[str]:
    """Problems with the artifacts ``record`` lists under ``out`` (empty when every file matches)."""
    out, problems = Path(out), []
    for rel, digest in record.get("artifacts", {}).items():
        try:
            p = path_under(out, rel, "artifact")
        except UnsafePathError as e:
            problems.append(f"{e} (a done.json lists only files under its stage directory)")
            continue
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{p}: sha256 differs from the record (changed after the stage finished)")
    return problems


def read_done(out: str | Path, stage: str) -> dict | None:
    """The stage's ``done.json`` record when the stage is complete and its artifacts intact; ``None`` when there is
    no record (run the stage). Raises :class:`ArtifactError` naming every missing or changed artifact."""
    path = Path(out) / DONE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    problems = verify(out, record)
    if problems:
        raise ArtifactError(f"{stage}: {path} records a complete stage, but " + "; ".join(problems) +
                            f". Restore the files, or delete {path} to recompute the stage.")
    log.info("%s: %s is complete; skipping (%d artifacts checked)", stage, Path(out),
             len(record.get("artifacts", {})))
    return record


# ---------------------------------------------------------------------------------------------------------------
# lineage: what a stage's output was computed from


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict -> ``{"a.b.c": value}`` (lists are values)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def make_lineage(config: dict, inputs: dict[str, str | Path], ignore: Iterable[str] = ()) -> dict:
    """``{"config": flat {key: value} without ``ignore``d keys, "config_sha256", "inputs": {name: sha256}}``.
    ``inputs`` maps a name (e.g. ``"shards/manifest.json"``) to a file; a missing file is recorded as ``None``."""
    ignore = set(ignore)
    flat = {k: v for k, v in sorted(flatten(config).items()) if k not in ignore}
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return {"config": flat, "config_sha256": hashlib.sha256(blob).hexdigest(),
            "inputs": {name: sha256_file(Path(p)) if Path(p).is_file() else None for name, p in inputs.items()}}


def recorded_lineage(out: str | Path) -> dict | None:
    """The lineage of what is in ``out``: ``done.json``'s ``"lineage"`` for a complete stage, else ``lineage.json``
    (a started, unfinished stage); ``None`` when neither records one."""
    out = Path(out)
    for name in (DONE, LINEAGE):
        if (out / name).is_file():
            lineage = json.loads((out / name).read_text()).get("lineage") if name == DONE else \
                json.loads((out / name).read_text())
            if lineage is not None:
                return lineage
    return None


def lineage_changes(old: dict | None, new: dict, defaults: dict | None = None) -> list[str]:
    """Why an output with lineage ``old`` is not what ``new`` would compute: ``["config changed (train.epochs 10 ->
    12)", "inputs changed: shards/manifest.json"]``; empty when they agree.

    Code changes between the two runs are allowed for: a setting the old lineage lacks (added to the code since)
    counts as unchanged when its value now is its default (``defaults``: flat {key: default}), since a new setting's
    default keeps the old behaviour; a setting only the old lineage has (removed since, or now a path or another
    key that does not change results) is not compared; nor is an input only the old lineage records, or one the new
    lineage records as absent (``None``) that the old did not record."""
    if old is None:
        return ["no lineage recorded (written before lineage existed, or not by the pipeline)"]
    why = []
    a, b, defaults = old.get("config", {}), new["config"], defaults or {}
    unset = object()
    diff = [f"{k} {a.get(k, '<unset>')!r} -> {b[k]!r}" for k in sorted(b)
            if a.get(k, unset) != b[k] and not (k not in a and k in defaults and defaults[k] == b[k])]
    if diff:
        why.append(f"config changed ({', '.join(diff[:5])}{', ...' if len(diff) > 5 else ''})")
    old_in = old.get("inputs", {})
    changed = sorted(k for k, v in new["inputs"].items() if old_in.get(k, None if k not in old_in else unset) != v
                     and not (k not in old_in and v is None))
    if changed:
        why.append(f"inputs changed: {', '.join(changed)}")
    return why


def move_aside(out: str | Path) -> Path:
    """Rename ``out`` to the first free ``<out>.stale-<n>`` (kept, never deleted: the user decides); returns it."""
    out = Path(out)
    n = 1
    while out.with_name(f"{out.name}.stale-{n}").exists():
        n += 1
    dest = out.with_name(f"{out.name}.stale-{n}")
    out.rename(dest)
    return dest
