"""Config of stage 1 (joint localisation + self-labelling), composed from the method's and the layers' configs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from avdet.config import AudioConfig, LossConfig, ModelConfig, SinkhornConfig, require
from data.config import StreamConfig
from distributed.config import RelabelConfig, TrainConfig


@dataclass
class Stage1Config:
    """Shards (``manifest``) -> stage-1 model + label table per epoch under ``out_dir``.

    ``audio`` is the one definition of the audio window and log-mel, ``train.batch_size`` the one batch size and
    ``train.seed`` the one seed (model initialisation, stream order, the initial equipartition, k-means): the
    stream's copies are replaced by them (see :meth:`stream_config`).
    ``ray_address``: "local" starts Ray on 127.0.0.1; "auto" (or an address) joins a running cluster.
    """
    manifest: str = ""
    out_dir: str = "outputs/stage1"
    split: str = "train"
    ray_address: str = "local"
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sinkhorn: SinkhornConfig = field(default_factory=SinkhornConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)

    def check(self) -> None:
        require(self.split in ("train", "test"), "split", "must be 'train' or 'test'")

    def stream_config(self, shuffle: bool = True) -> StreamConfig:
        return dataclasses.replace(self.stream, audio=self.audio, batch_size=self.train.batch_size, shuffle=shuffle,
                                   seed=self.train.seed)
