"""The iterative method's between-epoch round (distributed/stage1/responses.py): two processes give the one-process
cache, the cache's file round trip, and a lookup of an unscored sample is named."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avdet.config import ModelConfig
from avdet.model import AVModel
from distributed.cluster.dist import spawn_loopback
from distributed.stage1.responses import ResponseCache, score_responses

CFG = ModelConfig(image_size=32, visual_width=4, audio_width=4, embed_dim=8, num_clusters=3)


def _batches():
    g = torch.Generator().manual_seed(0)
    return [{"frames": torch.randn(5, 3, 32, 32, generator=g), "audio": torch.randn(5, 1, 16, 20, generator=g),
             "index": torch.arange(5) * 3 + 100 * b} for b in range(3)]


def _model():
    torch.manual_seed(0)
    return AVModel(CFG)


def _job(rank: int, world_size: int, out_dir: str) -> None:
    mine = [b for i, b in enumerate(_batches()) if i % 2 == rank]        # rank 1 holds one batch, rank 0 two
    cache, stats = score_responses(_model(), mine, version=4)
    cache.save(f"{out_dir}/rank{rank}")


def test_two_processes_build_the_one_process_cache(tmp_path):
    ref, stats = score_responses(_model(), list(reversed(_batches())), version=4)   # order does not matter
    assert len(ref) == 15 and stats["num_samples"] == 15 and ref.maps.shape == (15, 2, 2)
    assert np.all(np.diff(ref.indices) > 0)
    flat = ref.maps.reshape(15, -1).astype(np.float32)            # min-max normalised: each map spans 0 .. 1
    assert np.allclose(flat.min(1), 0.0) and np.allclose(flat.max(1), 1.0, atol=1e-3)
    spawn_loopback(_job, 2, str(tmp_path))
    for r in (0, 1):
        got = ResponseCache.load(tmp_path / f"rank{r}", 4)
        assert np.array_equal(got.indices, ref.indices) and got.version == 4
        assert np.allclose(got.maps, ref.maps, atol=1e-3) and np.allclose(got.audio, ref.audio, atol=1e-3)


def test_round_trip_and_lookup(tmp_path):
    cache = ResponseCache(np.array([2, 5, 9]), np.random.rand(3, 2, 2), np.random.rand(3, 4), version=1)
    back = ResponseCache.load(cache.save(tmp_path).parent, 1)
    assert np.array_equal(back.indices, cache.indices) and np.array_equal(back.maps, cache.maps)
    maps, audio = back.lookup(torch.tensor([9, 2]))
    assert maps.dtype == torch.float32 and torch.equal(maps[0], torch.from_numpy(cache.maps[2].astype(np.float32)))
    assert torch.equal(audio[1], torch.from_numpy(cache.audio[0].astype(np.float32)))
    with pytest.raises(KeyError, match="1 sample indices were not scored"):
        back.lookup(torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="sorted and unique"):
        ResponseCache(np.array([5, 2]), np.zeros((2, 1, 1)), np.zeros((2, 1)), 0)
