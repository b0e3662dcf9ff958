"""Generate the synthetic VGGSound-shaped instruments benchmark.

    python jobs/make_synthetic.py --config clusters/local/synthetic_demo.yaml --out /tmp/synth_demo [key=value ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.synthetic.config import SynthConfig  # noqa: E402
from data.synthetic.generate import generate  # noqa: E402
from jobs.cli import parse_args, setup_logging  # noqa: E402


def _out(parser) -> None:
    parser.add_argument("--out", required=True, help="dataset root directory")


def main(argv: list[str] | None = None) -> dict:
    """``--config path --out dir [dotted overrides] [--dry-run]``; returns the generation report."""
    setup_logging()
    cfg, args = parse_args(SynthConfig, sys.argv[1:] if argv is None else argv, __doc__.split("\n")[0],
                           add_arguments=_out)
    return generate(cfg, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
