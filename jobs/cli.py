"""The one command-line shape every job shares: ``--config file.yaml`` then dotted overrides ``key.sub=value``."""
from __future__ import annotations

import argparse
import logging
from typing import TypeVar

from avdet.config import load_config

T = TypeVar("T")


def parse(cls: type[T], argv: list[str], description: str) -> T:
    """Parse ``argv`` into a validated config of type ``cls`` (errors name the key and exit with status 2)."""
    from avdet.config import ConfigError

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config file (defaults: the dataclass defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 model.num_clusters=9")
    args = parser.parse_args(argv)
    try:
        return load_config(cls, args.config, args.overrides)
    except ConfigError as e:
        parser.error(f"bad config: {e}")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)   # its AVX probing is not news
