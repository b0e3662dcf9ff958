"""Detector stage (paper §3.3): a Ray Train ``TorchTrainer`` job (DDP) fits torchvision Faster R-CNN on the
(frame, pseudo-box, pseudo-class) triplets of ``pseudo_train.json``.

Data: :func:`data.stream.ray_dataset` streams the split's frames; a ``map_batches`` step joins each frame to its
pseudo-annotation by sample index and drops frames without one (filtered by confidence, or outside ``max_images``),
so every worker sees rows ``{"frames" (H,W,3) uint8, "index", "box" (4,) xyxy float32, "cls" = category id}``.
The loop itself is :mod:`distributed.detector.worker`.

Artifacts under ``out_dir``: ``config.yaml`` (resolved, with K filled in), ``tb/`` (TensorBoard, rank 0),
``ray/`` (the Ray Train run and its per-epoch checkpoints), ``backbone_from_stage1.pt`` (with ``init_from_stage1``:
the stage-1 visual trunk as a torchvision resnet18 state_dict, :mod:`avdet.transfer`), ``detector.pt``
(:func:`avdet.detector.save_detector`: plain torchvision builder + state_dict), ``history.json`` (per-epoch
metrics), ``done.json`` (written last).
Re-running a complete stage returns its ``done.json``; re-running an interrupted one resumes from the latest
checkpoint (Ray Train restores it from ``ray/``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from avdet.config import save_config, to_dict
from avdet.detector import build_detector, save_detector
from avdet.fileio import write_atomic, write_json
from avdet.transfer import export_visual_trunk, trunk_width
from data.artifacts import read_done, write_done
from distributed.cluster.ray_local import connect_ray
from distributed.cluster.resources import fit_to_cluster, train_demand
from distributed.detector.config import DetectorTrainConfig
from data.pseudo_coco import training_rows
from distributed.detector.rows import JOIN_CPUS
from distributed.detector.worker import train_loop_per_worker

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------------------------
# the stage


def _trainer(cfg: DetectorTrainConfig, table: dict[str, np.ndarray]):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from distributed.cluster.torch_loopback import torch_config

    out = Path(cfg.out_dir).resolve()
    return TorchTrainer(
        train_loop_per_worker,
        torch_config=torch_config(cfg.use_gpu),
        train_loop_config={"cfg": to_dict(dataclasses.replace(cfg, out_dir=str(out),
                                                              manifest=str(Path(cfg.manifest).resolve()))),
                           "table": table},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name="detector", storage_path=str(out / "ray"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        # no datasets: each worker streams its part of every epoch's seeded order (detector_worker)
    )


def _local_cpus(cfg: DetectorTrainConfig) -> int:
    """Logical CPUs for a local Ray: the train workers plus room for the read and join tasks."""
    need = cfg.num_workers * cfg.cpus_per_worker + max(1, cfg.stream.read_concurrency) * 0.5 + 1
    return max(os.cpu_count() or 1, math.ceil(need))


def _finish(cfg: DetectorTrainConfig, checkpoint, out: Path, table: dict) -> dict:
    """Latest Ray Train checkpoint -> ``detector.pt``, ``history.json``, ``done.json``; returns the summary."""
    if checkpoint is None:
        raise RuntimeError(f"detector training under {out / 'ray'} ended without a checkpoint; nothing to save")
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        history = json.loads((Path(d) / "history.json").read_text())
    model = build_detector(cfg.detector)
    model.load_state_dict(state["model"])
    save_detector(model, cfg.detector, out / "detector.pt")
    write_json(out / "history.json", history)
    summary = {"detector": str(out / "detector.pt"), "history": str(out / "history.json"),
               "num_classes": cfg.detector.num_classes, "num_train_images": int(len(table["index"])),
               "epochs": len(history), "resumes": int(state["resumes"]),
               "final_loss": history[-1]["loss"] if history else None,
               "images_per_s": history[-1]["images_per_s"] if history else None}
    return write_done(out, summary, [out / "detector.pt", out / "history.json", out / "config.yaml"])


def export_stage1_backbone(stage1_model: str | os.PathLike, out: Path, seed: int) -> Path:
    """Write the visual trunk of the stage-1 weights ``stage1_model`` as a torchvision resnet18 state_dict to
    ``out``/backbone_from_stage1.pt (atomically) and return its path."""
    if not stage1_model:
        raise ValueError("detector.init_from_stage1 needs stage1_model, the stage-1 model.pt (the pipeline sets it)")
    src = Path(stage1_model)
    if not src.is_file():
        raise FileNotFoundError(f"detector.init_from_stage1: the stage-1 weights {src} do not exist (stage1_model)")
    state = torch.load(src, map_location="cpu", weights_only=True)
    trunk = export_visual_trunk(state, seed=seed)
    log.info("detector: backbone from the %d-wide stage-1 visual trunk of %s", trunk_width(state), src)
    return write_atomic(out / "backbone_from_stage1.pt", lambda f: torch.save(trunk, f))


def run_detector_training(cfg: DetectorTrainConfig) -> dict:
    """Train the detector (or return the finished stage's summary). Returns ``{"detector", "history",
    "num_classes", "num_train_images", "epochs", "resumes", "final_loss", "images_per_s"}``."""
    out = Path(cfg.out_dir)
    done = read_done(out, "detector")
    if done is not None:
        return done
    table, k = training_rows(Path(cfg.pseudo_dir) / f"pseudo_{cfg.split}.json", cfg.min_confidence,
                                 cfg.max_images, cfg.seed)
    if len(table["index"]) < cfg.batch_size * cfg.num_workers:
        raise ValueError(f"detector: {len(table['index'])} annotated frames in {cfg.pseudo_dir} but batch_size "
                         f"{cfg.batch_size} x num_workers {cfg.num_workers} needs more; lower them")
    if cfg.detector.num_classes != k:
        log.info("detector: num_classes %d -> %d (categories of the pseudo-annotations)", cfg.detector.num_classes, k)
        cfg = dataclasses.replace(cfg, detector=dataclasses.replace(cfg.detector, num_classes=k))
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if cfg.init_from_stage1:        # the workers load the exported trunk like any local backbone weights
        cfg = dataclasses.replace(cfg, init_from_stage1=False, detector=dataclasses.replace(
            cfg.detector, backbone_weights=str(export_stage1_backbone(cfg.stage1_model, out, cfg.seed))))
    connect_ray(cfg.ray_address, num_cpus=_local_cpus(cfg))
    log.info("detector: %d images, K=%d, %s at %d px, %d workers x batch %d, %d epochs", len(table["index"]), k,
             cfg.detector.backbone, cfg.detector.min_size, cfg.num_workers, cfg.batch_size, cfg.epochs)
    fitted = fit_to_cluster(train_demand("detector", cfg.num_workers, cfg.cpus_per_worker,
                                         cfg.stream.read_concurrency, "detector.num_workers or "
                                         "detector.stream.read_concurrency", join_cpus=JOIN_CPUS))
    cfg = dataclasses.replace(cfg, cpus_per_worker=fitted.cpus_per_worker)
    result = _trainer(cfg, table).fit()
    if result.error is not None:
        raise RuntimeError(f"detector training failed (checkpoints kept under {out / 'ray'}): "
                           f"{result.error}") from result.error
    return _finish(cfg, result.checkpoint, out, table)
