"""Atomic file writes for the artifacts a killed stage must never leave half-written: shards, manifests, ``done.json``
records, pseudo-annotations, reports.

``write_atomic`` writes to a hidden temporary sibling that names its writer (host, pid), fsyncs it and renames it
onto the final name, so a reader sees the old file or the whole new one, never half of it; a killed writer leaves
only a ``.<name>.tmp-<host>-<pid>-<8 hex>`` file, which ``data.shards.sweep_stale_temps`` recognises and removes
once its writer is gone.

``safe_name`` and ``path_under`` are the one check for path components that come from data or config values (CSV
split names and video ids, shard paths read back from a manifest, artifact paths in a ``done.json``): a value such
as ``../escaped`` or ``/etc`` must never choose where a file is written or read. ``private_dir`` is this user's
scratch directory (Ray session dirs, tokens): never a fixed, guessable name in /tmp that another user could create
first.
"""
from __future__ import annotations

import json
import os
import re
import socket
import stat
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["NAME_RE", "TEMP_RE", "UnsafePathError", "path_under", "private_dir", "safe_name", "temp_name",
           "write_atomic", "write_json"]

# A plain file-name component: no separator, no leading dot (hidden files, "." and ".."), no "..", no glob or shell
# characters. A leading "-" or "_" is allowed: YouTube ids (VGGSound's file names) start with either.
NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")
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


def write_json(path: str | os.PathLike, doc, default: Callable | None = None) -> Path:
    """``doc`` as indented JSON at ``path``, atomically (``default`` as in ``json.dumps``, e.g. ``str``)."""
    return write_atomic(path, json.dumps(doc, indent=1, default=default))


class UnsafePathError(ValueError):
    """A value that would become part of a file path is not a plain name, or the path would leave its root."""


def safe_name(value: str, what: str) -> str:
    """``value`` if it is a plain file-name component (:data:`NAME_RE`, no ``..``), else :class:`UnsafePathError`
    naming ``what`` (e.g. ``"CSV line 12: split"``)."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise UnsafePathError(
            f"{what}: {value!r} is not a plain name (letters, digits, '_', '-', '.'; at most 200; no '/', no '..', "
            f"no leading '.'); refusing to build a file path from it")
    return value


def path_under(root: str | os.PathLike, relative: str | os.PathLike, what: str) -> Path:
    """``root / relative`` when ``relative`` is a relative path of plain names (:func:`safe_name` each) that still
    lies under ``root`` once symlinks are resolved; else :class:`UnsafePathError` naming ``what``."""
    rel = Path(relative)
    if rel.is_absolute() or not rel.parts:
        raise UnsafePathError(f"{what}: {str(relative)!r} must be a relative path under {root}; refusing it")
    for part in rel.parts:
        safe_name(part, f"{what}: {str(relative)!r}, part")
    base = Path(root).resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise UnsafePathError(f"{what}: {str(relative)!r} resolves to {target}, outside {base} (a symlink?); "
                              f"refusing it")
    return Path(root) / rel


def private_dir(*parts: str, base: str | os.PathLike | None = None) -> Path:
    """This user's scratch directory ``<base>/avdet-<uid>`` (``base``: ``tempfile.gettempdir()``, i.e. ``$TMPDIR``
    or ``/tmp``), created with mode 0700, then ``parts`` below it (plain names, each created 0700); returns the
    deepest.

    A pre-existing ``avdet-<uid>`` is used only if it is a real directory (not a symlink) owned by this user and
    closed to others (no group/other permission bits): anyone can create a name in /tmp first and then read, swap or
    redirect what we put there. Otherwise raises :class:`UnsafePathError` saying what is wrong and what to do.
    """
    uid = os.getuid()
    top = Path(base if base is not None else tempfile.gettempdir()) / f"avdet-{uid}"
    try:
        top.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(top)
    fix = "remove it (or set TMPDIR to a directory of your own) and run again"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"private directory {top} exists but is a symlink or not a directory; {fix}")
    if st.st_uid != uid:
        raise UnsafePathError(f"private directory {top} is owned by uid {st.st_uid}, not by this user (uid {uid}): "
                              f"someone else created it; {fix}")
    if st.st_mode & 0o077:
        raise UnsafePathError(f"private directory {top} has mode {stat.S_IMODE(st.st_mode):04o}, expected 0700 (others "
                              f"could read or change what is in it); `chmod 700 {top}` if you made it, else {fix}")
    d = top
    for part in parts:
        d = d / safe_name(part, f"private_dir({', '.join(map(repr, parts))})")
        d.mkdir(mode=0o700, exist_ok=True)
    return d
