"""Config of the detector stage: pseudo-annotations + shards -> a torchvision Faster R-CNN."""
from __future__ import annotations

from dataclasses import dataclass, field

from avdet.config import DetectorConfig, require
from data.config import StreamConfig


@dataclass
class DetectorTrainConfig:
    """Pseudo-annotations (``pseudo_dir``/``pseudo_<split>.json``) + shards (``manifest``) -> detector in ``out_dir``.

    ``detector.num_classes`` is set to K, the number of categories of the pseudo-annotations. ``batch_size`` is
    images per worker per step; ``lr`` is for the global batch (torchvision's reference: 0.02 for 16 images).
    Warmup is linear from ``warmup_factor``·lr over ``warmup_steps`` steps; ``lr`` is multiplied by ``lr_gamma`` at
    each epoch in ``lr_steps``. ``min_confidence`` drops pseudo-annotations with a lower score; ``max_images`` > 0
    trains on a fixed random subset of that many annotated frames (CPU demos). ``torch_threads`` 0 keeps Ray's
    default (one thread per reserved CPU). ``hflip`` (probability) and ``scale_jitter`` ([lo, hi] resize factors,
    then crop/pad back to the frame size) augment the training images as torchvision's detection references do;
    ``seed`` drives initialisation, the stream order, the box samplers and the augmentations. ``init_from_stage1``
    starts the backbone (``detector.backbone: resnet18_fpn``) from the visual trunk of the stage-1 weights
    ``stage1_model`` (the pipeline sets it to ``<workdir>/stage1/model.pt``; :mod:`avdet.transfer`), exported to
    ``out_dir``/backbone_from_stage1.pt, which every worker reads (``out_dir`` is on storage the workers share, as the
    checkpoints are). ``fail_at_step`` >= 0 is a FAULT-INJECTION knob for tests: rank 0 raises
    once at that global step (a marker file in ``out_dir`` stops it recurring after the restart); leave it at -1.
    """
    pseudo_dir: str = ""
    manifest: str = ""
    out_dir: str = "outputs/detector"
    split: str = "train"
    ray_address: str = "local"
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    epochs: int = 4
    batch_size: int = 8
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    warmup_factor: float = 0.001
    lr_steps: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    grad_clip: float = 0.0
    min_confidence: float = 0.0
    max_images: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int = 0
    report_every: int = 20
    max_failures: int = 0
    seed: int = 0
    hflip: float = 0.0
    scale_jitter: list[float] = field(default_factory=lambda: [1.0, 1.0])
    fail_at_step: int = -1
    init_from_stage1: bool = False
    stage1_model: str = ""
    stream: StreamConfig = field(default_factory=StreamConfig)

    def augments(self) -> bool:
        return self.hflip > 0 or list(self.scale_jitter) != [1.0, 1.0]

    def check(self) -> None:
        require(self.split in ("train", "test"), "split", "must be 'train' or 'test'")
        require(self.epochs >= 1, "epochs", "must be >= 1")
        require(self.batch_size >= 1, "batch_size", "must be >= 1 (images per worker per step)")
        require(self.lr > 0, "lr", "must be > 0")
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(0 < self.warmup_factor <= 1, "warmup_factor", "must be in (0, 1]")
        require(all(e >= 1 for e in self.lr_steps), "lr_steps", "entries must be epochs >= 1")
        require(0 < self.lr_gamma <= 1, "lr_gamma", "must be in (0, 1]")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = no clipping)")
        require(0 <= self.min_confidence <= 1, "min_confidence", "must be in [0, 1]")
        require(self.max_images >= 0, "max_images", "must be >= 0 (0 = all)")
        require(self.num_workers >= 1, "num_workers", "must be >= 1")
        require(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        require(self.torch_threads >= 0, "torch_threads", "must be >= 0 (0 = Ray's default)")
        require(self.report_every >= 1, "report_every", "must be >= 1")
        require(self.max_failures >= -1, "max_failures", "must be >= 0, or -1 for unlimited")
        require(0 <= self.hflip <= 1, "hflip", "must be a probability in [0, 1]")
        require(len(self.scale_jitter) == 2 and 0 < self.scale_jitter[0] <= self.scale_jitter[1] <= 4,
                "scale_jitter", "must be [lo, hi] with 0 < lo <= hi <= 4 ([1, 1] = off)")
        require(self.seed >= 0, "seed", "must be >= 0")
        if self.init_from_stage1:
            require(self.detector.backbone == "resnet18_fpn", "init_from_stage1",
                    f"needs detector.backbone resnet18_fpn (the stage-1 trunk's topology), not "
                    f"{self.detector.backbone!r}")
            require(not self.detector.backbone_weights, "init_from_stage1",
                    "and detector.backbone_weights both set the backbone's weights; choose one")
        require(self.fail_at_step >= -1, "fail_at_step", "must be >= 0, or -1 for no fault injection")
