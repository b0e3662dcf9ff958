"""Clip audio: a random melody of the sounding class's instrument, an optional quieter off-screen instrument, and
background noise at a random SNR.

Two renderers play the same melody plan: FluidSynth with the FluidR3 General MIDI soundfont (real instrument
recordings, rendered offline without an audio driver) and a pure-numpy fallback of harmonic tones whose partials,
envelope, vibrato and noise share differ per class. Output is float32 mono in [-1, 1].
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from data.synthetic.catalogue import PERCUSSION_BANK, PERCUSSION_CHANNEL, ClassSpec, note_choices

log = logging.getLogger(__name__)

TARGET_RMS = 0.1                    # level of the sounding instrument before noise and limiting


@dataclass(frozen=True)
class Note:
    """One note of a melody."""
    start_s: float
    dur_s: float
    pitch: int                      # MIDI note number (kit piece for percussion)
    velocity: int                   # 1..127


def plan_melody(spec: ClassSpec, seconds: float, rng: np.random.Generator) -> list[Note]:
    """Random monophonic melody in the class's range, filling ``seconds`` with short rests; mostly stepwise."""
    choices = note_choices(spec)
    notes, t, k = [], float(rng.uniform(0.0, 0.15)), int(rng.integers(len(choices)))
    while t < seconds - 0.05:
        dur = float(rng.uniform(*spec.note_s))
        k = int(np.clip(k + rng.integers(-2, 3), 0, len(choices) - 1)) if rng.random() < 0.7 \
            else int(rng.integers(len(choices)))
        notes.append(Note(t, min(dur, seconds - t), choices[k], int(rng.integers(70, 121))))
        t += dur + (float(rng.uniform(0.05, 0.3)) if rng.random() < 0.2 else 0.0)
    return notes


# ------------------------------------------------------------------------------------------------------ fluidsynth


def fluidsynth_available(soundfont: str) -> bool:
    """True when pyfluidsynth imports (with its shared library) and the soundfont file exists."""
    if not Path(soundfont).is_file():
        return False
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError) as e:
        log.warning("pyfluidsynth unusable: %s", e)
        return False
    return True


class FluidRenderer:
    """Offline FluidSynth (no audio driver) with one soundfont loaded, for one melody: :func:`fluid_render` makes one
    per call and deletes it after.

    A clip's audio must be a function of its notes alone, not of what the process rendered before (pool workers get
    clips in an order that depends on timing). A synth reused from clip to clip is not: with reverb and chorus off,
    a system reset before each clip and float output, some melodies (the violin's) still came out different after
    other clips had played (up to 0.3 % of full scale, measured 2026-12-03) — so every melody gets a fresh synth
    (cheap: with dynamic sample loading only the played preset's samples are read; the demo's 1,368 clips took 62 s
    to make on 2 workers, 43 s with one synth per worker). The samples are read as float:
    FluidSynth's 16-bit output adds dither from a table whose position carries over from call to call."""

    def __init__(self, soundfont: str, sample_rate: int):
        import ctypes

        import fluidsynth
        self.sample_rate = sample_rate
        self.synth = fluidsynth.Synth(gain=0.6, samplerate=sample_rate,
                                      **{"synth.reverb.active": 0, "synth.chorus.active": 0,
                                         "synth.dynamic-sample-loading": 1})
        self.sfid = self.synth.sfload(soundfont)
        if self.sfid < 0:
            raise RuntimeError(f"FluidSynth could not load soundfont {soundfont}")
        ptr, i32 = ctypes.c_void_p, ctypes.c_int
        self._write_float = fluidsynth.cfunc(     # (synth, len, lout, loff, lincr, rout, roff, rincr)
            "fluid_synth_write_float", i32, ("synth", ptr, 1), ("len", i32, 1), ("lout", ptr, 1), ("loff", i32, 1),
            ("lincr", i32, 1), ("rout", ptr, 1), ("roff", i32, 1), ("rincr", i32, 1))
        if self._write_float is None:
            raise RuntimeError("FluidSynth library without fluid_synth_write_float")

    def _advance(self, chunks: list[np.ndarray], n: int) -> None:
        if n > 0:
            stereo = np.empty((n, 2), np.float32)
            if self._write_float(self.synth.synth, n, stereo.ctypes.data, 0, 2, stereo.ctypes.data, 1, 2) != 0:
                raise RuntimeError("FluidSynth: fluid_synth_write_float failed")
            chunks.append(stereo.mean(axis=1))

    def render(self, spec: ClassSpec, notes: list[Note], num_samples: int) -> np.ndarray:
        """Play ``notes`` with the class's GM program: float32 (num_samples,)."""
        chan = PERCUSSION_CHANNEL if spec.percussion else 0
        bank = PERCUSSION_BANK if spec.percussion else 0
        self.synth.program_select(chan, self.sfid, bank, 0 if spec.percussion else spec.program)
        sr = self.sample_rate
        events = sorted([(round(n.start_s * sr), 1, n) for n in notes]
                        + [(round((n.start_s + n.dur_s) * sr), 0, n) for n in notes], key=lambda e: (e[0], e[1]))
        chunks: list[np.ndarray] = []
        done = 0
        for at, on, note in events:
            at = min(at, num_samples)
            self._advance(chunks, at - done)
            done = max(done, at)
            if on:
                self.synth.noteon(chan, note.pitch, note.velocity)
            else:
                self.synth.noteoff(chan, note.pitch)
        self._advance(chunks, num_samples - done)
        out = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return out[:num_samples].astype(np.float32)


def fluid_render(soundfont: str, sample_rate: int, spec: ClassSpec, notes: list[Note], num_samples: int) -> np.ndarray:
    """``notes`` played by a fresh :class:`FluidRenderer` (deleted after): float32 (num_samples,)."""
    renderer = FluidRenderer(soundfont, sample_rate)
    try:
        return renderer.render(spec, notes, num_samples)
    finally:
        renderer.synth.delete()


# ----------------------------------------------------------------------------------------------------------- numpy


def formant_gain(freq: np.ndarray | float, centre_hz: float) -> np.ndarray:
    """The class's pitch-independent resonance: a log-frequency Gaussian (1.3 octaves wide) over a -22 dB floor."""
    octaves = np.log2(np.maximum(freq, 1.0) / centre_hz)
    return 0.08 + np.exp(-0.5 * (octaves / 0.65) ** 2)


def _note_wave(spec: ClassSpec, note: Note, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One fallback note: harmonic partials (class partial weights x class formant) + formant-shaped noise, under
    an attack/decay/release envelope."""
    n = max(1, int(round(note.dur_s * sr)))
    t = np.arange(n, dtype=np.float64) / sr
    f0 = 440.0 * 2.0 ** ((note.pitch - 69) / 12)
    bend = 2.0 ** (spec.vibrato * np.sin(2 * math.pi * 5.5 * t) / 12)
    phase = 2 * math.pi * np.cumsum(f0 * bend) / sr
    tone, total = np.zeros(n), 1e-6
    for k in range(1, 25):
        if k * f0 >= sr / 2 - 300:
            break
        h = spec.harmonics
        amp = (h[k - 1] if k <= len(h) else h[-1] * len(h) / k) * float(formant_gain(k * f0, spec.formant_hz))
        tone += amp * np.sin(k * phase)
        total += amp
    shaped = np.fft.rfft(rng.standard_normal(n)) * formant_gain(np.fft.rfftfreq(n, 1 / sr), spec.formant_hz)
    noise = np.fft.irfft(shaped, n)
    wave = (1 - spec.noise) * tone / total + spec.noise * noise / (np.std(noise) + 1e-9) * 0.3
    env = np.minimum(1.0, t / max(spec.attack_s, 1e-4)) * np.exp(-t / spec.decay_s)
    env *= np.minimum(1.0, (t[-1] - t + 1.0 / sr) / 0.02)          # 20 ms release
    return (wave * env * note.velocity / 127).astype(np.float32)


def numpy_render(spec: ClassSpec, notes: list[Note], num_samples: int, sample_rate: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Fallback instrument: float32 (num_samples,) with the class's synthetic timbre."""
    out = np.zeros(num_samples, np.float32)
    for note in notes:
        start = int(round(note.start_s * sample_rate))
        wave = _note_wave(spec, note, sample_rate, rng)[: max(0, num_samples - start)]
        out[start:start + wave.size] += wave
    return out


# ------------------------------------------------------------------------------------------------------------ mix


def _at_rms(x: np.ndarray, rms: float) -> np.ndarray:
    cur = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return x * (rms / cur) if cur > 1e-8 else x


def background_noise(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink-ish or brown-ish noise (random choice), float32, unit-free."""
    white = rng.standard_normal(num_samples)
    pole = float(rng.choice([0.0, 0.7, 0.97]))
    return lfilter([1.0], [1.0, -pole], white).astype(np.float32)


def render_instrument(spec: ClassSpec, seconds: float, num_samples: int, sample_rate: int, backend: str,
                      soundfont: str, rng: np.random.Generator) -> np.ndarray:
    """A random melody of ``spec`` with the chosen backend ("fluidsynth" or "numpy"), float32 (num_samples,)."""
    notes = plan_melody(spec, seconds, rng)
    if backend == "fluidsynth":
        return fluid_render(soundfont, sample_rate, spec, notes, num_samples)
    return numpy_render(spec, notes, num_samples, sample_rate, rng)


def clip_audio(spec: ClassSpec, offscreen: tuple[ClassSpec, float] | None, snr_db: float, seconds: float,
               sample_rate: int, backend: str, soundfont: str, rng: np.random.Generator) -> np.ndarray:
    """The clip's track: sounding instrument at TARGET_RMS, optional off-screen ``(spec, level_db)`` relative to
    it, noise at ``snr_db`` below it; peak-limited to 0.99. float32 (round(seconds * sample_rate),)."""
    n = int(round(seconds * sample_rate))
    mix = _at_rms(render_instrument(spec, seconds, n, sample_rate, backend, soundfont, rng), TARGET_RMS)
    if offscreen is not None:
        other, level_db = offscreen
        extra = render_instrument(other, seconds, n, sample_rate, backend, soundfont, rng)
        mix = mix + _at_rms(extra, TARGET_RMS * 10 ** (level_db / 20))
    mix = mix + _at_rms(background_noise(n, rng), TARGET_RMS * 10 ** (-snr_db / 20))
    peak = float(np.abs(mix).max()) if mix.size else 0.0
    return (mix * (0.99 / peak) if peak > 0.99 else mix).astype(np.float32)
