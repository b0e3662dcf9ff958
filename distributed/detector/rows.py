"""The detector's training rows: pseudo-annotations (``pseudo_<split>.json``) joined to the stream of frames by
sample index, so every worker sees ``{"frames" (H,W,3) uint8, "index", "box" (4,) xyxy float32, "cls"}``."""
from __future__ import annotations

import dataclasses

import numpy as np

from data.shards import read_manifest
from data.stream import ray_dataset
from distributed.detector.config import DetectorTrainConfig

JOIN_CPUS = 0.25      # the pseudo-box join step of each worker's stream (distributed.cluster.resources counts it)


def attach_pseudo(batch: dict[str, np.ndarray], index: np.ndarray, box: np.ndarray,
                  cls: np.ndarray) -> dict[str, np.ndarray]:
    """map_batches UDF: a stream block -> the rows of frames that have a pseudo-annotation, with it attached."""
    pos = np.searchsorted(index, batch["index"])
    pos_ok = np.minimum(pos, max(len(index) - 1, 0))
    found = (pos < len(index)) & (index[pos_ok] == batch["index"]) if len(index) else np.zeros(len(pos), bool)
    rows = pos[found]
    return {"frames": batch["frames"][found], "index": batch["index"][found], "box": box[rows], "cls": cls[rows]}


def training_dataset(cfg: DetectorTrainConfig, table: dict[str, np.ndarray], epoch: int | None = None,
                     part: tuple[int, int] | None = None):
    """Ray Dataset of annotated training rows (module docstring). ``epoch`` + ``part=(rank, world)``: that rank's
    part of the epoch's seeded order (reproducible; built per epoch by each worker); ``epoch=None``: shuffled
    afresh on every pass."""
    stream = dataclasses.replace(cfg.stream, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                                 logmel_in_reader=False)            # the detector reads frames only
    ds = ray_dataset(read_manifest(cfg.manifest), cfg.split, stream, epoch=epoch, part=part)
    return ds.map_batches(attach_pseudo, batch_size=None, batch_format="numpy", num_cpus=JOIN_CPUS,
                          fn_kwargs={k: table[k] for k in ("index", "box", "cls")})
