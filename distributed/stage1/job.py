"""Stage 1 on a Ray cluster: Ray Data streams the shards to a Ray Train ``TorchTrainer`` whose workers run DeepSpeed;
labels are re-optimised over the whole dataset between epochs (see :mod:`distributed.stage1.worker`).

Artifacts under ``out_dir``: ``config.yaml`` (resolved), ``labels/labels-<version>.npz`` (version 0 = the random
equipartition, version e+1 = after epoch e), ``model.pt`` (plain state_dict), ``tb/`` (TensorBoard), ``ray/`` (Ray
Train run with the DeepSpeed checkpoints), ``done.json`` (written last: the stage is complete). Re-running a
complete stage returns its ``done.json``; re-running an interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from avdet.config import ConfigError, save_config, to_dict
from data.artifacts import read_done, write_done
from data.shards import Manifest, list_indices, read_manifest
from data.stream import ray_dataset
from distributed.cluster.ray_local import connect_ray
from distributed.cluster.resources import fit_to_cluster, train_demand
from distributed.stage1.config import Stage1Config, check_batch_vs_workers
from distributed.stage1.labels import LabelTable, list_versions, random_equipartition
from distributed.stage1.worker import HISTORY, LABELS_DIR, train_loop_per_worker

log = logging.getLogger(__name__)



def _score_datasets(manifest: Manifest, cfg: Stage1Config) -> dict:
    """One unshuffled dataset per rank over disjoint shards, so the relabel pass sees every sample exactly once
    (Ray Train's equal split may drop rows; the relabel pass must not)."""
    shards = manifest.split_shards(cfg.split)
    n = cfg.train.num_workers
    scfg = cfg.stream_config(shuffle=False)
    others = [s for s in manifest.shards if s.split != cfg.split]
    return {f"score_{r}": ray_dataset(dataclasses.replace(manifest, shards=shards[r::n] + others), cfg.split, scfg)
            for r in range(n)}


def _trainer(cfg: Stage1Config, manifest: Manifest, num_train: int, cpus_per_worker: float = 1.0):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from distributed.cluster.torch_loopback import torch_config

    out = Path(cfg.out_dir).resolve()
    datasets = _score_datasets(manifest, cfg)     # the training stream is built per epoch by each rank
    return TorchTrainer(
        train_loop_per_worker,
        torch_config=torch_config(cfg.train.use_gpu),
        train_loop_config={"stage1": to_dict(dataclasses.replace(cfg, out_dir=str(out),
                                                                 manifest=str(Path(cfg.manifest).resolve()))),
                           "num_train": num_train},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     placement_strategy=cfg.train.placement_strategy,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name="stage1", storage_path=str(out / "ray"),
                             failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),
    )


def run_stage1(cfg: Stage1Config) -> dict:
    """Train stage 1 (or return the finished stage's summary). Returns {"model", "labels", "metrics", ...}."""
    out = Path(cfg.out_dir)
    done = read_done(out, "stage 1")
    if done is not None:
        return done
    manifest = read_manifest(cfg.manifest)
    indices = list_indices(manifest, cfg.split)
    check_batch_vs_workers(cfg.train, len(indices), cfg.relabel)
    _check_shards_per_worker(cfg, manifest)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if 0 not in list_versions(out / LABELS_DIR):
        random_equipartition(indices, cfg.model.num_clusters, seed=cfg.train.seed).save(out / LABELS_DIR)
    connect_ray(cfg.ray_address, num_cpus=_local_cpus(cfg))
    log.info("stage 1: %d samples in %d shards, %d workers, %d epochs, K=%d", len(indices),
             len(manifest.split_shards(cfg.split)), cfg.train.num_workers, cfg.train.epochs, cfg.model.num_clusters)
    actors = cfg.relabel.num_actors * cfg.relabel.actor_cpus if cfg.relabel.mode == "actors" else 0.0
    fitted = fit_to_cluster(train_demand("stage 1", cfg.train.num_workers, 1.0, cfg.stream.read_concurrency,
                                         "stage1.train.num_workers or stage1.stream.read_concurrency",
                                         actor_cpus=actors))
    result = _trainer(cfg, manifest, len(indices), fitted.cpus_per_worker).fit()
    if result.error is not None:
        raise RuntimeError(f"stage 1 failed: {result.error}") from result.error
    table = LabelTable.latest(out / LABELS_DIR)
    labels = out / LABELS_DIR / f"labels-{table.version:06d}.npz"
    summary = {"model": str(out / "model.pt"), "labels": str(labels), "label_version": table.version,
               "num_samples": len(indices), "metrics": json.loads((out / HISTORY).read_text())}
    return write_done(out, summary, [out / "model.pt", labels, out / HISTORY, out / "config.yaml"])


def _check_shards_per_worker(cfg: Stage1Config, manifest: Manifest) -> None:
    """Every split an epoch streams (``split``; DSOL's stage 2 also ``dsol.stage2_split``) has a shard per worker."""
    for split in [cfg.split] + ([cfg.dsol.stage2_split] if cfg.dsol_stage2(cfg.train.epochs - 1) else []):
        shards = len(manifest.split_shards(split))
        if shards == 0 and split != cfg.split:
            raise ConfigError(f"dsol.stage2_epochs {cfg.dsol.stage2_epochs}: DSOL's stage 2 trains on multi-source "
                              f"clips, but split {split!r} has no shards in {cfg.manifest} (the synthetic set makes "
                              f"them with synthetic.num_multi_train_per_class; a CSV lists them under that split); "
                              f"set stage1.dsol.stage2_epochs=0 for stage 1 only")
        if shards < cfg.train.num_workers:
            raise ConfigError(f"train.num_workers {cfg.train.num_workers}: every worker streams whole shards of its "
                              f"own, but split {split!r} has {shards}; lower train.num_workers or re-ingest with "
                              f"fewer videos_per_shard")


def _local_cpus(cfg: Stage1Config) -> int:
    """Logical CPUs for a local Ray: one per train worker plus room for the read tasks (logical slots, not cores)."""
    return max(os.cpu_count() or 1, cfg.train.num_workers + cfg.stream.read_concurrency)
