"""The classes the synthetic benchmark knows: a picture (emoji glyph or fallback shape) and a sound for each.

Programs are General MIDI, 0-based as FluidSynth's ``program_select`` takes them (GM's 1-based "41 Violin" is 40).
Pitch ranges are MIDI note numbers the instrument plays comfortably; for the drum kit (channel 9, bank 128) the
"pitches" are the kit pieces to choose from.
"""
from __future__ import annotations

from dataclasses import dataclass

PERCUSSION_CHANNEL = 9
PERCUSSION_BANK = 128


@dataclass(frozen=True)
class ClassSpec:
    """One object class: how it looks and how it sounds (FluidSynth and the numpy fallback)."""
    name: str
    glyph: str                      # Noto Color Emoji character(s)
    program: int                    # GM program, 0-based
    low: int                        # lowest MIDI note of melodies
    high: int                       # highest MIDI note of melodies
    percussion: bool = False        # True: GM drum kit on channel 9; notes are kit pieces
    notes: tuple[int, ...] = ()     # explicit note choices (kit pieces, effect notes); overrides low..high
    note_s: tuple[float, float] = (0.15, 0.6)     # note duration range, seconds
    # numpy fallback: picture and timbre
    colour: tuple[int, int, int] = (200, 200, 200)
    shape: str = "circle"
    harmonics: tuple[float, ...] = (1.0,)          # relative amplitude of partials 1..n
    attack_s: float = 0.02
    decay_s: float = 0.5            # exponential decay time constant; large = sustained
    noise: float = 0.0              # share of filtered noise (percussive / breathy)
    vibrato: float = 0.0            # vibrato depth in semitones
    formant_hz: float = 1000.0      # centre of the class's resonance: a pitch-independent spectral envelope


INSTRUMENTS: tuple[ClassSpec, ...] = (
    ClassSpec("violin", "\U0001F3BB", 40, 55, 88, formant_hz=2600, colour=(170, 80, 30), shape="ellipse",
              harmonics=(1.0, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.3, 0.25, 0.2), attack_s=0.08, decay_s=5.0,
              vibrato=0.25),
    ClassSpec("trumpet", "\U0001F3BA", 56, 54, 80, formant_hz=1400, colour=(230, 190, 40), shape="triangle",
              harmonics=(0.6, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4), attack_s=0.03, decay_s=4.0),
    ClassSpec("saxophone", "\U0001F3B7", 65, 49, 81, formant_hz=850, colour=(200, 150, 20), shape="diamond",
              harmonics=(1.0, 0.5, 0.6, 0.3, 0.35, 0.15, 0.2), attack_s=0.04, decay_s=3.0, noise=0.05,
              vibrato=0.15),
    ClassSpec("guitar", "\U0001F3B8", 24, 40, 76, formant_hz=420, colour=(200, 60, 60), shape="hexagon",
              harmonics=(1.0, 0.5, 0.33, 0.25, 0.2), attack_s=0.005, decay_s=0.4),
    ClassSpec("drum", "\U0001F941", 0, 35, 51, percussion=True, notes=(36, 38, 40, 41, 42, 45, 46, 48, 49, 51),
              note_s=(0.12, 0.35), formant_hz=200, colour=(90, 90, 220), shape="ring", harmonics=(1.0, 0.3),
              attack_s=0.002, decay_s=0.08, noise=0.8),
    ClassSpec("piano", "\U0001F3B9", 0, 40, 84, formant_hz=600, colour=(40, 40, 40), shape="square",
              harmonics=(1.0, 0.4, 0.2, 0.1, 0.05), attack_s=0.003, decay_s=0.8),
    ClassSpec("accordion", "\U0001FA97", 21, 53, 84, formant_hz=1900, colour=(40, 170, 90), shape="cross",
              harmonics=(1.0, 0.9, 0.2, 0.8, 0.1, 0.6, 0.1, 0.4), attack_s=0.05, decay_s=6.0, vibrato=0.05),
    ClassSpec("banjo", "\U0001FA95", 105, 48, 76, formant_hz=3500, colour=(230, 120, 30), shape="star",
              harmonics=(1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.3, 0.2), attack_s=0.002, decay_s=0.2),
    ClassSpec("flute", "\U0001FA88", 73, 60, 96, formant_hz=1100, colour=(150, 150, 230), shape="bar",
              harmonics=(1.0, 0.15, 0.05), attack_s=0.06, decay_s=5.0, noise=0.08, vibrato=0.2),
)

# "Beyond instruments": GM sound effects (GM 123 Bird Tweet, 124 Telephone Ring, 125 Helicopter; 0-based below).
EFFECTS: tuple[ClassSpec, ...] = (
    ClassSpec("bird", "\U0001F426", 122, 60, 84, note_s=(0.3, 0.9), formant_hz=5000, colour=(60, 180, 230),
              shape="triangle_down", harmonics=(1.0, 0.05), attack_s=0.01, decay_s=0.15, vibrato=1.5),
    ClassSpec("telephone", "\u260E", 123, 60, 72, note_s=(0.6, 1.2), formant_hz=1650, colour=(220, 30, 30),
              shape="rounded", harmonics=(1.0, 0.0, 0.6, 0.0, 0.4), attack_s=0.001, decay_s=9.0, vibrato=0.6),
    ClassSpec("helicopter", "\U0001F681", 124, 48, 60, note_s=(0.8, 1.5), formant_hz=130, colour=(120, 120, 120),
              shape="pentagon", harmonics=(1.0,), attack_s=0.2, decay_s=9.0, noise=0.9),
)

CATALOGUE: dict[str, ClassSpec] = {c.name: c for c in INSTRUMENTS + EFFECTS}
INSTRUMENT_NAMES: tuple[str, ...] = tuple(c.name for c in INSTRUMENTS)


def class_specs(names: list[str] | tuple[str, ...]) -> list[ClassSpec]:
    """The specs for ``names`` in order; raises ``KeyError`` naming the unknown class and the known ones."""
    unknown = [n for n in names if n not in CATALOGUE]
    if unknown:
        raise KeyError(f"unknown synthetic class(es) {unknown}; known: {sorted(CATALOGUE)}")
    return [CATALOGUE[n] for n in names]


def note_choices(spec: ClassSpec) -> list[int]:
    """The MIDI notes a melody of ``spec`` may use: explicit ``notes`` or a major-pentatonic subset of low..high."""
    if spec.notes:
        return list(spec.notes)
    pentatonic = {0, 2, 4, 7, 9}
    return [n for n in range(spec.low, spec.high + 1) if (n - spec.low) % 12 in pentatonic]
