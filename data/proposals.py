"""Region proposals stored beside the shards (a sidecar per shard), and joined to the stream's blocks.

A proposal set lives in ``<manifest root>/proposals/<name>/`` (``name`` = :meth:`ProposalSettings.name`, e.g.
``selective_search-fast-100``):

- ``<shard path>.npz`` per shard, written by :func:`write_sidecar` (numpy arrays only, read with
  ``allow_pickle=False``): ``keys`` (n,) str — the shard's sample keys, ``boxes`` (n, P, 4) float32 xyxy pixels of
  the stored frame (P = ``max_boxes``, zero padding), ``scores`` (n, P) float32 (the source's own ranking score,
  best first), ``count`` (n,) int32 — how many of the P rows are real;
- ``proposals.json``: ``{"version", "settings", "shards": {shard path: {"shard_sha256", "sha256", "frames"}}}`` —
  which shard bytes each sidecar was computed from, and the sidecar's own checksum.

A sidecar is used only when its shard's sha256 equals the manifest's (re-ingested shards make it stale) and its
own bytes match the header; :func:`stream_sidecars` checks every shard of a split before a stream starts and names
each one that is missing or stale. Stage 1 has no geometric augmentation, so the stored pixel boxes are the model's.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from avdet.fileio import write_json
from data.shards import Manifest

PROPOSALS_VERSION = 1
PROPOSALS_DIR = "proposals"
HEADER = "proposals.json"
METHODS = ("selective_search", "edge_boxes")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ProposalError(RuntimeError):
    """A proposal set is missing, stale or damaged; the message names the shard and what to run."""


@dataclass(frozen=True)
class ProposalSettings:
    """How proposals are computed: ``method`` "selective_search" (OpenCV contrib; ``mode`` "fast" | "quality") or
    "edge_boxes" (OpenCV contrib; needs ``edge_model``, the structured-edge model file, a local path); at most
    ``max_boxes`` per frame, none narrower or lower than ``min_size`` pixels."""
    method: str = "selective_search"
    mode: str = "fast"
    max_boxes: int = 100
    min_size: int = 4
    edge_model: str = ""

    def check(self) -> None:
        from avdet.config import require
        require(self.method in METHODS, "method", f"must be one of {', '.join(METHODS)}")
        require(self.mode in ("fast", "quality"), "mode", "must be 'fast' or 'quality'")
        require(self.max_boxes >= 1, "max_boxes", "must be >= 1")
        require(self.min_size >= 1, "min_size", "must be >= 1")
        require(self.method != "edge_boxes" or bool(self.edge_model), "edge_model",
                "must name the structured-edge model file (a local path) for method=edge_boxes")

    def name(self) -> str:
        """The set's directory name: ``<method>-<mode>-<max_boxes>`` (edge boxes: ``edge_boxes-<max_boxes>``)."""
        if self.method == "edge_boxes":
            return f"edge_boxes-{self.max_boxes}"
        return f"{self.method}-{self.mode}-{self.max_boxes}"

    @classmethod
    def from_name(cls, name: str) -> "ProposalSettings":
        """The settings a set name stands for (``selective_search-<mode>-<max_boxes>``); edge boxes need their
        model file, so their sets are computed with jobs/proposals.py, not from a name."""
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == "selective_search" and parts[1] in ("fast", "quality") \
                and parts[2].isdigit() and int(parts[2]) >= 1:
            return cls("selective_search", parts[1], int(parts[2]))
        raise ProposalError(f"proposal set {name!r}: not a 'selective_search-<fast|quality>-<max_boxes>' name; "
                            f"compute other sets with jobs/proposals.py first")

    def record(self) -> dict:
        """What the header records (the edge model by file name only: a local path is not part of the result)."""
        return {**asdict(self), "edge_model": Path(self.edge_model).name if self.edge_model else ""}


def set_dir(manifest: Manifest, name: str) -> Path:
    """``<manifest root>/proposals/<name>``; ``name`` must be a plain directory name."""
    if not _NAME.match(name) or name in (".", ".."):
        raise ProposalError(f"proposal set name {name!r}: only letters, digits, '_', '-', '.' (a directory name "
                            f"under {manifest.root / PROPOSALS_DIR})")
    return Path(manifest.root).resolve() / PROPOSALS_DIR / name


def sidecar_path(directory: Path, shard_rel: str) -> Path:
    """The sidecar of the shard at ``shard_rel`` (relative to the manifest root), resolved under ``directory``."""
    path = (directory / f"{shard_rel}.npz").resolve()
    if directory.resolve() not in path.parents:
        raise ProposalError(f"shard path {shard_rel!r} leaves the proposal directory {directory}")
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_sidecar(path: Path, keys: list[str], boxes: list[np.ndarray], scores: list[np.ndarray],
                  max_boxes: int) -> str:
    """Write one shard's proposals (per-frame ``boxes`` (n_i, 4) and ``scores`` (n_i,), n_i <= ``max_boxes``)
    atomically; returns the file's sha256."""
    import io
    n = len(keys)
    box_arr = np.zeros((n, max_boxes, 4), np.float32)
    score_arr = np.zeros((n, max_boxes), np.float32)
    count = np.zeros(n, np.int32)
    for i, (b, s) in enumerate(zip(boxes, scores)):
        k = min(len(b), max_boxes)
        box_arr[i, :k], score_arr[i, :k], count[i] = b[:k], s[:k], k
    buf = io.BytesIO()
    np.savez(buf, keys=np.asarray(keys, dtype="U64"), boxes=box_arr, scores=score_arr, count=count)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return sha256_bytes(data)


def read_sidecar(path: str | Path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """A sidecar's arrays (``keys``, ``boxes``, ``scores``, ``count``), checked: its sha256 (when given), the
    arrays' names, dtypes and shapes. Never unpickles."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProposalError(f"proposal sidecar {path}: cannot read ({e}); re-run jobs/proposals.py") from e
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise ProposalError(f"proposal sidecar {path}: sha256 differs from its header (damaged or replaced); "
                            f"re-run jobs/proposals.py")
    import io
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            out = {k: z[k] for k in ("keys", "boxes", "scores", "count")}
    except (KeyError, ValueError, OSError) as e:
        raise ProposalError(f"proposal sidecar {path}: not a proposal file ({e})") from e
    n = len(out["keys"])
    ok = (out["boxes"].ndim == 3 and out["boxes"].shape[0] == n and out["boxes"].shape[2] == 4
          and out["scores"].shape == out["boxes"].shape[:2] and out["count"].shape == (n,)
          and out["keys"].dtype.kind == "U" and bool(np.all((out["count"] >= 0)
                                                            & (out["count"] <= out["boxes"].shape[1]))))
    if not ok:
        raise ProposalError(f"proposal sidecar {path}: arrays of inconsistent shapes "
                            f"{ {k: v.shape for k, v in out.items()} }")
    return out


def read_header(directory: Path) -> dict:
    """The set's ``proposals.json``; ProposalError when absent, unreadable or of another version."""
    path = directory / HEADER
    try:
        header = json.loads(path.read_text())
    except OSError as e:
        raise ProposalError(f"no proposal set at {directory} ({e}); compute it with jobs/proposals.py") from e
    except ValueError as e:
        raise ProposalError(f"{path}: not JSON ({e})") from e
    if header.get("version") != PROPOSALS_VERSION:
        raise ProposalError(f"{path}: version {header.get('version')!r}, this code reads {PROPOSALS_VERSION}; "
                            f"re-run jobs/proposals.py")
    return header


def write_header(directory: Path, settings: ProposalSettings, shards: dict[str, dict]) -> Path:
    return write_json(directory / HEADER, {"version": PROPOSALS_VERSION, "settings": settings.record(),
                                           "shards": dict(sorted(shards.items()))})


def stream_sidecars(manifest: Manifest, split: str, name: str) -> dict[str, tuple[str, str]]:
    """{absolute shard path: (sidecar path, its sha256)} for every shard of ``split``; raises ProposalError naming
    every shard whose sidecar is missing or was computed from other shard bytes."""
    directory = set_dir(manifest, name)
    header = read_header(directory)
    out, problems = {}, []
    for info in manifest.split_shards(split):
        entry = header["shards"].get(info.path)
        if entry is None:
            problems.append(f"{info.path}: no proposals")
        elif entry.get("shard_sha256") != info.sha256:
            problems.append(f"{info.path}: proposals computed from other shard bytes (stale)")
        else:
            out[str(manifest.shard_path(info))] = (str(sidecar_path(directory, info.path)), entry["sha256"])
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ProposalError(f"proposal set {directory}, split {split!r}: {shown}. Run jobs/proposals.py "
                            f"manifest={manifest.root / 'manifest.json'} (it computes only what is missing)")
    return out


def join_block(block: dict[str, np.ndarray], sidecar: dict[str, np.ndarray], shard: str) -> dict[str, np.ndarray]:
    """``block`` (rows of one shard; ``file_name`` = "<shard>#<key>") with ``proposals`` (n, P, 4) float32 and
    ``proposal_count`` (n,) int32 joined by sample key; raises ProposalError naming a key the sidecar lacks."""
    where = {k: i for i, k in enumerate(sidecar["keys"].tolist())}
    rows = []
    for name in block["file_name"].tolist():
        key = name.rsplit("#", 1)[-1]
        if key not in where:
            raise ProposalError(f"proposals of shard {shard}: no entry for sample {key!r} (stale sidecar); "
                                f"re-run jobs/proposals.py")
        rows.append(where[key])
    rows = np.asarray(rows, np.int64)
    return {**block, "proposals": sidecar["boxes"][rows], "proposal_count": sidecar["count"][rows]}
