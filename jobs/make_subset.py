"""Build one of the paper's training subsets from the dataset's own files, as a VGGSound CSV (data/subsets.py).

    python jobs/make_subset.py vggsound csv=vggsound.csv classes=data/classlists/vggsound_instruments_39.txt \
        out=vggsound_instruments_39.csv
    python jobs/make_subset.py audioset ontology=ontology.json train_segments=[unbalanced_train_segments.csv] \
        test_segments=[balanced_train_segments.csv] classes=data/classlists/audioset_instruments_30.txt \
        out=audioset_instruments_30.csv

The first word is the source (the same as ``source=vggsound``); the rest are dotted overrides of
``data.subsets.SubsetConfig`` (or ``--config file.yaml``); ``--dry-run`` checks them and the input files.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.subsets import SubsetConfig, make_subset, subset_inputs  # noqa: E402
from jobs.cli import parse, setup_logging  # noqa: E402

SOURCES = ("vggsound", "audioset")


def main(argv: list[str]) -> dict:
    """``[vggsound|audioset] key=value ... [--dry-run]``; returns the subset's counts."""
    setup_logging()
    argv = [f"source={a}" if a in SOURCES else a for a in argv]
    return make_subset(parse(SubsetConfig, argv, __doc__.split("\n")[0], subset_inputs))


if __name__ == "__main__":
    main(sys.argv[1:])
