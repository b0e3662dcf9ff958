"""Decode one clip with PyAV: frames at a fixed rate, resized, and 16 kHz mono audio windows centred on them.

Every way a file can be unusable raises :class:`VideoError` with a short ``reason`` (``missing_file``,
``wrong_extension``, ``empty_file``, ``unreadable``, ``no_video_stream``, ``no_audio_track``, ``too_large``,
``no_frames``, ``decode_error``, ``unsafe_name``, ``too_long``) that the ingest report lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from avdet.fileio import UnsafePathError, safe_name

VIDEO_EXTS = ("mp4", "mkv", "webm")


class VideoError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Clip:
    frames: list[tuple[float, np.ndarray]]    # (time in s from the file's start, (S, S, 3) uint8 RGB)
    audio: np.ndarray                          # (N,) int16 at sample_rate, sample 0 at time audio_start
    audio_start: float
    orig_width: int
    orig_height: int


def candidate_names(youtube_id: str, start: int) -> list[str]:
    """File stems tried in order: ``<id>_<start:06d>``, ``<id>_<start>``, ``<id>``."""
    return [f"{youtube_id}_{start:06d}", f"{youtube_id}_{start}", youtube_id]


def find_video(videos_dir: str | Path, youtube_id: str, start: int) -> Path:
    """Path of the clip, or VideoError(``missing_file`` / ``wrong_extension``)."""
    root = Path(videos_dir)
    try:
        safe_name(youtube_id, "youtube_id")
    except UnsafePathError as e:
        raise VideoError("unsafe_name", str(e)) from None
    stems = candidate_names(youtube_id, start)
    for stem in stems:
        for ext in VIDEO_EXTS:
            p = root / f"{stem}.{ext}"
            if p.is_file():
                return p
    others = [p.name for stem in stems for p in root.glob(f"{stem}.*") if p.is_file()]
    if others:
        raise VideoError("wrong_extension", f"found {others}, expected one of {VIDEO_EXTS}")
    raise VideoError("missing_file", f"none of {[s + '.{' + ','.join(VIDEO_EXTS) + '}' for s in stems]}")


def decode_clip(path: str | Path, fps: float, frame_size: int, sample_rate: int, max_pixels: int,
                max_frames: int, max_duration_s: float = 600.0) -> Clip:
    """Frames at times k/fps (k = 0, 1, ...; at most ``max_frames``) and the whole audio track resampled.

    A file longer than ``max_duration_s`` is ``too_long``: refused from its container/stream duration before any
    decoding, and the audio decoding stops there too when the header understates it (the whole track is held in
    memory, so an unbounded one is a way to exhaust it)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise VideoError("empty_file", f"{path.name} has 0 bytes")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise VideoError("unreadable", f"{type(e).__name__}: {e}") from None
    with container:
        if not container.streams.video:
            raise VideoError("no_video_stream", f"streams: {[s.type for s in container.streams]}")
        if not container.streams.audio:
            raise VideoError("no_audio_track", f"streams: {[s.type for s in container.streams]}")
        vs = container.streams.video[0]
        w, h = vs.codec_context.width, vs.codec_context.height
        if w * h > max_pixels:
            raise VideoError("too_large", f"{w}x{h} > max_pixels {max_pixels}")
        duration = _duration_s(container)
        if duration is not None and duration > max_duration_s:
            raise VideoError("too_long", f"{duration:.1f} s > max_duration_s {max_duration_s:g} (from its header); "
                             f"not decoded")
        try:
            frames = _decode_frames(container, fps, frame_size, max_frames)
        except av.error.FFmpegError as e:
            raise VideoError("decode_error", f"video: {type(e).__name__}: {e}") from None
    if not frames:
        raise VideoError("no_frames", "the video stream decoded to no frames")
    audio, audio_start = _decode_audio(path, sample_rate, max_duration_s)
    return Clip(frames=frames, audio=audio, audio_start=audio_start, orig_width=w, orig_height=h)


def _decode_frames(container, fps: float, size: int, max_frames: int) -> list[tuple[float, np.ndarray]]:
    """Each target time k/fps takes the first decoded frame that covers it (frame time + half a frame period)."""
    vs = container.streams.video[0]
    rate = float(vs.average_rate) if vs.average_rate else 25.0
    half = 0.5 / rate
    out: list[tuple[float, np.ndarray]] = []
    k = 0
    for frame in container.decode(vs):
        t = frame.time if frame.time is not None else 0.0
        while k < max_frames and k / fps <= t + half:
            img = frame.to_ndarray(format="rgb24", width=size, height=size)
            out.append((k / fps, img))
            k += 1
        if k >= max_frames:
            break
    return out


def _duration_s(container) -> float | None:
    """Longest duration the container or any of its streams declares, in s; None when none does."""
    found = [container.duration / av.time_base] if container.duration is not None else []
    found += [float(s.duration * s.time_base) for s in container.streams if s.duration is not None and s.time_base]
    return max(found) if found else None


def _decode_audio(path: Path, sample_rate: int, max_duration_s: float = 600.0) -> tuple[np.ndarray, float]:
    """Whole audio track -> ((N,) int16 mono at ``sample_rate``, time of its first sample in s); VideoError
    ``too_long`` as soon as more than ``max_duration_s`` of it is decoded."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    start = None
    limit, total = int(max_duration_s * sample_rate), 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                if start is None:
                    start = float(frame.time or 0.0)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += len(chunks[-1])
                if total > limit:
                    raise VideoError("too_long", f"audio decoded past max_duration_s {max_duration_s:g} s (the "
                                     f"header did not say so); stopped")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as e:
        raise VideoError("decode_error", f"audio: {type(e).__name__}: {e}") from None
    if not chunks:
        raise VideoError("no_audio_track", "the audio stream decoded to no samples")
    return np.concatenate(chunks).astype(np.int16, copy=False), max(0.0, start or 0.0)


def audio_window(clip: Clip, t: float, sample_rate: int, num_samples: int) -> np.ndarray:
    """(num_samples,) int16 centred on time ``t``; zero-padded where the window leaves the track."""
    s0 = int(round((t - clip.audio_start) * sample_rate)) - num_samples // 2
    out = np.zeros(num_samples, np.int16)
    a, b = max(s0, 0), min(s0 + num_samples, len(clip.audio))
    if b > a:
        out[a - s0:b - s0] = clip.audio[a:b]
    return out
