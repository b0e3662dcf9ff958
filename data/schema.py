"""One shard sample: keys, metadata, and whitelisted encode/decode of its entries (docs/INTERFACES.md).

Decoding is by extension from a fixed whitelist (images via torchvision's libjpeg-turbo or PIL, audio via soundfile,
json, txt, cls, and ``mel``: the log-mel stored at ingest, a fixed header and float16 values, :func:`encode_mel`). Any
other entry (``.pyd``, ``.pickle``, ``.npy`` ...) is ignored and counted, never unpickled: webdataset's default decoders
would unpickle ``.pyd``/``.pickle`` and run code from the shard.

Decoding is also bounded, and the bounds are checked *before* decoding (:class:`DecodeLimits`): an image's size from
its header, an audio file's frame count from its header, a JSON entry's byte size and nesting depth. A few kilobytes
can otherwise claim a 12000x12000 frame (432 MB once decoded) or nest ``[`` deeper than Python's recursion limit.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import numpy as np
import soundfile as sf
from PIL import Image

FRAME_EXT = "jpg"
AUDIO_EXT = "flac"
META_EXT = "json"
MEL_EXT = "mel"           # optional: the log-mel stored at ingest (ingest.store_logmel), see encode_mel
REQUIRED_EXTS = (FRAME_EXT, AUDIO_EXT, META_EXT)
MEL_MAGIC = b"AVDETMEL"
_MEL_HEADER = struct.Struct("<8sHHI")     # magic, n_mels, T, settings key (avdet.audio.logmel_key); then fp16 LE

# PIL's own guard (a warning above it, DecompressionBombError above twice it); DecodeLimits is the tighter check
Image.MAX_IMAGE_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class DecodeLimits:
    """Largest entry a reader decodes; anything bigger is refused from its header, never decoded.

    The defaults bound a shard of unknown spec; :meth:`data.health.SampleSpec.limits` tightens the image and audio
    bounds to the manifest's frame and window size.
    """
    max_image_side: int = 8192           # pixels, width or height
    max_image_pixels: int = 8192 * 8192  # width x height
    max_audio_frames: int = 48000 * 600  # samples per channel (10 min at 48 kHz)
    max_audio_channels: int = 8
    max_json_bytes: int = 64 * 1024
    max_json_depth: int = 32             # nesting of [ and { (a sample's metadata is flat)
    max_mel_elems: int = 1 << 20         # n_mels x T of a stored log-mel (64 x 101 for 1 s at the defaults)

    def replace(self, **changes: Any) -> "DecodeLimits":
        """A copy with ``changes`` (unknown names raise ValueError naming them)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"decode limits: unknown {unknown} (known: {sorted(known)})")
        return DecodeLimits(**{**asdict(self), **{k: int(v) for k, v in changes.items()}})


DEFAULT_LIMITS = DecodeLimits()


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


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """(S,) waveform, int16 or float in [-1, 1] -> int16: what a FLAC entry stores and a reader decodes."""
    if audio.dtype == np.int16:
        return audio
    return np.clip(np.round(np.asarray(audio, np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """(S,) mono waveform, int16 or float in [-1, 1] -> 16-bit FLAC bytes."""
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (S,), got shape {audio.shape}")
    audio = to_pcm16(audio)
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def encode_mel(logmel: np.ndarray, key: int) -> bytes:
    """(n_mels, T) log-mel -> ``mel`` entry bytes: a 16-byte header (magic, n_mels, T, the settings' key) and the
    values as little-endian float16 (log-power in about [-14, 10]: ~0.005 absolute rounding)."""
    mel = np.asarray(logmel)
    if mel.ndim != 2 or not np.all(np.isfinite(mel)):
        raise ValueError(f"log-mel must be a finite (n_mels, T) array, got shape {mel.shape}")
    return _MEL_HEADER.pack(MEL_MAGIC, mel.shape[0], mel.shape[1], key) + mel.astype("<f2").tobytes()


def encode_sample(meta: SampleMeta, frame: np.ndarray, audio: np.ndarray, sample_rate: int,
                  jpeg_quality: int = 90, mel: bytes | None = None) -> dict[str, Any]:
    """Frame (H, W, 3) uint8 + audio (S,) + metadata -> ``{"__key__", "jpg", "flac", "json"}`` of bytes (and
    ``"mel"``: :func:`encode_mel`'s bytes, when given)."""
    out = {"__key__": sample_key(meta.index), FRAME_EXT: encode_jpeg(frame, jpeg_quality),
           AUDIO_EXT: encode_flac(audio, sample_rate), META_EXT: meta.to_json()}
    if mel is not None:
        out[MEL_EXT] = mel
    return out


# --------------------------------------------------------------------------------------------------------------
# decode (whitelist)


def decode_image(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8 RGB. The header's size is checked against ``limits`` before decoding:
    DecodeError ``image_too_large``.

    A colour JPEG of 8-bit Huffman frames (the frames ingest writes) is decoded by torchvision's libjpeg-turbo
    (:func:`_decode_colour_jpeg`): the same pixels as PIL's decoder, without its Python header parse. Its (H, W, 3)
    result is a view of a (3, H, W) array; stacking it into a block is the one copy. Anything else (PNG, grey or CMYK
    JPEG, arithmetic coding, 12 bits) goes to PIL."""
    header = _jpeg_frame_header(data)
    if header is not None:
        w, h = header
        _check_image_size(w, h, limits)
        return _decode_colour_jpeg(data)
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_image_size(*im.size, limits)
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError("image_too_large", f"{e}; not decoded") from None
    except Exception as e:  # PIL raises many types on corrupt data
        raise DecodeError("bad_jpg", f"{type(e).__name__}: {e}") from None


def _check_image_size(w: int, h: int, limits: DecodeLimits) -> None:
    if max(w, h) > limits.max_image_side or w * h > limits.max_image_pixels:
        raise DecodeError("image_too_large", f"header says {w}x{h} (limits: side {limits.max_image_side}, "
                          f"{limits.max_image_pixels} pixels); not decoded")


_SOF_HUFFMAN_8BIT = (0xC0, 0xC1, 0xC2)       # baseline, extended sequential, progressive
_NO_LENGTH = {0x01, 0xD8} | set(range(0xD0, 0xD8))


def _jpeg_frame_header(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG whose first frame header is an 8-bit Huffman frame of 3 components, read by walking
    the marker segments up to it; None for anything else (not a JPEG, another frame type, a height left to a DNL
    marker, a cut or malformed header), which PIL then decodes or refuses."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                               # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _SOF_HUFFMAN_8BIT or i + 10 > n:
                return None
            precision, h, w, components = struct.unpack_from(">BHHB", data, i + 4)
            return (w, h) if precision == 8 and components == 3 and w > 0 and h > 0 else None
        if marker == 0xDA:                               # scan data before any frame header
            return None
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def _decode_colour_jpeg(data: bytes) -> np.ndarray:
    """A colour JPEG (:func:`_jpeg_frame_header`) -> (H, W, 3) uint8 RGB view of torchvision's (3, H, W) decode."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    try:
        chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except Exception as e:        # RuntimeError from libjpeg, its message after the C++ source location
        detail = re.sub(r"^decode_jpeg, \S+:\d+, ", "", str(e))
        raise DecodeError("bad_jpg", f"JPEG decode failed: {type(e).__name__}: {detail}") from None
    return chw.permute(1, 2, 0).numpy()


def decode_audio(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """FLAC/WAV bytes -> (S,) int16 (first channel if not mono). The header's frame and channel counts are checked
    against ``limits`` before reading: DecodeError ``audio_too_long``."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.frames > limits.max_audio_frames or f.channels > limits.max_audio_channels:
                raise DecodeError("audio_too_long", f"header says {f.frames} frames x {f.channels} channels (limits: "
                                  f"{limits.max_audio_frames} frames, {limits.max_audio_channels} channels); "
                                  f"not decoded")
            wav = f.read(dtype="int16", always_2d=True)
    except DecodeError:
        raise
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError on corrupt data
        raise DecodeError("bad_flac", f"{type(e).__name__}: {e}") from None
    return np.ascontiguousarray(wav[:, 0])


@dataclass(frozen=True)
class StoredMel:
    """A decoded ``mel`` entry: the settings' key it was computed with and the (n_mels, T) float16 values."""
    key: int
    values: np.ndarray


def decode_mel(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> StoredMel:
    """``mel`` entry bytes -> StoredMel. The header's size is checked against ``limits`` and the entry's length
    before anything is read (``mel_too_large``); a bad header, a wrong length or non-finite values are ``bad_mel``."""
    if len(data) < _MEL_HEADER.size:
        raise DecodeError("bad_mel", f"{len(data)} bytes, shorter than the {_MEL_HEADER.size}-byte header")
    magic, n_mels, t, key = _MEL_HEADER.unpack_from(data)
    if magic != MEL_MAGIC:
        raise DecodeError("bad_mel", f"header magic {magic!r}, expected {MEL_MAGIC!r}")
    if n_mels * t > limits.max_mel_elems:
        raise DecodeError("mel_too_large", f"header says {n_mels}x{t} (limit max_mel_elems {limits.max_mel_elems}); "
                          f"not decoded")
    if len(data) != _MEL_HEADER.size + 2 * n_mels * t:
        raise DecodeError("bad_mel", f"{len(data)} bytes for a {n_mels}x{t} float16 log-mel "
                          f"(expected {_MEL_HEADER.size + 2 * n_mels * t})")
    values = np.frombuffer(data, "<f2", offset=_MEL_HEADER.size).reshape(n_mels, t)
    if values.size and int((values.view("<u2") & 0x7FFF).max()) >= 0x7C00:
        # an all-ones exponent is inf or nan (float16: 5 exponent bits); 4x faster than np.isfinite on float16
        raise DecodeError("bad_mel", "non-finite values")
    return StoredMel(key, values)


def json_depth(data: bytes, limit: int | None = None) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text (outside strings), without parsing (no recursion). With ``limit``:
    the count of ``[`` and ``{`` bytes when it is at most ``limit`` (no deeper nesting is possible then; counted in
    C, where the exact walk is a Python loop over every byte), else the exact depth."""
    if limit is not None:
        openers = data.count(b"[") + data.count(b"{")
        if openers <= limit:
            return openers
    depth = deepest = 0
    in_str = esc = False
    for c in data:
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:            # backslash
                esc = True
            elif c == 0x22:            # closing quote
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):        # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif c in (0x5D, 0x7D):        # ] }
            depth -= 1
    return deepest


def decode_json(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Any:
    """JSON bytes -> value; size and nesting depth are checked first (``json_too_large``, ``json_too_deep``)."""
    if len(data) > limits.max_json_bytes:
        raise DecodeError("json_too_large", f"{len(data)} bytes > max_json_bytes {limits.max_json_bytes}; not parsed")
    depth = json_depth(data, limits.max_json_depth)
    if depth > limits.max_json_depth:
        raise DecodeError("json_too_deep", f"nesting depth {depth} > max_json_depth {limits.max_json_depth}; "
                          f"not parsed")
    try:
        return json.loads(data)
    except RecursionError:
        raise DecodeError("json_too_deep", "the parser ran out of recursion depth") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DecodeError("bad_json", str(e)) from None


def decode_text(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    if len(data) > limits.max_json_bytes:
        raise DecodeError("text_too_large", f"{len(data)} bytes > max_json_bytes {limits.max_json_bytes}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError("bad_text", str(e)) from None


def decode_cls(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> int:
    if len(data) > limits.max_json_bytes:
        raise DecodeError("text_too_large", f"{len(data)} bytes > max_json_bytes {limits.max_json_bytes}")
    try:
        return int(data.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError) as e:
        raise DecodeError("bad_cls", str(e)) from None


DECODERS: dict[str, Callable[[bytes, DecodeLimits], Any]] = {
    "jpg": decode_image, "jpeg": decode_image, "png": decode_image,
    "flac": decode_audio, "wav": decode_audio,
    "json": decode_json, "txt": decode_text, "cls": decode_cls, MEL_EXT: decode_mel,
}


def decode_sample(raw: dict[str, bytes], only: tuple[str, ...] | None = None,
                  limits: DecodeLimits = DEFAULT_LIMITS) -> tuple[dict[str, Any], list[str]]:
    """Raw entries ``{ext: bytes}`` -> (decoded ``{ext: value}``, ignored extensions); each decoder checks ``limits``
    before decoding.

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
        if data is None:            # data.shards.iter_tar_groups did not read an oversized member
            raise DecodeError("entry_too_large", f"{ext} entry larger than the reader's member limit; not read")
        out[ext] = fn(data, limits)
    return out, ignored
