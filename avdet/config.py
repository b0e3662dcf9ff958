"""Typed configuration: dataclasses loaded from YAML with dotted command-line overrides.

Every stage has a small dataclass config. ``load_config(Cls, path, ["train.lr=1e-3"])`` builds one from an optional
YAML file and overrides; unknown keys, wrong types and impossible values raise :class:`ConfigError` naming the key
before any work starts. ``save_config`` writes the resolved config next to a stage's output.

This module also holds the method's own configs (audio, model, loss, Sinkhorn, self-labels, detector); the data and
distributed layers keep theirs beside their code and compose them.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from avdet.fileio import write_atomic

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or impossible. The message names the key."""


# ---------------------------------------------------------------------------------------------------------------
# machinery


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string already parsed by YAML) to type ``tp`` or raise naming ``key``."""
    origin = typing.get_origin(tp)
    if value is None and not _allows_none(tp):
        raise ConfigError(f"{key}: null is not allowed here (expected {_type_name(tp)}); give a value or leave the "
                          f"key out for its default")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not any of {[_type_name(a) for a in args]}")
    if typing.get_origin(tp) is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {_type_name(tp)}, got {value!r}")
        return _from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        (item_tp, *_rest) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: {value!r} is not a finite number (inf and nan are not allowed)")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def _allows_none(tp: Any) -> bool:
    """``tp`` is Any, Optional[...] / ``X | None``, or a Literal listing None."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is type(None):
        return True
    if origin in (typing.Union, types.UnionType, typing.Literal):
        return type(None) in typing.get_args(tp) or None in typing.get_args(tp)
    return False


def _from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)} "
            f"(known in {prefix.rstrip('.') or cls.__name__}: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    return obj


def from_dict(cls: type[T], data: dict) -> T:
    """Build and validate a config from a plain nested dict (e.g. one that crossed a process boundary)."""
    cfg = _from_dict(cls, data)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (lists, not tuples) of a config dataclass: what YAML and JSON hold."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.lr=1e-3", "model.k=9"]`` -> nested dict. Values are parsed as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.constructor.ConstructorError as e:     # e.g. !!python/object/apply: never built, never a string
            raise ConfigError(f"override {item!r}: {_yaml_problem(e)}") from None
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key, value)
    return tree


def _yaml_problem(e: Exception) -> str:
    """One line for a YAML error: where, what, and that tags such as ``!!python/...`` are refused."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = " ".join(str(getattr(e, "problem", None) or e).split())
    hint = " (YAML tags such as !!python/... are not allowed in configs; write plain values)" \
        if isinstance(e, yaml.constructor.ConstructorError) else ""
    return f"{where}{what}{hint}"


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls`` <- YAML file at ``path`` <- dotted ``overrides``; then ``validate()`` every section."""
    data: dict = to_dict(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path}: {_yaml_problem(e)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping, got {type(loaded).__name__}")
        data = _merge(data, loaded)
    data = _merge(data, parse_overrides(overrides or []))
    cfg = _from_dict(cls, data)
    validate(cfg)
    return cfg


def validate(cfg: Any, prefix: str = "") -> None:
    """Call ``cfg.check()`` on every nested section; a check raises ConfigError with keys relative to its section."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            validate(v, prefix + f.name + ".")
    check = getattr(cfg, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as e:
            raise ConfigError(f"{prefix}{e}") from None


def require(ok: bool, key: str, why: str) -> None:
    """Validation helper: ``require(k >= 1, "num_clusters", "must be >= 1")``."""
    if not ok:
        raise ConfigError(f"{key} {why}")


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) and return the path."""
    return write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def replace(cfg: T, **changes: Any) -> T:
    return dataclasses.replace(cfg, **changes)


# ---------------------------------------------------------------------------------------------------------------
# the method's configs (METHOD.md §2-§5; defaults where the paper is silent are this project's choice)


@dataclass
class AudioConfig:
    """Waveform -> log-mel spectrogram. 1 s at 16 kHz with hop 160 gives 101 time frames."""
    sample_rate: int = 16000
    window_s: float = 1.0
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.window_s))

    def check(self) -> None:
        require(self.sample_rate > 0, "sample_rate", "must be > 0")
        require(self.window_s > 0, "window_s", "must be > 0")
        require(self.n_mels >= 1, "n_mels", "must be >= 1")
        require(self.n_fft >= 1, "n_fft", "must be >= 1")
        require(1 <= self.win_length <= self.n_fft, "win_length", "must be in [1, n_fft]")
        require(self.hop_length >= 1, "hop_length", "must be >= 1")
        require(0 <= self.f_min < self.f_max <= self.sample_rate / 2, "f_max", "must satisfy 0 <= f_min < f_max <= sample_rate/2")


@dataclass
class ModelConfig:
    """Stage-1 network: ResNet-18-family visual and audio backbones, localisation and classification heads."""
    image_size: int = 224           # frame side it is trained at (the trunk is fully convolutional and takes any
                                    # size; the pipeline sets it from frame_size, benchmarks size inputs by it)
    visual_width: int = 64          # ResNet base width (64 = torchvision resnet18); narrower for the CPU demo
    audio_width: int = 64
    embed_dim: int = 128            # C, the shared localisation space
    num_clusters: int = 300         # K pseudo-classes
    rho_init: float = 0.07          # learnable temperature ρ of the heatmap
    visual_weights: str | None = None   # local path of pretrained weights (state_dict); never downloaded
    audio_weights: str | None = None
    visual_padding: str = "zeros"   # "zeros" (torchvision) | "reflect" | "replicate": how the visual trunk's convs pad
    visual_stride: int = 16         # 16 (layer4 at stride 1) or 8 (layers 3 and 4): the heatmap grid is image/stride

    def check(self) -> None:
        require(self.num_clusters >= 1, "num_clusters", "must be >= 1 (K pseudo-classes)")
        require(self.visual_padding in ("zeros", "reflect", "replicate"), "visual_padding",
                "must be 'zeros', 'reflect' or 'replicate'")
        require(self.image_size >= 32, "image_size", "must be >= 32")
        require(self.visual_stride in (8, 16), "visual_stride", "must be 8 or 16")
        require(self.visual_width >= 4 and self.audio_width >= 4, "visual_width", "and audio_width must be >= 4")
        require(self.embed_dim >= 1, "embed_dim", "must be >= 1")
        require(self.rho_init > 0, "rho_init", "must be > 0")


@dataclass
class LossConfig:
    lam: float = 0.5                # λ in L = λ·L_NC + (1−λ)·L_clust

    def check(self) -> None:
        require(0.0 <= self.lam <= 1.0, "lam", "must be in [0, 1]")


@dataclass
class IterativeConfig:
    """Seed 003's iterative contrastive learning (``stage1.method=iterative``, :mod:`avdet.iterative`). The paper does
    not state τ, δ_v or δ_a ("in the supplementary"); these defaults are ours."""
    tau: float = 0.07               # temperature of eq. 3 and eq. 7
    delta_v: float = 0.5            # sounding patches: min-max normalised R̃ > δ_v (eq. 2, 4, 5)
    delta_a: float = 0.9            # inter-frame positives: cosine of the previous epoch's audio embeddings >= δ_a
    init_epochs: int = 1            # epochs of eq. 3 (initialisation) before the iterative epochs (eq. 7)
    itr: bool = True                # ablation switches (the paper's Table 4): v+ from the sounding patches,
    intra: bool = True              # the silent patches of the same frame as negatives,
    inter: bool = True              # positives across frames by audio similarity

    def check(self) -> None:
        require(self.tau > 0, "tau", "must be > 0")
        require(0.0 <= self.delta_v <= 1.0, "delta_v", "must be in [0, 1] (a min-max normalised response)")
        require(-1.0 <= self.delta_a <= 1.0, "delta_a", "must be in [-1, 1] (a cosine similarity)")
        require(self.init_epochs >= 1, "init_epochs", "must be >= 1 (eq. 7 needs a previous epoch's maps)")


@dataclass
class DSOLConfig:
    """Seed 002 (``stage1.method=dsol``, :mod:`avdet.dsol`). Stage 1: the mask threshold is the paper's; k-means over
    the masked object features of the whole dataset after every stage-1 epoch from ``init_epochs`` on (``K`` =
    ``model.num_clusters``, FAISS, as the relabel round's k-means); its centroids are the object dictionary. Stage 2:
    the last ``stage2_epochs`` of ``train.epochs`` (the same budget as every method) train on the multi-source clips
    of ``stage2_split`` with L_2 = L_c + λ·L_1 (eq. 8)."""
    mask_threshold: float = 0.05    # m = [l > 0.05] (paper §3.1, ablation 0.03 / 0.07)
    init_epochs: int = 1            # localisation-only epochs before the first dictionary (the authors' init_num)
    stage2_epochs: int = 0          # 0 = stage 1 only; needs multi-source clips in stage2_split
    stage2_split: str = "train_multi"   # the shards' split of the multi-source training clips
    lam: float = 0.5                # λ of eq. 8 (paper: 0.5; robust in [0.5, 1.0])

    def check(self) -> None:
        require(0.0 < self.mask_threshold < 1.0, "mask_threshold", "must be in (0, 1) (l is a sigmoid map)")
        require(self.init_epochs >= 1, "init_epochs", "must be >= 1 (the first dictionary needs a trained map)")
        require(self.stage2_epochs >= 0, "stage2_epochs", "must be >= 0")
        require(self.lam >= 0.0, "lam", "must be >= 0")
        require(bool(self.stage2_split), "stage2_split", "must name a split")


@dataclass
class ProposalConfig:
    """Seed 001 (``stage1.method=proposals``, :mod:`avdet.proposal_ssl`): ``top_k`` proposals in the bag (paper: 20;
    10 and 30 ablated), ``select=False`` the "without ProSelectNet" ablation (the source's first ``top_k``, not the
    GRM's), λ of the consistency loss (paper: 0.5), ``set`` the proposal set beside the shards the stream joins
    (``jobs/proposals.py``; its ``max_boxes`` must be >= ``top_k`` for a full bag). The self-box is the best proposal
    (``pseudo.self_box=map``: the location-map-only mode); the on/off-screen threshold is ``evaluate.onscreen_d``.
    ``warmup_epochs`` (not in seed 001; 0 = the paper's loss from the first step): the first epochs train the frame
    stream alone (:func:`avdet.proposal_ssl.frame_loss`, ``warmup_loss`` "mil" or "triplet"), so that the bag is
    chosen by a trained attention."""
    top_k: int = 20
    select: bool = True
    lam: float = 0.5
    set: str = "selective_search-fast-100"
    warmup_epochs: int = 0
    warmup_loss: str = "mil"

    def check(self) -> None:
        require(self.top_k >= 1, "top_k", "must be >= 1")
        require(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        require(self.warmup_loss in ("mil", "triplet"), "warmup_loss", "must be 'mil' or 'triplet'")
        require(self.lam >= 0.0, "lam", "must be >= 0")
        require(bool(self.set), "set", "must name a proposal set (jobs/proposals.py writes it)")


@dataclass
class SinkhornConfig:
    """Sinkhorn-Knopp self-labelling over the whole dataset."""
    lambda_sk: float = 20.0         # inverse entropic regularisation (SeLa/SeLaVi ~20-25)
    marginal: str = "uniform"       # "uniform" or "gaussian"
    gaussian_std: float = 0.5       # for the Gaussian marginal: std of cluster sizes, relative to K (paper: AudioSet)
    max_iters: int = 200
    tol: float = 1e-3               # stop when column marginals are within tol (relative) of the target
    dtype: str = "float32"          # "float32" or "float64"
    domain: str = "auto"            # "auto" = stabilised scaled kernel (2 matvecs/pass; sparse: CSR), "log" = log domain

    def check(self) -> None:
        require(self.lambda_sk > 0, "lambda_sk", "must be > 0")
        require(self.marginal in ("uniform", "gaussian"), "marginal", "must be 'uniform' or 'gaussian'")
        require(self.gaussian_std > 0, "gaussian_std", "must be > 0")
        require(self.max_iters >= 1, "max_iters", "must be >= 1")
        require(self.tol > 0, "tol", "must be > 0")
        require(self.dtype in ("float32", "float64"), "dtype", "must be 'float32' or 'float64'")
        require(self.domain in ("auto", "log"), "domain", "must be 'auto' or 'log'")


@dataclass
class SelfLabelConfig:
    """Heatmap -> one box and one class per frame (paper §3.2)."""
    beta: float = 0.5               # ε(h) = β·max + (1−β)·mean
    min_confidence: float = 0.0     # drop frames whose confidence is below this
    peakiness_scale: float = 2.0    # confidence = p(y*)·(1 − exp(−peakiness/peakiness_scale)); selflabels.py
    upsample: bool = True           # upsample the heatmap bilinearly to the image before thresholding (boxes.py)

    def check(self) -> None:
        require(0.0 <= self.beta <= 1.0, "beta", "must be in [0, 1]")
        require(0.0 <= self.min_confidence <= 1.0, "min_confidence", "must be in [0, 1] (confidence is in [0, 1))")
        require(self.peakiness_scale > 0, "peakiness_scale", "must be > 0")


TRAINABLE_BACKBONE_LAYERS = {"resnet50_fpn": 5, "resnet18_fpn": 5, "mobilenet_v3_fpn": 6}   # torchvision's limits


@dataclass
class DetectorConfig:
    """Off-the-shelf torchvision Faster R-CNN over K pseudo-classes + background."""
    backbone: str = "resnet50_fpn"  # or "mobilenet_v3_fpn" for the CPU demo, or "resnet18_fpn" (the stage-1 visual
                                    # trunk's topology: backbone_weights can then come from stage 1, avdet.transfer)
    num_classes: int = 300          # K pseudo-classes (background added by the builder)
    min_size: int = 800
    max_size: int = 1333
    bg_iou: float = 0.5             # proposals with IoU < bg_iou against the pseudo-box are background (τ ≤ 0.7)
    fg_iou: float = 0.5
    backbone_weights: str | None = None
    trainable_backbone_layers: int = 5    # with backbone_weights: stages left trainable (resnet50_fpn 0-5,
                                          # mobilenet_v3_fpn 0-6, as torchvision's builders); without, all train
    # RoI samples per image for the box head (torchvision: 512). With one pseudo-box per frame nearly all are
    # background; 128 makes a CPU step ~3.6x faster at 128 px (measured, see README).
    box_batch_size_per_image: int = 512
    rpn_post_nms_top_n_train: int = 2000
    # Proposals per test image through the box head (torchvision: 1000). At 128 px a resnet FPN's RPN fills all 1000
    # and its evaluation costs ~4x the mobilenet's; 200 halves it (docs/RESULTS.md). The best 100 boxes are kept.
    rpn_post_nms_top_n_test: int = 1000
    # resnet18_fpn only: the ResNet stages whose maps feed the FPN (torchvision's ``returned_layers``). [2, 3, 4]
    # drops layer1's stride-4 map: a training step 1.5x faster at 128 px with 32 RoIs (docs/RESULTS.md, "A resnet18
    # detector in the mobilenet's time").
    returned_layers: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3, 4])
    # resnet18_fpn only: one anchor side (px) per FPN map, the pool map included; None = 32, 64, ... doubling from
    # the finest map (torchvision's 32-512 with all four layers). Three aspect ratios (0.5, 1, 2) everywhere.
    anchor_sizes: list[int] | None = None

    def fpn_anchor_sizes(self) -> list[int]:
        """The anchor side per FPN map (``anchor_sizes``, or its default)."""
        n = len(self.returned_layers) + 1
        return [int(s) for s in self.anchor_sizes] if self.anchor_sizes is not None else [32 << i for i in range(n)]

    def check(self) -> None:
        require(self.backbone in TRAINABLE_BACKBONE_LAYERS, "backbone",
                f"must be one of {', '.join(repr(b) for b in TRAINABLE_BACKBONE_LAYERS)}")
        require(self.num_classes >= 1, "num_classes", "must be >= 1")
        require(0.0 < self.bg_iou <= 0.7, "bg_iou", "must be in (0, 0.7]")
        require(0.0 <= self.fg_iou <= 1.0, "fg_iou", "must be in [0, 1] (an IoU)")
        require(self.fg_iou >= self.bg_iou, "fg_iou", f"must be >= bg_iou ({self.bg_iou}): torchvision's Matcher "
                "needs bg_iou <= fg_iou")
        top = TRAINABLE_BACKBONE_LAYERS[self.backbone]
        require(0 <= self.trainable_backbone_layers <= top, "trainable_backbone_layers",
                f"must be in [0, {top}] for {self.backbone}")
        require(self.min_size >= 32 and self.max_size >= self.min_size, "min_size", "must be >= 32 and <= max_size")
        require(self.box_batch_size_per_image >= 1, "box_batch_size_per_image", "must be >= 1")
        require(self.rpn_post_nms_top_n_train >= 1, "rpn_post_nms_top_n_train", "must be >= 1")
        require(self.rpn_post_nms_top_n_test >= 1, "rpn_post_nms_top_n_test", "must be >= 1")
        layers = [int(x) for x in self.returned_layers]
        require(len(layers) >= 1 and layers == sorted(set(layers)) and set(layers) <= {1, 2, 3, 4},
                "returned_layers", f"must be increasing ResNet stages from 1-4, got {self.returned_layers}")
        custom = layers != [1, 2, 3, 4] or self.anchor_sizes is not None
        require(self.backbone == "resnet18_fpn" or not custom, "returned_layers",
                f"and anchor_sizes are resnet18_fpn settings; {self.backbone} uses its torchvision builder's own")
        if self.anchor_sizes is not None:
            require(len(self.anchor_sizes) == len(layers) + 1 and all(s >= 1 for s in self.anchor_sizes),
                    "anchor_sizes", f"must give one positive side per FPN map: {len(layers) + 1} for "
                    f"returned_layers {layers} (the pool map included), got {self.anchor_sizes}")
