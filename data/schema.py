"""One shard sample: keys, metadata, and whitelisted encode/decode of its entries (docs/INTERFACES.md).

Decoding is by extension from a fixed whitelist (images via PIL, audio via soundfile, json, txt, cls). Any other
entry (``.pyd``, ``.pickle``, ``.npy`` ...) is ignored and counted, never unpickled: webdataset's default decoders
would unpickle ``.pyd``/``.pickle`` and run code from the shard.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import soundfile as sf
from PIL import Image

FRAME_EXT = "jpg"
AUDIO_EXT = "flac"
META_EXT = "json"
REQUIRED_EXTS = (FRAME_EXT, AUDIO_EXT, META_EXT)


class DecodeError(ValueError):
    """An entry could not be decoded; ``reason`` is a short counter name such as ``bad_jpg``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def sample_key(index: int) -> str:
    """``__key__`` of the sample with global index ``index``: 12 zero-padded digits."""
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    return f"{index:012d}"


def clip_id(video_id: str) -> int:
    """Stable non-negative int63 id of a clip (its frames share it): the first 8 bytes of blake2b(video_id). Lets
    the contrastive loss keep frames of one clip from being each other's negatives across the global batch
    (collisions: ~N²/2⁶⁴, i.e. none at VGGSound scale)."""
    return int.from_bytes(hashlib.blake2b(video_id.encode(), digest_size=8).digest(), "little") >> 1


@dataclass
class SampleMeta:
    """The ``json`` entry of a sample."""
    index: int
    video_id: str
    timestamp: float            # seconds from the clip file's start
    label: str | None           # class name (evaluation only) or None
    split: str                  # "train" | "test"
    orig_width: int
    orig_height: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, d: dict) -> "SampleMeta":
        return cls(index=int(d["index"]), video_id=str(d["video_id"]), timestamp=float(d["timestamp"]),
                   label=None if d.get("label") is None else str(d["label"]), split=str(d["split"]),
                   orig_width=int(d["orig_width"]), orig_height=int(d["orig_height"]))


# --------------------------------------------------------------------------------------------------------------
# encode


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """(S,) mono waveform, int16 or float in [-1, 1] -> 16-bit FLAC bytes."""
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (S,), got shape {audio.shape}")
    if audio.dtype != np.int16:
        audio = np.clip(np.round(np.asarray(audio, np.float64) * 32767.0), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def encode_sample(meta: SampleMeta, frame: np.ndarray, audio: np.ndarray, sample_rate: int,
                  jpeg_quality: int = 90) -> dict[str, Any]:
    """Frame (H, W, 3) uint8 + audio (S,) + metadata -> ``{"__key__", "jpg", "flac", "json"}`` of bytes."""
    return {"__key__": sample_key(meta.index), FRAME_EXT: encode_jpeg(frame, jpeg_quality),
            AUDIO_EXT: encode_flac(audio, sample_rate), META_EXT: meta.to_json()}


# --------------------------------------------------------------------------------------------------------------
# decode (whitelist)


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8 RGB."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except Exception as e:  # PIL raises many types on corrupt data
        raise DecodeError("bad_jpg", f"{type(e).__name__}: {e}") from None


def decode_audio(data: bytes) -> np.ndarray:
    """FLAC/WAV bytes -> (S,) int16 (first channel if not mono)."""
    try:
        wav, _sr = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError on corrupt data
        raise DecodeError("bad_flac", f"{type(e).__name__}: {e}") from None
    return np.ascontiguousarray(wav[:, 0])


def decode_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DecodeError("bad_json", str(e)) from None


def decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError("bad_text", str(e)) from None


def decode_cls(data: bytes) -> int:
    try:
        return int(data.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError) as e:
        raise DecodeError("bad_cls", str(e)) from None


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "jpg": decode_image, "jpeg": decode_image, "png": decode_image,
    "flac": decode_audio, "wav": decode_audio,
    "json": decode_json, "txt": decode_text, "cls": decode_cls,
}


def decode_sample(raw: dict[str, bytes], only: tuple[str, ...] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Raw entries ``{ext: bytes}`` -> (decoded ``{ext: value}``, ignored extensions).

    Extensions outside :data:`DECODERS` (or outside ``only``) are never decoded. Raises :class:`DecodeError` on the
    first entry that fails to decode. ``__key__`` and other ``__*__`` entries are passed through unchanged.
    """
    out: dict[str, Any] = {}
    ignored: list[str] = []
    for ext, data in raw.items():
        if ext.startswith("__"):
            out[ext] = data
            continue
        fn = DECODERS.get(ext.lower())
        if fn is None or (only is not None and ext not in only):
            ignored.append(ext)
            continue
        out[ext] = fn(data)
    return out, ignored
