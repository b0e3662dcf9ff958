"""Test fixtures for the pseudo-annotation and detector stages: a two-split toy shard set (unique indices across
splits), an untrained stage-1 artifact, and ground-truth COCO boxes of the toy squares."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from avdet.config import ModelConfig, save_config
from avdet.model import AVModel
from data.schema import SampleMeta, encode_sample
from data.shards import ShardWriter, write_manifest
from distributed.stage1.config import Stage1Config
from tests.avshards import toy_sample

K = 3
SIZE = 64


def make_two_split_shards(out_dir: Path, n_train: int = 24, n_test: int = 9, per_shard: int = 12,
                          seed: int = 0, size: int = SIZE) -> tuple[Path, dict[int, tuple]]:
    """Shards of both splits in one manifest; train indices 0..n_train-1, test 1000.. . Returns (manifest path,
    {index: (x0, y0, x1, y1, class)} of the coloured squares)."""
    rng = np.random.default_rng(seed)
    classes = [f"class{c}" for c in range(K)]
    writer, infos, truth = ShardWriter(out_dir), [], {}
    for split, start, n in (("train", 0, n_train), ("test", 1000, n_test)):
        for shard_no, s0 in enumerate(range(0, n, per_shard)):
            samples = []
            for index in range(start + s0, start + min(s0 + per_shard, n)):
                cls = index % K
                frame, audio, box = toy_sample(index, cls, size, 16000, rng)
                truth[index] = (*box, cls)
                meta = SampleMeta(index=index, video_id=f"vid{index // 4:05d}", timestamp=0.5 * (index % 4),
                                  label=classes[cls], split=split, orig_width=size, orig_height=size)
                samples.append(encode_sample(meta, frame, audio, 16000))
            infos.append(writer.write(split, shard_no, samples))
    path = write_manifest(out_dir, infos, classes, {"frame_size": size, "audio": {"sample_rate": 16000,
                                                                                   "window_s": 1.0}})
    return path, truth


def make_stage1_artifact(out_dir: Path, manifest: Path) -> Path:
    """An untrained tiny AVModel saved like stage 1 does: ``model.pt`` (state_dict) + ``config.yaml``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    mcfg = ModelConfig(image_size=SIZE, visual_width=8, audio_width=8, num_clusters=K, embed_dim=16)
    torch.save(AVModel(mcfg).state_dict(), out_dir / "model.pt")
    save_config(Stage1Config(manifest=str(manifest), out_dir=str(out_dir), model=mcfg), out_dir / "config.yaml")
    return out_dir


def write_truth_pseudo(out_dir: Path, truth: dict[int, tuple], split: str = "train", size: int = SIZE) -> Path:
    """``pseudo_<split>.json`` whose boxes/classes are the toy squares (a perfect stage 1), for detector tests."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [i for i in sorted(truth) if (i < 1000) == (split == "train")]
    images = [{"id": i, "file_name": f"#{i}", "width": size, "height": size} for i in ids]
    anns = [{"id": n + 1, "image_id": i, "bbox": [truth[i][0], truth[i][1], truth[i][2] - truth[i][0],
                                                    truth[i][3] - truth[i][1]],
             "category_id": truth[i][4] + 1, "score": 1.0, "area": float((truth[i][2] - truth[i][0]) ** 2),
             "iscrowd": 0} for n, i in enumerate(ids)]
    doc = {"images": images, "annotations": anns, "categories": [{"id": k + 1, "name": f"cluster{k}"}
                                                                 for k in range(K)]}
    path = out_dir / f"pseudo_{split}.json"
    path.write_text(json.dumps(doc))
    return path
