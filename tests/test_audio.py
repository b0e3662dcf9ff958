"""Log-mel features: shapes, lengths, and that a tone lands in the right mel band."""
import numpy as np
import pytest
import torch

from avdet.audio import LogMel, fit_length, log_mel, num_frames
from avdet.config import AudioConfig


def test_default_shape_is_64_by_101():
    cfg = AudioConfig()
    out = LogMel(cfg)(torch.randn(2, cfg.num_samples))
    assert out.shape == (2, 1, 64, 101) == (2, 1, cfg.n_mels, num_frames(cfg)) and out.dtype == torch.float32
    assert torch.equal(LogMel(cfg)(torch.zeros(2, 1, cfg.num_samples)).flatten().unique(),
                       torch.log(torch.tensor([1e-6])))


def test_wrong_length_is_padded_or_cropped():
    cfg = AudioConfig()
    m = LogMel(cfg)
    assert m(torch.randn(1, 12000)).shape == m(torch.randn(1, 1, 20000)).shape == (1, 1, 64, 101)
    assert fit_length(torch.arange(6.0), 4).tolist() == [1, 2, 3, 4]
    assert fit_length(torch.arange(2.0), 4).tolist() == [0, 1, 0, 0]
    with pytest.raises(ValueError):
        m(torch.randn(1, 2, 16000))


def test_log_mel_numpy_and_tone_band():
    cfg = AudioConfig()
    t = np.arange(cfg.num_samples) / cfg.sample_rate
    low, high = (log_mel(np.sin(2 * np.pi * f * t), cfg) for f in (300.0, 3000.0))
    assert low.shape == (1, 64, 101) and low.dtype == np.float32
    assert low[0].mean(1).argmax() < high[0].mean(1).argmax()
