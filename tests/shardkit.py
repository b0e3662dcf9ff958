"""Helpers for tests: tiny valid samples and hand-made (possibly broken) shards."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from data.schema import SampleMeta, encode_mel, encode_sample
from data.shards import ShardInfo, ShardWriter, sha256_file, write_manifest

FRAME = 16
SR = 16000
WINDOW_S = 0.1
NUM_SAMPLES = int(SR * WINDOW_S)
CONFIG = {"frame_size": FRAME, "audio": {"sample_rate": SR, "window_s": WINDOW_S}}
CLASSES = ["cat", "dog"]


def sample(i: int, label: str | None = "dog", frame_size: int = FRAME, num_samples: int = NUM_SAMPLES,
           mel_audio=None) -> dict:
    """Sample ``i``; with ``mel_audio`` (an AudioConfig) also its stored log-mel, as ``ingest.store_logmel`` does."""
    rng = np.random.default_rng(i)
    frame = np.full((frame_size, frame_size, 3), (i * 37) % 256, np.uint8)
    wav = rng.integers(-3000, 3000, num_samples).astype(np.int16)
    meta = SampleMeta(i, f"v{i}", 0.5 * i, label, "train", 64, 48)
    mel = None
    if mel_audio is not None:
        from avdet.audio import log_mel, logmel_key
        mel = encode_mel(log_mel(wav.astype(np.float32) / 32768.0, mel_audio)[0], logmel_key(mel_audio))
    return encode_sample(meta, frame, wav, SR, mel=mel)


def write_dataset(out: Path, counts: list[int], split: str = "train", mel_audio=None) -> list[ShardInfo]:
    """Shards of consecutive indices, ``counts[k]`` samples in shard k; manifest written. ``mel_audio``: the set
    stores the log-mel of those audio settings (manifest ``store_logmel``, ``logmel_key``)."""
    w, infos, i = ShardWriter(out), [], 0
    for k, n in enumerate(counts):
        infos.append(w.write(split, k, [sample(j, CLASSES[j % 2], mel_audio=mel_audio) for j in range(i, i + n)]))
        i += n
    config = CONFIG
    if mel_audio is not None:
        from avdet.audio import logmel_key
        config = {**CONFIG, "store_logmel": True, "logmel_key": logmel_key(mel_audio)}
    write_manifest(out, infos, CLASSES, config)
    return infos


def write_raw_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))


def members_of(samples: list[dict]) -> list[tuple[str, bytes]]:
    return [(f"{s['__key__']}.{ext}", s[ext]) for s in samples for ext in sorted(s) if not ext.startswith("__")]


def manifest_for_raw(out: Path, name: str, count: int, lo: int, hi: int) -> None:
    info = ShardInfo(path=name, split="train", count=count, min_index=lo, max_index=hi,
                     sha256=sha256_file(out / name))
    write_manifest(out, [info], CLASSES, CONFIG)
