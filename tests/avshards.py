"""Tiny audio-visual shards written straight through the shard writer (no video): class c is a square of colour c
at a random place on a noisy background, with a tone of frequency 300·(c+1) Hz. Enough signal for stage 1 to learn."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.schema import SampleMeta, encode_sample
from data.shards import ShardWriter, write_manifest

COLOURS = np.array([[230, 30, 30], [30, 200, 30], [40, 60, 230], [230, 220, 40], [200, 40, 220], [40, 220, 220]])


def toy_sample(index: int, cls: int, size: int, sample_rate: int, rng: np.random.Generator):
    frame = rng.integers(60, 120, size=(size, size, 3)).astype(np.uint8)
    side = size // 3
    y, x = rng.integers(0, size - side, size=2)
    frame[y:y + side, x:x + side] = COLOURS[cls % len(COLOURS)]
    t = np.arange(sample_rate) / sample_rate
    audio = 0.5 * np.sin(2 * np.pi * 300 * (cls + 1) * t) + 0.05 * rng.standard_normal(sample_rate)
    return frame, audio.astype(np.float32), (int(x), int(y), int(x + side), int(y + side))


def toy_duet(cls: tuple[int, int], size: int, sample_rate: int, rng: np.random.Generator):
    """Two toy objects (classes ``cls``) side by side, both sounding: the tones mixed."""
    (f0, a0, _), (f1, a1, _) = (toy_sample(0, c, size, sample_rate, rng) for c in cls)
    frame = np.concatenate([f0[:, : size // 2], f1[:, size // 2:]], axis=1)
    return frame, (0.5 * (a0 + a1)).astype(np.float32)


def make_toy_shards(out_dir: str | Path, num_classes: int = 3, per_class: int = 16, size: int = 64,
                    per_shard: int = 16, sample_rate: int = 16000, seed: int = 0, split: str = "train",
                    multi_per_class: int = 0) -> Path:
    """Write shards + manifest; returns the manifest path. Indices are 0..N-1, labels are the class names.
    ``multi_per_class``: also that many duets per class (split ``train_multi``, indices from N on, labelled with
    their first class; the left half of the frame is one class, the right half the next, both sounding)."""
    rng = np.random.default_rng(seed)
    classes = [f"class{c}" for c in range(num_classes)]
    order = rng.permutation(np.arange(num_classes * per_class) % num_classes)
    writer = ShardWriter(out_dir)
    infos = []
    for shard_no, start in enumerate(range(0, len(order), per_shard)):
        samples = []
        for index in range(start, min(start + per_shard, len(order))):
            cls = int(order[index])
            frame, audio, _ = toy_sample(index, cls, size, sample_rate, rng)
            meta = SampleMeta(index=index, video_id=f"vid{index:05d}", timestamp=0.5, label=classes[cls],
                              split=split, orig_width=size, orig_height=size)
            samples.append(encode_sample(meta, frame, audio, sample_rate))
        infos.append(writer.write(split, shard_no, samples))
    first = len(order)
    for shard_no, start in enumerate(range(0, num_classes * multi_per_class, per_shard)):
        samples = []
        for k in range(start, min(start + per_shard, num_classes * multi_per_class)):
            cls = (k % num_classes, (k + 1) % num_classes)
            frame, audio = toy_duet(cls, size, sample_rate, rng)
            meta = SampleMeta(index=first + k, video_id=f"duet{k:05d}", timestamp=0.5, label=classes[cls[0]],
                              split="train_multi", orig_width=size, orig_height=size)
            samples.append(encode_sample(meta, frame, audio, sample_rate))
        infos.append(writer.write("train_multi", shard_no, samples))
    return write_manifest(out_dir, infos, classes,
                          {"frame_size": size, "audio": {"sample_rate": sample_rate, "window_s": 1.0}})
