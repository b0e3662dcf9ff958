"""Atomic file writes for the artifacts a killed stage must never leave half-written: shards, manifests, ``done.json``
records, pseudo-annotations, reports.

``write_atomic`` writes to a hidden temporary sibling that names its writer (host, pid), fsyncs it and renames it
onto the final name, so a reader sees the old file or the whole new one, never half of it; a killed writer leaves
only a ``.<name>.tmp-<host>-<pid>-<8 hex>`` file, which ``data.shards.sweep_stale_temps`` recognises and removes
once its writer is gone.
"""
from __future__ import annotations

import json
import os
import re
import socket
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["TEMP_RE", "temp_name", "write_atomic", "write_json"]

TEMP_RE = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9.-]+)-(?P<pid>\d+)-[0-9a-f]{8}$")   # what temp_name makes


def temp_name(path: Path) -> Path:
    """Hidden temporary sibling of ``path`` that names its writer (host, pid), so a re-run can tell a dead
    writer's leftover from a live one's work in progress."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"
    return path.with_name(f".{path.name}.tmp-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_atomic(path: str | os.PathLike, payload: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write ``payload`` (bytes, text as UTF-8, or a function writing to a binary file) to ``path`` atomically,
    creating its directory; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            if callable(payload):
                payload(f)
            else:
                f.write(payload.encode() if isinstance(payload, str) else payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike, doc) -> Path:
    """``doc`` as indented JSON at ``path``, atomically."""
    return write_atomic(path, json.dumps(doc, indent=1))
