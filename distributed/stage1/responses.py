"""The iterative method's between-epoch round (``stage1.method=iterative``, :mod:`avdet.iterative`): every sample's
response map R̃ and audio embedding ã under the model of the epoch that just ended, by global sample index — what
eq. 4–7 read as "the previous epoch's". Built like a relabel round: each worker scores its share of the whole
dataset, the rows are all-gathered and put in index order, so every rank holds the same cache whatever the block
order.

Stored as ``<dir>/responses-<version:06d>.npz`` (``indices`` int64, ``maps`` (N, h, w) and ``audio`` (N, C) float16,
``version``), written atomically, loaded with ``allow_pickle=False``; the checkpoint carries it, so a resumed run
reads the same R̃ and ã. Every rank holds N × (h·w + C) halves: 20 M samples at 8×8 and C = 128 would be 7.7 GB, so
at that scale the cache must be sharded by index (issue 19).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avdet.fileio import write_atomic
from avdet.iterative import response_map
from data.stream import to_device
from distributed.cluster.dist import all_gather_rows

_NAME = re.compile(r"^responses-(\d{6,})\.npz$")


@dataclass
class ResponseCache:
    """indices (N,) sorted unique int64; maps (N, h, w) and audio (N, C) float16; version = the epochs behind it."""
    indices: np.ndarray
    maps: np.ndarray
    audio: np.ndarray
    version: int

    def __post_init__(self) -> None:
        self.indices = np.ascontiguousarray(self.indices, dtype=np.int64)
        self.maps = np.ascontiguousarray(self.maps, dtype=np.float16)
        self.audio = np.ascontiguousarray(self.audio, dtype=np.float16)
        n = self.indices.shape[0]
        if self.maps.ndim != 3 or self.audio.ndim != 2 or self.maps.shape[0] != n or self.audio.shape[0] != n:
            raise ValueError(f"ResponseCache: indices {self.indices.shape}, maps {self.maps.shape} and audio "
                             f"{self.audio.shape} must be (N,), (N, h, w) and (N, C)")
        if n > 1 and not bool(np.all(np.diff(self.indices) > 0)):
            raise ValueError("ResponseCache: indices must be sorted and unique (each sample scored once)")

    @classmethod
    def from_rows(cls, index: torch.Tensor, maps: torch.Tensor, audio: torch.Tensor, version: int) -> "ResponseCache":
        order = torch.argsort(index)
        return cls(index[order].numpy(), maps[order].numpy(), audio[order].numpy(), version)

    def __len__(self) -> int:
        return int(self.indices.size)

    def lookup(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """(R̃ (B, h, w), ã (B, C)) float32 of the samples ``index``; an unknown index is a KeyError."""
        idx = torch.as_tensor(index).cpu().numpy().astype(np.int64, copy=False)
        pos = np.minimum(np.searchsorted(self.indices, idx), max(len(self) - 1, 0))
        ok = (self.indices[pos] == idx) if len(self) else np.zeros(idx.shape, bool)
        if not bool(np.all(ok)):
            raise KeyError(f"response cache v{self.version}: {int((~ok).sum())} sample indices were not scored "
                           f"(first: {idx[~ok][:5].tolist()}); it covers {len(self)} samples")
        return (torch.from_numpy(self.maps[pos].astype(np.float32)),
                torch.from_numpy(self.audio[pos].astype(np.float32)))

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"responses-{self.version:06d}.npz"
        write_atomic(path, lambda f: np.savez(f, indices=self.indices, maps=self.maps, audio=self.audio,
                                              version=np.int64(self.version)))
        return path

    @classmethod
    def load(cls, directory: str | Path, version: int) -> "ResponseCache":
        path = Path(directory) / f"responses-{int(version):06d}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"response cache {path} does not exist")
        with np.load(path, allow_pickle=False) as z:
            return cls(z["indices"], z["maps"], z["audio"], int(z["version"]))


@torch.no_grad()
def score_responses(model, stream, version: int) -> tuple[ResponseCache, dict]:
    """This worker's share of the whole dataset -> the cache every rank holds, and the round's statistics (the share
    of patches above each δ is the caller's to read from the maps)."""
    t0 = time.perf_counter()
    model.eval()
    h = model.cfg.image_size // model.cfg.visual_stride
    c = model.cfg.embed_dim
    idx, maps, aud = [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, h * h)], [torch.zeros(0, c)]
    for batch in stream:
        batch = to_device(batch, next(model.parameters()).device, ("frames", "audio"))
        out = model(batch["frames"], batch["audio"])
        idx.append(batch["index"])
        maps.append(response_map(out["vis_emb"], out["aud_emb"]).flatten(1).float())
        aud.append(out["aud_emb"].float())
    rows = [all_gather_rows(torch.cat(t)) for t in (idx, maps, aud)]
    cache = ResponseCache.from_rows(rows[0], rows[1].view(-1, h, h), rows[2], version)
    peak = cache.maps.reshape(len(cache), -1).astype(np.float32)
    stats = {"method": "responses", "num_samples": len(cache), "round_s": time.perf_counter() - t0,
             "map_mean": float(peak.mean()) if len(cache) else 0.0}
    return cache, stats
