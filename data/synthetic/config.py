"""SynthConfig: everything that decides what the synthetic benchmark contains and how big it is.

``num_multi_per_class`` adds the multi-source test split (``gt_test_multi.json``): duets of two sounding instruments
(plus the usual silent objects); ``num_multi_train_per_class`` adds multi-source TRAINING clips made the same way,
listed in the CSV under split ``train_multi`` (DSOL's stage 2 trains on them; every other stage ignores that split).
of different classes. The defaults are the "benchmark" size (9 instruments, 200 train + 25 test clips per class, 4 s, 160 px, 8 fps);
clusters/local/synthetic_tiny.yaml (tests) and synthetic_demo.yaml (the end-to-end demo) shrink it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from avdet.config import ConfigError, require
from data.synthetic.catalogue import CATALOGUE, INSTRUMENT_NAMES

EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"


@dataclass
class SynthConfig:
    """Synthetic dataset generation. Same config and seed -> identical CSV and annotations."""
    seed: int = 0
    classes: list[str] = field(default_factory=lambda: list(INSTRUMENT_NAMES))
    num_train_per_class: int = 200
    num_test_per_class: int = 25
    clip_seconds: float = 4.0
    fps: int = 8
    frame_size: int = 160           # square frames, pixels
    sample_rate: int = 16000        # audio in the mp4 (AAC), mono
    backend: str = "auto"           # "auto" (emoji + fluidsynth, numpy for what is missing), "fluidsynth", "numpy"
    emoji_font: str = EMOJI_FONT
    soundfont: str = SOUNDFONT
    # objects
    scale_min: float = 0.2          # object's longer side as a fraction of the frame side
    scale_max: float = 0.6
    max_rotation_deg: float = 15.0
    colour_jitter: float = 0.15     # per-channel gain in [1-j, 1+j], plus brightness of the same size
    drift: float = 0.08             # max speed, fraction of the frame side per second
    max_silent_objects: int = 2     # 0..this many silent objects of other classes
    p_second_instance: float = 0.2  # chance of a second (also sounding) instance of the sounding class
    alpha_threshold: int = 32       # alpha (0-255) above which a pixel belongs to the object's mask
    # audio
    snr_db_min: float = 10.0        # background noise SNR range, dB
    snr_db_max: float = 30.0
    p_offscreen: float = 0.3        # chance of an off-screen instrument of another class
    offscreen_db_min: float = -20.0  # its level relative to the sounding instrument, dB
    offscreen_db_max: float = -10.0
    # multi-source test split (MUSIC-Duet style; 0 = none, and the dataset is byte-identical to one without the keys)
    num_multi_per_class: int = 0    # test clips per class with a second sounding instrument of another class
    num_multi_train_per_class: int = 0  # the same, for training (CSV split "train_multi")
    # off-screen test split (seed 001's on/off-screen recognition; 0 = none, the dataset unchanged)
    num_offscreen_per_class: int = 0    # test clips per class whose instrument is heard but not in view (only silent
                                        # objects of other classes are), gt_test_offscreen.json
    multi_level_db: float = 3.0     # the second instrument's level: uniform in [-this, this] dB relative to the first
    # output and execution
    test_sheet_clips: int = 16      # frames (one per clip, from test clips first) on the contact sheet
    crf: int = 23                   # x264 quality
    num_workers: int = 2            # multiprocessing Pool size; 0 = in-process

    @property
    def num_frames(self) -> int:
        """Frames per clip."""
        return int(round(self.clip_seconds * self.fps))

    @property
    def num_samples(self) -> int:
        """Audio samples per clip."""
        return int(round(self.clip_seconds * self.sample_rate))

    def check(self) -> None:
        """Raise ConfigError naming the first impossible value."""
        require(self.seed >= 0, "seed", "must be >= 0")
        unknown = [c for c in self.classes if c not in CATALOGUE]
        require(not unknown, "classes", f"has unknown classes {unknown}; known: {sorted(CATALOGUE)}")
        require(len(self.classes) >= 1 and len(set(self.classes)) == len(self.classes), "classes",
                "must be a non-empty list without duplicates")
        require(self.num_train_per_class >= 0 and self.num_test_per_class >= 0, "num_train_per_class",
                "and num_test_per_class must be >= 0")
        require(self.num_train_per_class + self.num_test_per_class >= 1, "num_train_per_class",
                "+ num_test_per_class must be >= 1")
        require(self.clip_seconds > 0 and self.num_frames >= 1, "clip_seconds", "must give at least one frame")
        require(1 <= self.fps <= 60, "fps", "must be in [1, 60]")
        require(self.frame_size >= 32 and self.frame_size % 2 == 0, "frame_size", "must be even and >= 32 (H.264)")
        require(self.sample_rate in (8000, 16000, 22050, 24000, 32000, 44100, 48000), "sample_rate",
                "must be an AAC sample rate (8000, 16000, 22050, 24000, 32000, 44100, 48000)")
        require(self.backend in ("auto", "fluidsynth", "numpy"), "backend", "must be 'auto', 'fluidsynth' or 'numpy'")
        require(0 < self.scale_min <= self.scale_max <= 1.0, "scale_min",
                "must satisfy 0 < scale_min <= scale_max <= 1")
        require(0 <= self.max_rotation_deg <= 180, "max_rotation_deg", "must be in [0, 180]")
        require(0 <= self.colour_jitter < 1, "colour_jitter", "must be in [0, 1)")
        require(self.drift >= 0, "drift", "must be >= 0")
        require(self.max_silent_objects >= 0, "max_silent_objects", "must be >= 0")
        require(0 <= self.p_second_instance <= 1 and 0 <= self.p_offscreen <= 1, "p_second_instance",
                "and p_offscreen must be probabilities")
        require(0 < self.alpha_threshold < 255, "alpha_threshold", "must be in (0, 255)")
        require(self.snr_db_min <= self.snr_db_max, "snr_db_min", "must be <= snr_db_max")
        require(self.offscreen_db_min <= self.offscreen_db_max, "offscreen_db_min", "must be <= offscreen_db_max")
        require(0 <= self.crf <= 51, "crf", "must be in [0, 51]")
        require(self.num_workers >= 0, "num_workers", "must be >= 0")
        require(self.num_multi_per_class >= 0, "num_multi_per_class", "must be >= 0")
        require(self.num_multi_train_per_class >= 0, "num_multi_train_per_class", "must be >= 0")
        require(self.num_offscreen_per_class >= 0, "num_offscreen_per_class", "must be >= 0")
        if self.num_multi_train_per_class and len(self.classes) < 2:
            raise ConfigError("num_multi_train_per_class needs at least 2 classes (the two sounding ones differ)")
        require(0 <= self.multi_level_db <= 20, "multi_level_db", "must be in [0, 20] (both instruments audible)")
        if self.num_multi_per_class and len(self.classes) < 2:
            raise ConfigError("num_multi_per_class needs at least 2 classes (the two sounding ones differ)")
        require(self.test_sheet_clips >= 0, "test_sheet_clips", "must be >= 0")
        if self.p_offscreen > 0 and len(self.classes) < 2:
            raise ConfigError("p_offscreen needs at least 2 classes (the off-screen one differs); set it to 0")
