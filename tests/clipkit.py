"""Tiny H.264/AAC test clips written with PyAV (and broken ones) for the ingest tests."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_clip(path: Path, seconds: float = 1.0, size: int = 64, fps: int = 10, audio: bool = True,
               sample_rate: int = 16000) -> Path:
    """H.264 (+ AAC mono 440 Hz tone) mp4 of ``seconds`` with a moving gradient."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        as_ = out.add_stream("aac", rate=sample_rate, layout="mono") if audio else None
        n = int(round(seconds * fps))
        for i in range(n):
            img = np.zeros((size, size, 3), np.uint8)
            img[..., 0] = (np.arange(size)[None, :] * 4 + i * 8) % 256
            img[..., 1] = 255 * i // max(1, n)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if as_ is not None:
            total = int(seconds * sample_rate)
            t = np.arange(total) / sample_rate
            wav = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
            for s0 in range(0, total, 1024):
                chunk = wav[s0:s0 + 1024]
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
                af.sample_rate = sample_rate
                af.pts = s0
                af.time_base = Fraction(1, sample_rate)
                out.mux(as_.encode(af))
            out.mux(as_.encode(None))
    return path
