"""A long stage's progress, for the console: rank 0 writes ``<out_dir>/progress.json`` (atomically, at most once a
second), and the pipeline's console polls it to draw the stage's progress bar and print its events (stage 1's
relabel rounds). On a cluster ``out_dir`` is on the shared filesystem the checkpoints need anyway.

``progress.json``: ``{"stage", "unit", "epochs", "steps_per_epoch", "epoch", "step", "rate" (units/s over the
epoch so far), "events": [str, ...]}``; ``step`` counts from the start of training (it survives a resume).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from avdet.fileio import write_json

PROGRESS_FILE = "progress.json"


class Progress:
    """Rank 0's writer of ``progress.json`` (see module docstring). ``step(...)`` after every training step is
    cheap: the file is rewritten at most every ``every_s`` seconds; ``event(text)`` and ``close()`` write at once."""

    def __init__(self, out_dir: str | Path, stage: str, epochs: int, steps_per_epoch: int | None,
                 unit: str = "samples", every_s: float = 1.0):
        self.path = Path(out_dir) / PROGRESS_FILE
        self.every_s = every_s
        self.doc = {"stage": stage, "unit": unit, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                    "epoch": 0, "step": 0, "rate": None, "events": []}
        self._written: float | None = None             # monotonic time of the last write (None: never written)
        self._epoch_start, self._items = None, 0

    def step(self, epoch: int, step: int, items: int) -> None:
        """``items`` processed by the whole group in this step (e.g. the global batch)."""
        now = time.monotonic()
        if self._epoch_start is None or epoch != self.doc["epoch"]:
            self._epoch_start, self._items = now, 0
        self._items += items
        self.doc.update(epoch=epoch, step=step)
        if now - self._epoch_start > 0:
            self.doc["rate"] = self._items / (now - self._epoch_start)
        if self._written is None or now - self._written >= self.every_s:
            self._write(now)

    def event(self, text: str) -> None:
        self.doc["events"].append(text)
        self._write(time.monotonic())

    def close(self) -> None:
        self._write(time.monotonic())

    def _write(self, now: float) -> None:
        self._written = now
        write_json(self.path, self.doc)


def read_progress(out_dir: str | Path) -> dict | None:
    """The stage's ``progress.json``, or None when there is none yet (or it is being replaced)."""
    try:
        return json.loads((Path(out_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
