"""Config of the pseudo-annotation stage (stage-1 model + shards -> one box and one pseudo-class per frame)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from avdet.config import AudioConfig, SelfLabelConfig, require
from data.config import StreamConfig


@dataclass
class PseudoConfig:
    """Shards (``manifest``) + stage-1 artifacts (``stage1_dir``: ``model.pt``, ``config.yaml``) -> COCO pseudo-
    annotations under ``out_dir`` (see :mod:`distributed.pseudo.annotate`).

    The model and the audio front end (log-mel settings) come from the stage-1 ``config.yaml``, so the frames and
    spectrograms are computed exactly as in stage 1; ``stream`` only says how the shards are read (block rows, read
    concurrency, tolerated bad fraction, batches the driver prefetches) — its ``batch_size``, ``shuffle``,
    ``shuffle_buffer`` and ``audio`` are replaced, and ``num_workers`` (the plain DataLoader's) is not used
    (see :meth:`stream_config`).
    ``num_actors`` actors of the inference pool each reserve ``actor_cpus`` CPUs and run ``torch_threads`` threads
    (``actor_gpus`` > 0 puts each actor on a GPU share). ``num_heatmaps`` raw heatmaps per split (evenly spaced over
    the sorted sample indices) are kept in ``heatmaps_<split>.npz`` for the report.
    """
    stage1_dir: str = ""
    manifest: str = ""
    out_dir: str = "outputs/pseudo"
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    ray_address: str = "local"          # "local" starts Ray on 127.0.0.1; "auto" joins a running cluster
    num_actors: int = 2
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0
    torch_threads: int = 1
    batch_size: int = 64                # frames per inference call
    self_box: str = "method"            # "method": the method's own box where it has one (seed 001: its best
                                        # proposal), else the map's; "map": always the box from the map
    num_heatmaps: int = 64
    selflabel: SelfLabelConfig = field(default_factory=SelfLabelConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)

    def check(self) -> None:
        require(bool(self.splits), "splits", "must name at least one split")
        bad = [s for s in self.splits if s not in ("train", "test")]
        require(not bad, "splits", f"entries {bad} are not 'train' or 'test'")
        require(len(set(self.splits)) == len(self.splits), "splits", "must not repeat a split")
        require(self.num_actors >= 1, "num_actors", "must be >= 1")
        require(self.actor_cpus > 0, "actor_cpus", "must be > 0")
        require(self.actor_gpus >= 0, "actor_gpus", "must be >= 0")
        require(self.torch_threads >= 1, "torch_threads", "must be >= 1")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.num_heatmaps >= 0, "num_heatmaps", "must be >= 0")
        require(self.self_box in ("method", "map"), "self_box", "must be 'method' or 'map'")

    def stream_config(self, audio: AudioConfig) -> StreamConfig:
        """Unshuffled reader settings with this stage's batch size and the stage-1 ``audio``."""
        return dataclasses.replace(self.stream, audio=audio, batch_size=self.batch_size, shuffle=False,
                                   shuffle_buffer=0)
