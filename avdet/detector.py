"""The off-the-shelf torchvision Faster R-CNN over K pseudo-classes + background (paper §3.3).

Proposals whose IoU with the pseudo-box is below ``cfg.bg_iou`` (τ ≤ 0.7) are background, above ``cfg.fg_iou``
foreground (torchvision's ``box_bg_iou_thresh`` / ``box_fg_iou_thresh``).

Nothing is ever downloaded: the builders are called with ``weights=None, weights_backbone=None``. Local ImageNet
weights of the backbone (a torchvision ``resnet50`` / ``mobilenet_v3_large`` state_dict) can be loaded after
construction from ``cfg.backbone_weights``; the first ``5 − trainable_backbone_layers`` ResNet stages (or the
MobileNet equivalents) are then frozen, as torchvision does for pretrained backbones. Batch norms stay
``nn.BatchNorm2d`` so that the checkpoint rebuilds with the plain builder call.

Checkpoint format (``save_detector`` / ``load_detector``), readable with plain torch + torchvision::

    {"state_dict": {...}, "builder": "torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn",
     "kwargs": {"weights": None, "weights_backbone": None, "num_classes": K + 1, "min_size": ..., ...}}

    model = getattr(torchvision.models.detection, ckpt["builder"].rsplit(".", 1)[1])(**ckpt["kwargs"])
    model.load_state_dict(ckpt["state_dict"])

``resnet18_fpn`` (the stage-1 visual trunk's topology; torchvision has no Faster R-CNN builder for it) is the
``FasterRCNN`` class over torchvision's own ``resnet_fpn_backbone``, with trainable batch norms as torchvision's
builders use when they start from scratch, the FPN fed by ``cfg.returned_layers`` and one anchor size per FPN map;
its checkpoint says so in ``backbone`` and ``anchor_generator`` entries::

    {"state_dict": {...}, "builder": "torchvision.models.detection.FasterRCNN", "kwargs": {"num_classes": ...},
     "backbone": {"builder": "torchvision.models.detection.backbone_utils.resnet_fpn_backbone",
                  "kwargs": {"backbone_name": "resnet18", "weights": None, "trainable_layers": 5,
                             "returned_layers": [2, 3, 4]},
                  "norm_layer": "torch.nn.BatchNorm2d"},
     "anchor_generator": {"builder": "torchvision.models.detection.anchor_utils.AnchorGenerator",
                          "kwargs": {"sizes": [[32], [64], [128], [256]], "aspect_ratios": [[0.5, 1.0, 2.0]] * 4}}}

    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    model = FasterRCNN(resnet_fpn_backbone(**ckpt["backbone"]["kwargs"], norm_layer=torch.nn.BatchNorm2d),
                       rpn_anchor_generator=AnchorGenerator(**ckpt["anchor_generator"]["kwargs"]), **ckpt["kwargs"])
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import FasterRCNN

from avdet.config import DetectorConfig
from avdet.fileio import write_atomic

log = logging.getLogger(__name__)

__all__ = ["BUILDERS", "detector_spec", "build_detector", "save_detector", "load_detector"]

BUILDERS = {
    "resnet50_fpn": "torchvision.models.detection.fasterrcnn_resnet50_fpn",
    "mobilenet_v3_fpn": "torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn",
    "resnet18_fpn": "torchvision.models.detection.FasterRCNN",
}
_BUILDER_PREFIX = "torchvision.models.detection."
# Backbones the FasterRCNN class is built over: torchvision's FPN extractor of a torchvision ResNet, batch norms
# trainable (its default FrozenBatchNorm2d is for pretrained weights; the builders above use nn.BatchNorm2d from
# scratch).
_BACKBONES = {"resnet18_fpn": {"builder": "torchvision.models.detection.backbone_utils.resnet_fpn_backbone",
                               "kwargs": {"backbone_name": "resnet18", "weights": None, "trainable_layers": 5},
                               "norm_layer": "torch.nn.BatchNorm2d"}}
_NORM_LAYERS = {"torch.nn.BatchNorm2d": torch.nn.BatchNorm2d}
_ANCHOR_GENERATOR = "torchvision.models.detection.anchor_utils.AnchorGenerator"
_ASPECT_RATIOS = (0.5, 1.0, 2.0)                     # torchvision's, on every FPN map


def detector_spec(cfg: DetectorConfig) -> dict:
    """The builder call for ``cfg``: ``{"builder": dotted torchvision name, "kwargs": {...}}`` (plain JSON values)."""
    if cfg.backbone not in BUILDERS:
        raise ValueError(f"detector backbone {cfg.backbone!r} unknown; choose one of {sorted(BUILDERS)}")
    kwargs = {
        **({} if cfg.backbone in _BACKBONES else {"weights": None, "weights_backbone": None}),
        "num_classes": int(cfg.num_classes) + 1,          # K pseudo-classes + background (label 0)
        "min_size": int(cfg.min_size), "max_size": int(cfg.max_size),
        "box_fg_iou_thresh": float(cfg.fg_iou), "box_bg_iou_thresh": float(cfg.bg_iou),
        "box_batch_size_per_image": int(cfg.box_batch_size_per_image),
        "rpn_post_nms_top_n_train": int(cfg.rpn_post_nms_top_n_train),
        "rpn_post_nms_top_n_test": int(cfg.rpn_post_nms_top_n_test),
    }
    spec = {"builder": BUILDERS[cfg.backbone], "kwargs": kwargs}
    if cfg.backbone in _BACKBONES:
        spec["backbone"] = {**_BACKBONES[cfg.backbone], "kwargs": {**_BACKBONES[cfg.backbone]["kwargs"],
                                                                    "returned_layers": list(cfg.returned_layers)}}
        sizes = cfg.fpn_anchor_sizes()
        spec["anchor_generator"] = {"builder": _ANCHOR_GENERATOR,
                                    "kwargs": {"sizes": [[s] for s in sizes],
                                               "aspect_ratios": [list(_ASPECT_RATIOS)] * len(sizes)}}
    return spec


def _torchvision_callable(builder: str, what: str):
    if not builder.startswith(_BUILDER_PREFIX):
        raise ValueError(f"{what} {builder!r} is not in torchvision.models.detection; refusing it")
    module = importlib.import_module(builder.rsplit(".", 1)[0])
    return getattr(module, builder.rsplit(".", 1)[1])


def _call_builder(builder: str, kwargs: dict, backbone: dict | None = None,
                  anchor_generator: dict | None = None) -> FasterRCNN:
    """The detector of a spec (:func:`detector_spec`, or a checkpoint's record): a torchvision builder called with
    ``kwargs``, or the FasterRCNN class over the backbone its ``backbone`` entry builds, with the RPN anchors its
    ``anchor_generator`` entry builds (checkpoints written before it have none: torchvision's default). Only
    weights=None passes."""
    for kw in (kwargs, (backbone or {}).get("kwargs", {})):
        if kw.get("weights") is not None or kw.get("weights_backbone") is not None:
            raise ValueError(f"detector kwargs ask for downloadable weights ({kw}); only weights=None is allowed")
    build = _torchvision_callable(builder, "detector builder")
    if backbone is None:
        return build(**kwargs)
    if backbone.get("norm_layer") not in _NORM_LAYERS:
        raise ValueError(f"detector backbone norm_layer {backbone.get('norm_layer')!r} unknown; "
                         f"expected one of {sorted(_NORM_LAYERS)}")
    body = _torchvision_callable(backbone["builder"], "detector backbone builder")(
        **backbone["kwargs"], norm_layer=_NORM_LAYERS[backbone["norm_layer"]])
    if anchor_generator is not None:
        if anchor_generator.get("builder") != _ANCHOR_GENERATOR:
            raise ValueError(f"detector anchor_generator builder {anchor_generator.get('builder')!r} is not "
                             f"{_ANCHOR_GENERATOR}; refusing it")
        kwargs = {**kwargs, "rpn_anchor_generator": _torchvision_callable(
            _ANCHOR_GENERATOR, "anchor generator")(**anchor_generator["kwargs"])}
    return build(body, **kwargs)


def _freeze_backbone(model: FasterRCNN, backbone: str, trainable_layers: int) -> None:
    """Freeze the early backbone stages like torchvision's ``_resnet_fpn_extractor`` / ``_mobilenet_extractor``."""
    body = model.backbone.body
    if backbone in ("resnet50_fpn", "resnet18_fpn"):
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers >= 5:
            train.append("bn1")
        for name, p in body.named_parameters():
            p.requires_grad_(any(name.startswith(t) for t in train))
        return
    blocks = list(body.children())
    stages = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
    k = min(trainable_layers, len(stages))
    freeze_before = len(blocks) if k == 0 else stages[len(stages) - k]
    for b in blocks[:freeze_before]:
        for p in b.parameters():
            p.requires_grad_(False)


def _load_backbone_weights(model: FasterRCNN, path: str) -> None:
    """Load a torchvision classification state_dict (resnet50 / resnet18 / mobilenet_v3_large, or a stage-1 trunk
    exported by :func:`avdet.transfer.export_visual_trunk`) into ``model.backbone.body``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"detector.backbone_weights: {path} does not exist (weights are never downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k.removeprefix("features."): v for k, v in state.items()}  # mobilenet_v3_large keeps blocks in .features
    body = model.backbone.body
    own = body.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(f"detector.backbone_weights: no tensor of {path} matches the {type(body).__name__} backbone")
    body.load_state_dict(matched, strict=False)
    missing = sorted(set(own) - set(matched))
    log.info("loaded %d backbone tensors from %s (%d left at init: %s)", len(matched), path, len(missing),
             ", ".join(missing[:5]))


def build_detector(cfg: DetectorConfig) -> FasterRCNN:
    """A torchvision Faster R-CNN with ``cfg.num_classes + 1`` classes (index 0 = background); never downloads."""
    spec = detector_spec(cfg)
    model = _call_builder(spec["builder"], spec["kwargs"], spec.get("backbone"), spec.get("anchor_generator"))
    if cfg.backbone_weights:
        _load_backbone_weights(model, cfg.backbone_weights)
        _freeze_backbone(model, cfg.backbone, cfg.trainable_backbone_layers)
    return model


def save_detector(model: FasterRCNN, cfg: DetectorConfig, path: str | os.PathLike) -> Path:
    """Write ``{"state_dict", "builder", "kwargs"}`` atomically (temp file, then rename) and return the path."""
    spec = detector_spec(cfg)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    record = {"state_dict": state, **spec}
    return write_atomic(path, lambda f: torch.save(record, f))


def load_detector(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> FasterRCNN:
    """Rebuild a detector saved by :func:`save_detector` with torchvision alone (``weights_only=True``); eval mode."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    for key in ("state_dict", "builder", "kwargs"):
        if key not in ckpt:
            raise ValueError(f"detector checkpoint {path} has no {key!r}; was it written by save_detector?")
    model = _call_builder(ckpt["builder"], dict(ckpt["kwargs"]), ckpt.get("backbone"), ckpt.get("anchor_generator"))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


@torch.no_grad()
def detect(model: torch.nn.Module, frames: np.ndarray | torch.Tensor,
           device: str | torch.device = "cpu") -> list[dict[str, np.ndarray]]:
    """Detections for a batch of frames, the one inference path (detector stage, evaluation, benchmarks):
    ``frames`` (B, H, W, 3) uint8 -> per frame ``{"boxes" (n,4) float32 xyxy frame pixels, "scores" (n,) float32,
    "labels" (n,) int64 category id (= pseudo-class + 1)}``. Puts the model in eval mode on ``device``."""
    model.eval().to(device)
    frames = torch.as_tensor(np.ascontiguousarray(frames))
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"detect: frames must be (B, H, W, 3) uint8, got {tuple(frames.shape)} {frames.dtype}")
    images = [f.permute(2, 0, 1).to(device).float().div_(255.0) for f in frames]
    return [{"boxes": o["boxes"].cpu().numpy().astype(np.float32), "scores": o["scores"].cpu().numpy(),
             "labels": o["labels"].cpu().numpy().astype(np.int64)} for o in model(images)]
