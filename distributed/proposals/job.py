"""The proposal job: class-agnostic region proposals for every frame of a shard set, once, stored beside the shards
(:mod:`data.proposals`) for seed 001's localiser (``stage1.method=proposals``) and the Selective Search* baseline.

One Ray task per shard (``num_tasks`` at a time, ``task_cpus`` each; OpenCV on one thread per task) decodes the
shard, computes the proposals of each frame (:func:`shard_proposals`) and writes its sidecar; the driver records
each finished shard in the set's header as it arrives, so a killed job resumes where it stopped: a shard whose
sidecar is in the header for the same shard bytes and settings is not recomputed. A shard that fails is named in
the error, after every other shard has been finished and recorded.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avdet.config import require, save_config
from data.health import DataHealth
from data.proposals import (ProposalError, ProposalSettings, read_header, set_dir, sidecar_path, write_header,
                            write_sidecar)
from data.shards import Manifest, iter_shard_samples, read_manifest
from distributed.cluster.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class ProposalsConfig:
    """``manifest`` (a shard set's manifest.json) -> the proposal set ``settings.name()`` under its
    ``proposals/`` directory, for the shards of ``splits``."""
    manifest: str = ""
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    settings: ProposalSettings = field(default_factory=ProposalSettings)
    ray_address: str = "local"          # "local" starts Ray on 127.0.0.1; "auto" joins a running cluster
    num_tasks: int = 0                  # shards computed at once; 0 = one per CPU of the cluster
    task_cpus: float = 1.0

    def check(self) -> None:
        require(bool(self.splits), "splits", "must name at least one split")
        require(self.num_tasks >= 0, "num_tasks", "must be >= 0 (0 = one per CPU)")
        require(self.task_cpus > 0, "task_cpus", "must be > 0")


def frame_proposals(frame: np.ndarray, settings: ProposalSettings) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 RGB frame -> (boxes (n, 4) xyxy, scores (n,)), best first, n <= ``max_boxes``."""
    if settings.method == "selective_search":
        from avdet.proposals import selective_search
        return selective_search(frame, settings.max_boxes, settings.mode, settings.min_size)
    from avdet.proposals import edge_boxes
    return edge_boxes(frame, settings.edge_model, settings.max_boxes, settings.min_size)


def shard_proposals(path: str | Path, settings: ProposalSettings, spec=None
                    ) -> tuple[list[str], list[np.ndarray], list[np.ndarray], DataHealth]:
    """The proposals of every usable frame of one shard (unusable samples are skipped and counted, as the stream
    skips them): (keys, boxes, scores, health)."""
    health = DataHealth()
    keys, boxes, scores = [], [], []
    for sample in iter_shard_samples(path, health, spec):
        b, s = frame_proposals(sample["frame"], settings)
        keys.append(sample["key"])
        boxes.append(b.astype(np.float32))
        scores.append(s.astype(np.float32))
    return keys, boxes, scores, health


def _shard_task(shard_path: str, sidecar: str, settings: dict) -> dict:
    """Ray task: one shard's sidecar. Returns its header entry (or the error, to be reported by the driver)."""
    import cv2
    cv2.setNumThreads(1)
    start = time.perf_counter()
    try:
        cfg = ProposalSettings(**settings)
        keys, boxes, scores, health = shard_proposals(shard_path, cfg)
        sha = write_sidecar(Path(sidecar), keys, boxes, scores, cfg.max_boxes)
    except Exception as e:                                   # reported with the shard's name by the driver
        return {"error": f"{type(e).__name__}: {e}"}
    return {"sha256": sha, "frames": len(keys), "skipped": health.bad_total,
            "proposals_mean": float(np.mean([len(b) for b in boxes])) if boxes else 0.0,
            "seconds": time.perf_counter() - start}


def _todo(manifest: Manifest, cfg: ProposalsConfig, directory: Path, done: dict[str, dict]) -> list:
    """The shards of ``cfg.splits`` whose sidecar is not in the header for their current bytes."""
    infos = [s for split in cfg.splits for s in manifest.split_shards(split)]
    if not infos:
        raise ProposalError(f"manifest {manifest.root}: no shards for splits {cfg.splits}")
    return [s for s in infos if done.get(s.path, {}).get("shard_sha256") != s.sha256
            or not sidecar_path(directory, s.path).is_file()]


def run_proposals(cfg: ProposalsConfig) -> dict:
    """Compute the missing sidecars of the set; returns ``{"dir", "settings", "shards", "computed", "frames",
    "seconds", "frames_per_s"}``. Raises ProposalError naming every shard that failed (the rest are kept)."""
    import ray

    from distributed.cluster.ray_local import connect_ray

    manifest = read_manifest(cfg.manifest)
    directory = set_dir(manifest, cfg.settings.name())
    directory.mkdir(parents=True, exist_ok=True)
    save_config(cfg, directory / "config.yaml")
    done: dict[str, dict] = {}
    if (directory / "proposals.json").is_file():
        header = read_header(directory)
        if header["settings"] != cfg.settings.record():
            raise ProposalError(f"{directory}: holds proposals of other settings {header['settings']}")
        done = header["shards"]
    todo = _todo(manifest, cfg, directory, done)
    log.info("proposals %s: %d shards to compute (%d already done) -> %s", cfg.settings.name(), len(todo),
             len(done), directory)
    start = time.perf_counter()
    failed, frames = [], 0
    if todo:
        connect_ray(cfg.ray_address, num_cpus=os.cpu_count() or 1)
        slots = cfg.num_tasks or max(1, math.floor(ray.cluster_resources().get("CPU", 1) / cfg.task_cpus))
        task = ray.remote(num_cpus=cfg.task_cpus, max_retries=1)(_shard_task)
        total = sum(s.count for s in todo)
        progress = Progress(directory, f"proposals ({cfg.settings.name()})", 1, total, "frames")
        pending, queue = {}, list(todo)
        while queue or pending:
            while queue and len(pending) < slots:
                info = queue.pop(0)
                ref = task.remote(str(manifest.shard_path(info)), str(sidecar_path(directory, info.path)),
                                  cfg.settings.__dict__)
                pending[ref] = info
            ready, _ = ray.wait(list(pending), num_returns=1)
            info = pending.pop(ready[0])
            result = ray.get(ready[0])
            if "error" in result:
                failed.append(f"{info.path}: {result['error']}")
                log.error("proposals: shard %s failed: %s", info.path, result["error"])
                continue
            done[info.path] = {"shard_sha256": info.sha256, **result}
            write_header(directory, cfg.settings, done)         # a killed job resumes from here
            frames += result["frames"]
            progress.step(0, frames, result["frames"])
        progress.close()
    elif not (directory / "proposals.json").is_file():
        write_header(directory, cfg.settings, done)
    seconds = time.perf_counter() - start
    if failed:
        raise ProposalError(f"proposals: {len(failed)} of {len(todo)} shards failed (the others are stored in "
                            f"{directory}): " + "; ".join(failed[:5]))
    return {"dir": str(directory), "settings": cfg.settings.record(), "shards": len(done), "computed": len(todo),
            "frames": frames, "seconds": seconds, "frames_per_s": frames / max(seconds, 1e-9)}
