"""Generate the synthetic VGGSound-shaped instruments benchmark.

    python jobs/make_synthetic.py --config clusters/local/synthetic_demo.yaml --out /tmp/synth_demo [key=value ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

try:
    import data.synthetic  # noqa: F401
except ImportError:  # run as a script from anywhere: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.synthetic.generate import main as generate_main  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """``--config path --out dir [dotted overrides]``; returns the generation report."""
    return generate_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
