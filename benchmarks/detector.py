"""Detector throughput: a plain torchvision Faster R-CNN loop vs our detector path (build_detector +
``distributed.detector.worker.train_one_epoch`` / ``avdet.detector.detect``), train and inference images/s.

    python -m benchmarks.detector           # mobilenet_v3_fpn at 128 px, batch 8, K=309; writes out/detector.json
    python -m benchmarks.detector --tiny    # seconds-long smoke run

Both arms get the same synthetic uint8 frames with one random box each and start from identically initialised
models; data loading is excluded. Our train arm calls ``train_one_epoch`` on a list of ``--steps`` numpy batches
(its per-step all-ranks agreement, lr schedule and loss bookkeeping included; one process, no Ray), the plain arm
is the torchvision reference loop inlined. Arms run in interleaved blocks (shared machine) and the figure is the
median block rate; the overheads are the median over rounds of back-to-back blocks, with their quartiles (whole
runs of 5 rounds gave train overheads from −8.5 to +11.8 % on 2026-12-06). Ray Train with one worker is not
measured here: its per-step path is the same function, and its start-up and streaming costs belong to
benchmarks.stream / end_to_end.
"""
from __future__ import annotations

import argparse
import logging
import os

import numpy as np
import torch
import torchvision

from avdet.config import DetectorConfig
from avdet.detector import build_detector
from benchmarks.common import add_common_args, finish, interleaved_rates, loadavg, paired_overhead
from avdet.detector import detect
from distributed.detector.worker import to_detection_batch, train_one_epoch

log = logging.getLogger("benchmarks.detector")


def synthetic_batch(n: int, size: int, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    """{"frames" (n,size,size,3) uint8, "box" (n,4) xyxy float32, "cls" (n,) in 1..k, "index"} like the stream."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size / 2, (n, 2))
    wh = rng.uniform(size / 8, size / 2, (n, 2))
    return {"frames": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            "box": np.concatenate([xy, xy + wh], 1).astype(np.float32),
            "cls": rng.integers(1, k + 1, n), "index": np.arange(n)}


def plain_model(cfg: DetectorConfig) -> torch.nn.Module:
    """torchvision's builder called directly, as a user of torchvision would."""
    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=cfg.num_classes + 1, min_size=cfg.min_size,
        max_size=cfg.max_size, box_fg_iou_thresh=cfg.fg_iou, box_bg_iou_thresh=cfg.bg_iou)


def _sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9,
                           weight_decay=1e-4)


def plain_train_fn(model, batch: dict, steps: int):
    """The torchvision reference step (images/targets built per step, as a loader would hand them over)."""
    opt = _sgd(model)

    def run():
        model.train()
        for _ in range(steps):
            frames = torch.from_numpy(batch["frames"])
            images = [f.permute(2, 0, 1).float() / 255.0 for f in frames]
            targets = [{"boxes": torch.from_numpy(batch["box"][i:i + 1]),
                        "labels": torch.as_tensor(batch["cls"][i:i + 1], dtype=torch.int64)}
                       for i in range(len(images))]
            loss = sum(model(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return run


def ours_train_fn(model, batch: dict, steps: int):
    """Our per-worker loop, ``train_one_epoch`` over ``steps`` copies of the batch (no Ray, no process group)."""
    opt = _sgd(model)
    state = {"step": 0}

    def run():
        state["step"], _ = train_one_epoch(model, opt, [batch] * steps, torch.device("cpu"), 0, state["step"],
                                           lambda s, e: 0.005, lambda m: None, report_every=10**9)
    return run


def plain_infer_fn(model, batch: dict):
    images, _ = to_detection_batch(batch, "cpu")

    def run():
        model.eval()
        with torch.no_grad():
            model(images)
    return run


def ours_infer_fn(model, batch: dict):
    return lambda: detect(model, batch["frames"])


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.detector", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--classes", type=int, default=309)
    p.add_argument("--steps", type=int, default=2, help="train steps per timed block")
    p.add_argument("--rounds", type=int, default=9, help="timed blocks per arm")
    add_common_args(p, "detector")
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.batch_size, args.classes, args.steps, args.rounds = 64, 2, 5, 1, 2
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = list(argv or [])
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    load0 = loadavg()
    cfg = DetectorConfig(backbone="mobilenet_v3_fpn", num_classes=args.classes, min_size=args.size,
                         max_size=args.size)
    batch = synthetic_batch(args.batch_size, args.size, args.classes)
    plain = plain_model(cfg)
    torch.manual_seed(0)
    ours = build_detector(cfg)
    n = args.batch_size
    train_blocks: dict[str, list[float]] = {}
    infer_blocks: dict[str, list[float]] = {}
    train = interleaved_rates({"plain": (plain_train_fn(plain, batch, args.steps), n * args.steps),
                               "ours": (ours_train_fn(ours, batch, args.steps), n * args.steps)},
                              args.rounds, 1, blocks=train_blocks)
    infer = interleaved_rates({"plain": (plain_infer_fn(plain, batch), n), "ours": (ours_infer_fn(ours, batch), n)},
                              args.rounds, args.steps, blocks=infer_blocks)
    train_ov, infer_ov = (paired_overhead(b, "ours", "plain") for b in (train_blocks, infer_blocks))
    fig = {"train_images_per_s_plain": train["plain"], "train_images_per_s_ours": train["ours"],
           "infer_images_per_s_plain": infer["plain"], "infer_images_per_s_ours": infer["ours"],
           "train_overhead_pct": train_ov["median"], "train_overhead_pct_quartiles": train_ov["quartiles"],
           "infer_overhead_pct": infer_ov["median"], "infer_overhead_pct_quartiles": infer_ov["quartiles"],
           "blocks": {"train": train_blocks, "infer": infer_blocks},
           "size": args.size, "batch_size": n, "classes": args.classes, "threads": torch.get_num_threads(),
           "cores": os.cpu_count(), "loadavg_1m_start_end": [load0, loadavg()]}
    (tq1, tq3), (iq1, iq3) = train_ov["quartiles"], infer_ov["quartiles"]
    summary = (f"Faster R-CNN mobilenet_v3_fpn {args.size}px batch {n} K={args.classes}: train plain "
               f"{train['plain']:.2f} vs ours {train['ours']:.2f} images/s (overhead per round: median "
               f"{train_ov['median']:.1f}%, quartiles {tq1:.1f} to {tq3:.1f}); "
               f"inference plain {infer['plain']:.1f} vs ours {infer['ours']:.1f} images/s (median "
               f"{infer_ov['median']:.1f}%, quartiles {iq1:.1f} to {iq3:.1f}); "
               f"load avg {load0:.1f}->{fig['loadavg_1m_start_end'][1]:.1f}")
    path = finish("detector", fig, summary, argv, args)
    log.info("%s -> %s", summary, path)
    return fig


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
