"""The one command-line shape every job shares: ``--config file.yaml``, dotted overrides ``key.sub=value`` and
``--dry-run``.

``--dry-run`` validates the config and that the input paths the job names exist, prints the resolved config as YAML
and exits 0 before the job starts Ray or writes anything; a bad value or a missing input exits 2 naming the key.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from avdet.config import ConfigError, load_config, to_dict

T = TypeVar("T")

Inputs = Callable[[Any], dict[str, str]]     # config -> {dotted key: path that must exist for this config}


def parser_for(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config file (defaults: the dataclass defaults)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config and the input paths, print the resolved config, exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 model.num_clusters=9")
    return parser


def parse_args(cls: type[T], argv: list[str], description: str, inputs: Inputs | None = None,
               show: Callable[[T], Any] | None = None,
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
               ) -> tuple[T, argparse.Namespace]:
    """(validated config of type ``cls``, parsed arguments). Errors name the key and exit with status 2.

    ``inputs(cfg)`` lists the input paths the job reads (checked on ``--dry-run``); ``show(cfg)`` is what
    ``--dry-run`` prints (default: the config itself; a pipeline shows every stage's derived config);
    ``add_arguments`` adds job-specific options (their values are in the returned namespace).
    """
    parser = parser_for(description)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_intermixed_args(argv)      # options may follow the overrides
    try:
        cfg = load_config(cls, args.config, args.overrides)
    except ConfigError as e:
        parser.error(f"bad config: {e}")
    if args.dry_run:
        dry_run(parser, cfg, inputs, show)
    return cfg, args


def parse(cls: type[T], argv: list[str], description: str, inputs: Inputs | None = None,
          show: Callable[[T], Any] | None = None) -> T:
    """Parse ``argv`` into a validated config of type ``cls`` (see :func:`parse_args`)."""
    return parse_args(cls, argv, description, inputs, show)[0]


def missing_inputs(paths: dict[str, str]) -> list[str]:
    """``"key: why"`` for every input path that is unset or does not exist."""
    return [f"{key}: not set (the job reads it)" if not p else f"{key}: {p} does not exist"
            for key, p in paths.items() if not p or not Path(p).exists()]


def dry_run(parser: argparse.ArgumentParser, cfg: Any, inputs: Inputs | None,
            show: Callable[[Any], Any] | None = None) -> None:
    """Check the inputs (exit 2 naming each missing one), print the resolved config as YAML, exit 0."""
    try:
        problems = missing_inputs(inputs(cfg) if inputs else {})
        shown = show(cfg) if show else cfg
    except ConfigError as e:
        parser.error(f"bad config: {e}")
    if problems:
        parser.error("missing input: " + "; ".join(problems))
    sys.stdout.write(yaml.safe_dump(to_dict(shown), sort_keys=False))
    sys.stdout.write("# dry run: config valid, inputs present; nothing started, nothing written\n")
    parser.exit(0)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """``--verbose``: the libraries' and Ray workers' output on the console too (default: in the run's log files)."""
    parser.add_argument("--verbose", action="store_true",
                        help="show every log line (Ray, Ray Data, DeepSpeed, the workers) on the console")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)   # its AVX probing is not news
