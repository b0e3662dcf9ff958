"""A stage's completion record, ``done.json``: its summary plus the sha256 of every artifact the stage wrote.

Every stage writes its artifacts atomically (temp name, rename) and ``done.json`` last, through :func:`write_done`.
A re-run finds the record with :func:`read_done`, which checks every listed artifact against its checksum before the
stage is skipped: a missing or changed file is an error naming it (nothing is silently reused, nothing recomputed
over the user's files). Paths in the record are relative to the stage's directory, so a moved workdir still checks.
Records written before checksums existed (no ``artifacts`` key) are accepted as they are.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

from avdet.fileio import UnsafePathError, path_under
from data.shards import sha256_file, write_atomic

log = logging.getLogger(__name__)

DONE = "done.json"


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
