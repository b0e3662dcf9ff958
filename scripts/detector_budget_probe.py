"""Which detector fits a time budget? Train and inference images/s of detector variants, measured interleaved.

    python scripts/detector_budget_probe.py [--size 128] [--batch-size 8] [--classes 9] [--threads 2]
        [--rounds 5] [--steps 2] [--variant NAME:key=value,key=value ...] [--out probe.json]

Each variant is a ``DetectorConfig`` (``avdet.config``) given as overrides of the demo's detector at ``--size`` px;
list values are written ``a/b/c`` (``returned_layers=2/3/4``). Without ``--variant``: the demo's mobilenet_v3_fpn
with 128 RoIs per image, and resnet18_fpn with 128 and 32 RoIs, each on all four ResNet stages and on stages 2-4.
Every arm runs our training step (``distributed.detector.worker.train_one_epoch``, SGD, one process, no Ray) and
``avdet.detector.detect`` on the same synthetic uint8 batch with one random box per image, in interleaved blocks
under the same thread budget (``benchmarks.common.interleaved_rates``, median block rate). Data loading, the
stream and the collectives are excluded: this ranks architectures, it does not predict a pipeline's wall time.
Prints a markdown table and writes JSON with ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

import torch  # noqa: E402

from avdet.config import DetectorConfig  # noqa: E402
from avdet.detector import build_detector  # noqa: E402
from benchmarks.common import interleaved_rates  # noqa: E402
from benchmarks.detector import ours_infer_fn, ours_train_fn, synthetic_batch  # noqa: E402

DEFAULT_VARIANTS = [
    "mobilenet-128:backbone=mobilenet_v3_fpn,box_batch_size_per_image=128",
    "r18-128:backbone=resnet18_fpn,box_batch_size_per_image=128",
    "r18-32:backbone=resnet18_fpn,box_batch_size_per_image=32",
    "r18-128-l234:backbone=resnet18_fpn,box_batch_size_per_image=128,returned_layers=2/3/4",
    "r18-32-l234:backbone=resnet18_fpn,box_batch_size_per_image=32,returned_layers=2/3/4",
]


def parse_variant(text: str, base: DetectorConfig) -> tuple[str, DetectorConfig]:
    """``NAME:key=value,...`` -> (NAME, ``base`` with those fields replaced, checked)."""
    name, _, body = text.partition(":")
    fields = {f.name: f for f in dataclasses.fields(DetectorConfig)}
    changes = {}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"detector_budget_probe: bad override {item!r} in --variant {text!r} "
                             f"(key=value with key one of {sorted(fields)})")
        old = getattr(base, key)
        try:
            if isinstance(old, list) or "/" in value:
                changes[key] = [int(v) for v in value.split("/")]
            elif isinstance(old, bool):
                changes[key] = value.lower() in ("1", "true", "yes")
            elif isinstance(old, (int, float)):
                changes[key] = type(old)(value)
            else:
                changes[key] = value
        except ValueError:
            raise SystemExit(f"detector_budget_probe: {key}={value!r} in --variant {text!r} is not a "
                             f"{type(old).__name__}{' (write lists a/b/c)' if isinstance(old, list) else ''}")
    cfg = dataclasses.replace(base, **changes)
    cfg.check()
    return name or text, cfg


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="python scripts/detector_budget_probe.py", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="timed blocks per arm")
    p.add_argument("--steps", type=int, default=2, help="train steps (and inference batches) per block")
    p.add_argument("--variant", action="append", default=[], help="NAME:key=value,... (repeatable)")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = DetectorConfig(num_classes=args.classes, min_size=args.size, max_size=args.size,
                          rpn_post_nms_top_n_train=500, rpn_post_nms_top_n_test=100)
    variants = [parse_variant(v, base) for v in (args.variant or DEFAULT_VARIANTS)]
    batch = synthetic_batch(args.batch_size, args.size, args.classes)
    train_arms, infer_arms = {}, {}
    for name, cfg in variants:
        torch.manual_seed(0)
        model = build_detector(cfg)
        train_arms[name] = (ours_train_fn(model, batch, args.steps), args.batch_size * args.steps)
        infer_arms[name] = (ours_infer_fn(model, batch), args.batch_size)
    train = interleaved_rates(train_arms, args.rounds, 1)
    infer = interleaved_rates(infer_arms, args.rounds, args.steps)
    rows = [{"variant": name, "train_images_per_s": train[name], "infer_images_per_s": infer[name],
             "config": dataclasses.asdict(cfg)} for name, cfg in variants]
    print(f"| variant ({args.size} px, batch {args.batch_size}, {args.threads} threads) | train images/s "
          f"| inference images/s |\n|:---|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['train_images_per_s']:.1f} | {r['infer_images_per_s']:.1f} |")
    doc = {"argv": argv, "threads": args.threads, "cores": os.cpu_count(), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
