"""The per-worker loop of the detector stage (runs inside each Ray Train worker; DDP via ``prepare_model``).

Each worker reads its share of the (frame, pseudo-box, pseudo-class) rows (``ray.train.get_dataset_shard``), runs
:func:`train_one_epoch` (torchvision ``references/detection/engine.py`` style), reports metrics every
``report_every`` steps and a checkpoint every epoch (rank 0 writes it; every rank reports the same number of times,
or Ray Train hangs), and resumes from Ray Train's latest checkpoint after a restart.

Checkpoint directory: ``state.pt`` = ``{"model": unwrapped state_dict, "optimizer": ..., "epoch": last finished,
"step": global step, "resumes": int}`` (``torch.load(weights_only=True)``) and ``history.json`` (per-epoch rows).
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from avdet.augment import augment
from avdet.config import from_dict
from avdet.detector import build_detector
from distributed.cluster import dist
from distributed.cluster.progress import Progress
from distributed.detector.config import DetectorTrainConfig
log = logging.getLogger(__name__)

FAULT_MARKER = "fault_injected"


def to_detection_batch(batch: dict[str, np.ndarray], device, flip_p: float = 0.0,
                       scale_range: tuple[float, float] = (1.0, 1.0), gen: torch.Generator | None = None
                       ) -> tuple[list[torch.Tensor], list[dict]]:
    """``{"frames" (B,H,W,3) uint8, "box" (B,4) xyxy, "cls" (B,) category id}`` -> torchvision detection inputs:
    images [(3,H,W) float in [0, 1]], targets [{"boxes" (1,4) float32, "labels" (1,) int64}]; with ``gen``, each
    image and its box are flipped / scale-jittered (:func:`avdet.augment.augment`) on the CPU first."""
    frames = torch.from_numpy(np.ascontiguousarray(batch["frames"]))
    boxes = torch.as_tensor(np.asarray(batch["box"], np.float32))
    labels = torch.as_tensor(np.asarray(batch["cls"], np.int64), device=device)
    images, targets = [], []
    for i, f in enumerate(frames):
        image, box = f.permute(2, 0, 1).float().div_(255.0), boxes[i:i + 1]
        if gen is not None:
            image, box = augment(image, box, flip_p, scale_range, gen)
        images.append(image.to(device))
        targets.append({"boxes": box.to(device), "labels": labels[i:i + 1]})
    return images, targets


def _agree_next(batch, device) -> bool:
    """All ranks take another step only if every rank has a batch (one int all-reduce; streams may differ)."""
    flag = torch.tensor([0 if batch is None else 1], dtype=torch.int64, device=device)
    if dist.is_dist():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def train_one_epoch(model, optimizer, batches: Iterable[dict], device, epoch: int, step: int,
                    lr_at: Callable[[int, int], float], report: Callable[[dict], None], report_every: int,
                    grad_clip: float = 0.0, writer=None, fault: Callable[[int], None] | None = None,
                    augment_with: Callable | None = None, progress: Progress | None = None) -> tuple[int, dict]:
    """One pass over ``batches`` (numpy blocks, see :func:`to_detection_batch`). Returns (global step, epoch
    metrics averaged over every rank: the four Faster R-CNN losses, ``loss``, ``images``, ``images_per_s``).
    ``augment_with(batch, device)`` replaces :func:`to_detection_batch` (augmented training); ``progress`` (rank 0)
    feeds the console's progress bar."""
    model.train()
    sums: dict[str, float] = {}
    n_steps, n_images, t0 = 0, 0, time.perf_counter()
    it: Iterator = iter(batches)
    while True:
        batch = next(it, None)
        if not _agree_next(batch, device):
            break
        if fault is not None:
            fault(step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, epoch)
        images, targets = (augment_with or to_detection_batch)(batch, device)
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"detector loss is {loss.item()} at epoch {epoch} step {step} "
                                     f"({ {k: v.item() for k, v in loss_dict.items()} }); stopping, last "
                                     f"checkpoint kept")
        optimizer.zero_grad()
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        step, n_steps, n_images = step + 1, n_steps + 1, n_images + len(images)
        parts = {"loss": loss.item(), **{k: v.item() for k, v in loss_dict.items()}}
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        if writer is not None:
            for k, v in parts.items():
                writer.add_scalar(f"detector/{k}", v, step)
            writer.add_scalar("detector/lr", optimizer.param_groups[0]["lr"], step)
        if progress is not None:
            progress.step(epoch, step, len(images) * dist.get_world_size())
        if step % report_every == 0:
            log.info("epoch %d step %d loss %.4f lr %.5f", epoch, step, parts["loss"], optimizer.param_groups[0]["lr"])
            report({"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"], **parts})
    return step, _epoch_means(sums, n_steps, n_images, time.perf_counter() - t0, device)


def _epoch_means(sums: dict[str, float], n_steps: int, n_images: int, seconds: float, device) -> dict:
    """Sum the per-rank totals over every rank: mean losses per step, images and images/s of the whole group."""
    keys = sorted(sums) or ["loss"]
    t = torch.tensor([sums.get(k, 0.0) for k in keys] + [n_steps, n_images], dtype=torch.float64, device=device)
    t = dist.make_reduce()(t, "sum").cpu()
    steps = max(float(t[-2]), 1.0)
    out = {k: float(v) / steps for k, v in zip(keys, t[:-2])}
    out.update({"images": int(t[-1]), "seconds": seconds, "images_per_s": float(t[-1]) / max(seconds, 1e-9)})
    return out


def lr_schedule(lr: float, warmup_steps: int, warmup_factor: float, lr_steps: list[int], lr_gamma: float):
    """lr_at(step, epoch): linear warmup from ``warmup_factor``·lr over ``warmup_steps`` steps (torchvision's
    reference), times ``lr_gamma`` for every epoch boundary in ``lr_steps`` already passed."""
    def lr_at(step: int, epoch: int) -> float:
        factor = lr_gamma ** sum(epoch >= e for e in lr_steps)
        if step < warmup_steps:
            alpha = step / warmup_steps
            factor *= warmup_factor * (1 - alpha) + alpha
        return lr * factor
    return lr_at


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _resume(model, optimizer) -> tuple[int, int, list[dict], int]:
    """(next epoch, global step, history, resumes) from Ray Train's latest checkpoint, or a fresh start."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0, 0, [], 0
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        history = json.loads((Path(d) / "history.json").read_text())
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log.info("detector: resumed from checkpoint after epoch %d (step %d)", state["epoch"], state["step"])
    return state["epoch"] + 1, state["step"], history, state["resumes"] + 1


def _checkpoint_and_report(model, optimizer, epoch: int, step: int, history: list[dict], resumes: int) -> None:
    """Rank 0 writes the checkpoint directory; every rank reports (with or without it)."""
    import ray.train
    from ray.train import Checkpoint

    metrics = {**history[-1], "resumes": resumes}
    if not dist.is_main_process():
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        state = {"model": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
                 "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step, "resumes": resumes}
        torch.save(state, Path(d) / "state.pt")
        (Path(d) / "history.json").write_text(json.dumps(history, indent=1))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))


def _fault_injector(fail_at_step: int, out_dir: Path) -> Callable[[int], None] | None:
    """Fault injection (tests only): rank 0 raises once when reaching ``fail_at_step``; a marker file under
    ``out_dir`` makes sure the restarted worker group does not raise again."""
    if fail_at_step < 0 or not dist.is_main_process():
        return None
    marker = out_dir / FAULT_MARKER

    def fault(step: int) -> None:
        if step == fail_at_step and not marker.exists():
            marker.write_text(json.dumps({"step": step}))
            raise RuntimeError(f"fault injection: fail_at_step={fail_at_step} reached (marker {marker})")
    return fault


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. ``config = {"cfg": resolved DetectorTrainConfig as a dict, "table": the training rows
    of :func:`data.pseudo_coco.training_rows`}`` (``cfg.detector`` already carries K).
    Reproducible: every epoch each rank streams its own part of that epoch's seeded shard order, and the model's
    initialisation, the box samplers and the augmentations draw from generators seeded by ``cfg.seed``."""
    import ray.train
    import ray.train.torch

    from distributed.detector.rows import training_dataset

    cfg = from_dict(DetectorTrainConfig, config["cfg"])
    dist.setup_logging(dist.get_rank())
    torch.manual_seed(cfg.seed)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(build_detector(cfg.detector))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    start_epoch, step, history, resumes = _resume(model, optimizer)
    out = Path(cfg.out_dir)
    writer = _writer(out / "tb") if dist.is_main_process() else None
    lr_at = lr_schedule(cfg.lr, cfg.warmup_steps, cfg.warmup_factor, cfg.lr_steps, cfg.lr_gamma)
    fault = _fault_injector(cfg.fail_at_step, out)
    part = (dist.get_rank(), dist.get_world_size())
    steps = max(1, len(config["table"]["index"]) // (cfg.batch_size * dist.get_world_size()))
    progress = Progress(out, "detector", cfg.epochs, steps, "images") if dist.is_main_process() else None
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 1009 + epoch)            # box samplers: the same draws after a resume
        gen = torch.Generator().manual_seed((cfg.seed * 1009 + epoch) * 64 + dist.get_rank())
        batches = training_dataset(cfg, config["table"], epoch=epoch, part=part).iter_batches(
            batch_size=cfg.batch_size, batch_format="numpy", prefetch_batches=cfg.stream.prefetch_batches,
            local_shuffle_buffer_size=cfg.stream.shuffle_buffer or None,
            local_shuffle_seed=cfg.seed + epoch if cfg.stream.shuffle_buffer else None)
        augmented = (lambda b, d: to_detection_batch(b, d, cfg.hflip, tuple(cfg.scale_jitter), gen)) \
            if cfg.augments() else None
        step, stats = train_one_epoch(model, optimizer, batches, device, epoch, step, lr_at,
                                      ray.train.report, cfg.report_every, cfg.grad_clip, writer, fault, augmented,
                                      progress)
        history.append({"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"], **stats})
        log.info("detector epoch %d: loss %.4f, %d images, %.1f images/s", epoch, stats["loss"], stats["images"],
                 stats["images_per_s"])
        if writer is not None:
            for k, v in history[-1].items():
                writer.add_scalar(f"epoch/{k}", v, epoch)
            writer.flush()
        _checkpoint_and_report(model, optimizer, epoch, step, history, resumes)
    if writer is not None:
        writer.close()
    if progress is not None:
        progress.close()


def _writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(path))
