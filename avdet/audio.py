"""Waveform -> log-mel spectrogram, the audio input a of the pair (v, a) (paper §3.1, METHOD.md §2).

16 kHz mono, a ``window_s`` window, ``n_mels`` mel bins (torchaudio), log(power + 1e-6). With the defaults
(1 s, hop 160, centred frames) the spectrogram is 64 × 101. Waveforms of the wrong length are zero-padded or
centre-cropped to ``AudioConfig.num_samples`` so every spectrogram has the same T.
"""
from __future__ import annotations

import numpy as np
import torch
import torchaudio
from torch import nn

from .config import AudioConfig

LOG_EPS = 1e-6


def fit_length(wave: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Zero-pad (at the end) or centre-crop the last dimension of ``wave`` (..., L) to ``num_samples``."""
    length = wave.shape[-1]
    if length == num_samples:
        return wave
    if length > num_samples:
        start = (length - num_samples) // 2
        return wave[..., start:start + num_samples]
    return torch.nn.functional.pad(wave, (0, num_samples - length))


def num_frames(cfg: AudioConfig) -> int:
    """T, the number of spectrogram frames of one window (centred STFT): 1 + num_samples // hop_length."""
    return 1 + cfg.num_samples // cfg.hop_length


class LogMel(nn.Module):
    """(B, L) or (B, 1, L) float waveform -> (B, 1, n_mels, T) float32 log-mel spectrogram."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.num_samples = cfg.num_samples
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
            f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels, power=2.0, center=True)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() == 3:
            if wave.shape[1] != 1:
                raise ValueError(f"LogMel: expected mono audio (B, 1, L), got shape {tuple(wave.shape)}")
            wave = wave[:, 0]
        if wave.dim() != 2:
            raise ValueError(f"LogMel: expected (B, L) or (B, 1, L), got shape {tuple(wave.shape)}")
        wave = fit_length(wave.float(), self.num_samples)
        return torch.log(self.mel(wave) + LOG_EPS).unsqueeze(1)


def logmel_key(cfg: AudioConfig) -> int:
    """A fingerprint (uint32) of the log-mel settings: a log-mel computed with other settings is refused, not used
    (blocks of the Ray path, and the ``mel`` entries stored at ingest)."""
    import json
    import zlib

    from .config import to_dict
    return zlib.crc32(json.dumps(to_dict(cfg), sort_keys=True).encode())


def log_mel(waveform: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """One mono waveform (L,) (or (1, L)) -> (1, n_mels, T) float32 log-mel, as a decoded batch holds per sample."""
    wave = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).reshape(1, -1)
    with torch.no_grad():
        return LogMel(cfg)(wave)[0].numpy()
