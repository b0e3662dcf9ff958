"""Error accounting for readers: what was skipped, where, and why; and the shape contract a sample must meet."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from data.schema import AUDIO_EXT, DEFAULT_LIMITS, FRAME_EXT, MEL_EXT, META_EXT, REQUIRED_EXTS, DecodeLimits

MAX_EXAMPLES = 20


class DataHealthError(RuntimeError):
    """Too many unusable samples; the message names the shard, the reasons and examples."""


@dataclass
class SampleSpec:
    """Shapes every sample must have: frame (frame_size, frame_size, 3), audio (num_samples,); ``decode_limits``
    overrides fields of :class:`data.schema.DecodeLimits` (the manifest's ``config.decode_limits``).

    ``mel`` = (settings key, n_mels, T), set by a reader of a set whose log-mel was stored at ingest with the
    reader's own settings (:func:`data.stream.reading_spec`): every sample must then carry that ``mel`` entry,
    which is read in place of the audio (the FLAC is not decoded)."""
    frame_size: int
    num_samples: int
    decode_limits: dict = field(default_factory=dict)
    mel: tuple[int, int, int] | None = None

    @classmethod
    def from_config(cls, config: dict) -> "SampleSpec | None":
        """From a manifest's ``config`` (``frame_size``, ``audio.sample_rate``, ``audio.window_s``, optional
        ``decode_limits``); None if absent."""
        audio = config.get("audio", {})
        if "frame_size" not in config or "sample_rate" not in audio or "window_s" not in audio:
            return None
        return cls(int(config["frame_size"]), int(round(audio["sample_rate"] * audio["window_s"])),
                   dict(config.get("decode_limits") or {}))

    def limits(self) -> DecodeLimits:
        """What a reader decodes at most: no frame larger than ``frame_size``, no audio longer than ``num_samples``
        (anything bigger breaks the shape contract anyway, so it is refused from its header), then the overrides."""
        derived = DEFAULT_LIMITS.replace(max_image_side=self.frame_size, max_image_pixels=self.frame_size ** 2,
                                         max_audio_frames=self.num_samples)
        return derived.replace(**self.decode_limits)


def limits_for(spec: SampleSpec | None) -> DecodeLimits:
    """The spec's limits, or the general defaults for a shard of unknown spec."""
    return spec.limits() if spec is not None else DEFAULT_LIMITS


def check_sample(key: str, dec: dict[str, Any], spec: SampleSpec | None) -> tuple[str, str] | None:
    """(reason, detail) if a decoded sample breaks the contract, else None."""
    mel = spec.mel if spec is not None else None
    required = REQUIRED_EXTS if mel is None else tuple(e for e in REQUIRED_EXTS if e != AUDIO_EXT) + (MEL_EXT,)
    missing = [e for e in required if e not in dec]
    if missing:
        return "missing_key", f"no {', '.join(missing)} entry (has {sorted(k for k in dec if not k.startswith('__'))})"
    meta = dec[META_EXT]
    if not isinstance(meta, dict) or not isinstance(meta.get("index"), int) or not key.isdigit() \
            or meta["index"] != int(key):
        return "bad_meta", f"json index {meta.get('index') if isinstance(meta, dict) else meta!r} != key"
    if spec is not None:
        fs, ns = spec.frame_size, spec.num_samples
        if dec[FRAME_EXT].shape != (fs, fs, 3):
            return "wrong_shape", f"frame {dec[FRAME_EXT].shape}, expected {(fs, fs, 3)}"
        if AUDIO_EXT in dec and dec[AUDIO_EXT].shape != (ns,):
            return "wrong_shape", f"audio {dec[AUDIO_EXT].shape}, expected {(ns,)}"
    if mel is not None:
        stored = dec[MEL_EXT]
        if stored.key != mel[0]:
            return "mel_settings", f"mel computed with settings key {stored.key}, the reader's is {mel[0]}"
        if stored.values.shape != mel[1:]:
            return "wrong_shape", f"mel {stored.values.shape}, expected {mel[1:]}"
    return None


@dataclass
class DataHealth:
    """Counts of samples seen / kept / skipped per reason, with the first few examples (shard, key, reason)."""
    seen: int = 0
    good: int = 0
    bad: Counter = field(default_factory=Counter)
    ignored: Counter = field(default_factory=Counter)        # entries with a non-whitelisted extension, by ext
    examples: list[dict] = field(default_factory=list)

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    @property
    def bad_fraction(self) -> float:
        return self.bad_total / max(1, self.seen)

    def bad_sample(self, shard: str, key: str, reason: str, detail: str, count: int = 1) -> None:
        self.bad[reason] += count
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"shard": shard, "key": key, "reason": reason, "detail": detail})

    def merge(self, other: "DataHealth") -> None:
        self.seen += other.seen
        self.good += other.good
        self.bad.update(other.bad)
        self.ignored.update(other.ignored)
        self.examples.extend(other.examples[: max(0, MAX_EXAMPLES - len(self.examples))])

    def summary(self) -> str:
        first = self.examples[0] if self.examples else None
        eg = f"; first: shard {first['shard']}: sample '{first['key']}' {first['reason']}: {first['detail']}" \
            if first else ""
        ign = f"; ignored entries {dict(self.ignored)}" if self.ignored else ""
        return f"kept {self.good} of {self.seen} samples, skipped {dict(self.bad)}{ign}{eg}"

    def check(self, max_bad_fraction: float, shard: str) -> None:
        """Raise :class:`DataHealthError` naming ``shard`` when the skipped fraction exceeds ``max_bad_fraction``."""
        if self.bad_fraction > max_bad_fraction:
            in_shard = [e for e in self.examples if e["shard"] == shard] or self.examples
            reasons = ", ".join(f"{r} x{n}" for r, n in self.bad.most_common())
            egs = "; ".join(f"shard {e['shard']}: sample '{e['key']}' {e['reason']}: {e['detail']}"
                            for e in in_shard[:3])
            raise DataHealthError(
                f"shard {shard}: {self.bad_total} of {self.seen} samples unusable so far "
                f"({self.bad_fraction:.1%} > max_bad_fraction {max_bad_fraction:.1%}): {reasons}. {egs}")

    def to_dict(self) -> dict:
        return {"seen": self.seen, "good": self.good, "bad": dict(self.bad), "ignored": dict(self.ignored),
                "examples": list(self.examples)}
