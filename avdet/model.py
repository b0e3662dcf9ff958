"""The stage-1 network (paper §3.1): backbones q^v, q^a; localisation heads f^v, f^a; classification heads g^v, g^a.

Both backbones are ResNet-18 topology (torchvision BasicBlock, [2, 2, 2, 2] blocks) with a configurable base width
w (stages w, 2w, 4w, 8w; w = 64 is torchvision's resnet18 and its state_dict keys load directly).

Visual stride (``ModelConfig.visual_stride``): layer4 keeps stride 1 (no dilation: BasicBlock does not support it),
so the map has stride 16 — a 224 px frame gives a 14×14 grid, 128 px 8×8, 112 px 7×7, 64 px 4×4. ``visual_stride=8``
keeps layer3 at stride 1 too: twice the grid (16×16 at 128 px) for a finer heatmap and tighter self-boxes, at about
3× the visual trunk's multiply-adds (layers 3 and 4 run on 4× the locations; the demo's stage 1 took about twice as
long, see README). The weights keep torchvision's shapes
either way (a stride is not a weight), so ImageNet weights load into both.

Visual padding (``ModelConfig.visual_padding``): with zero padding every border location of the map carries a
signature of where it is, and its receptive field covers the whole frame, so the max over locations in S(v, a) can
settle on a fixed corner as a global descriptor — the heatmap stops localising while the contrastive loss still
falls (measured on the demo set, see README). "reflect" padding removes the positional signature (the trunk becomes
close to translation-equivariant), so the location that wins the max must be chosen by content.
The audio backbone takes the 1-channel log-mel (B, 1, n_mels, T), keeps all strides, and is average-pooled to a
vector.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

from .config import ModelConfig

log = logging.getLogger(__name__)


class ResNet18(nn.Module):
    """ResNet-18 trunk (no fc) with base width ``width``; returns the layer4 map (B, 8·width, H/s, W/s)."""

    def __init__(self, width: int = 64, in_channels: int = 3, last_stride: int = 2, padding_mode: str = "zeros",
                 layer3_stride: int = 2):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, 1)
        self.layer2 = self._make_layer(2 * width, 2)
        self.layer3 = self._make_layer(4 * width, layer3_stride)
        self.layer4 = self._make_layer(8 * width, last_stride)
        self.out_channels = 8 * width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if any(m.padding):
                    m.padding_mode = padding_mode          # same weights/keys; only how borders are filled

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        blocks = [BasicBlock(self.inplanes, planes, stride, down), BasicBlock(planes, planes)]
        self.inplanes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_backbone_weights(module: nn.Module, path: str | Path, name: str) -> None:
    """Load a local state_dict (torch.load, weights_only) into ``module`` non-strictly; never downloads.

    A 3-channel conv1 is summed over its input channels for a 1-channel backbone (ImageNet weights -> audio);
    other shape mismatches are skipped. Missing, unexpected and skipped keys are logged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name} weights: {path} does not exist (weights are never downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    own = module.state_dict()
    skipped = []
    for key in list(state):
        if key in own and state[key].shape != own[key].shape:
            w = state[key]
            if key == "conv1.weight" and w.dim() == 4 and own[key].shape[1] == 1:
                state[key] = w.sum(dim=1, keepdim=True)
            else:
                skipped.append(f"{key} {tuple(w.shape)} vs {tuple(own[key].shape)}")
                del state[key]
    res = module.load_state_dict(state, strict=False)
    log.info("%s weights from %s: %d tensors loaded", name, path, len(state) - len(res.unexpected_keys))
    if res.missing_keys:
        log.warning("%s weights %s: missing keys %s", name, path, res.missing_keys)
    if res.unexpected_keys:
        log.warning("%s weights %s: unexpected keys ignored %s", name, path, res.unexpected_keys)
    if skipped:
        log.warning("%s weights %s: shape mismatch, skipped %s", name, path, skipped)


def heatmap(vis_emb: torch.Tensor, aud_emb: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """h_u(v, a) = <f^v_u(v), f^a(a)> / ρ for matching pairs: vis_emb (B, C, h, w), aud_emb (B, C) -> (B, h, w)."""
    return torch.einsum("bchw,bc->bhw", vis_emb, aud_emb) / rho          # paper §3.1: h_u = <f^v_u, f^a>/ρ


def score_matrix(vis_emb: torch.Tensor, aud_emb: torch.Tensor, rho: torch.Tensor,
                 chunk: int = 256) -> torch.Tensor:
    """S(v, a) = max_u h_u(v, a) for every cross pair: vis_emb (Bv, C, h, w), aud_emb (Ba, C) -> (Bv, Ba).

    Computed in blocks of ``chunk`` frames so the (block, Ba, h·w) similarity tensor stays bounded."""
    bv, c = vis_emb.shape[:2]
    flat = vis_emb.reshape(bv, c, -1)
    blocks = [torch.einsum("vcu,ac->vau", flat[s:s + chunk], aud_emb).amax(dim=2) for s in range(0, bv, chunk)]
    return torch.cat(blocks, dim=0) / rho                                # S(v, a) = max_u h_u(v, a)


class AVModel(nn.Module):
    """Audio-visual model. forward(frames (B,3,H,W), audio (B,1,n_mels,T)) -> dict with
    vis_emb (B,C,h,w) and aud_emb (B,C) (L2-normalised), vis_logits and aud_logits (B,K), the pooled trunk features
    the classifiers see, vis_pool and aud_pool (B,8w), and rho (scalar)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = ResNet18(cfg.visual_width, in_channels=3, last_stride=1,       # q^v, stride 16 (or 8)
                               padding_mode=cfg.visual_padding, layer3_stride=cfg.visual_stride // 8)
        self.audio = ResNet18(cfg.audio_width, in_channels=1, last_stride=2)         # q^a
        self.vis_head = nn.Conv2d(self.visual.out_channels, cfg.embed_dim, 1)        # \hat f^v
        self.aud_head = nn.Linear(self.audio.out_channels, cfg.embed_dim)            # \hat f^a
        self.vis_cls = nn.Linear(self.visual.out_channels, cfg.num_clusters)         # \hat g^v
        self.aud_cls = nn.Linear(self.audio.out_channels, cfg.num_clusters)          # \hat g^a
        # learnable temperature ρ, stored as log ρ; shape (1,) not (): DeepSpeed's broadcast cannot view 0-d tensors
        self.log_rho = nn.Parameter(torch.tensor([float(cfg.rho_init)]).log())
        if cfg.visual_weights:
            load_backbone_weights(self.visual, cfg.visual_weights, "visual")
        if cfg.audio_weights:
            load_backbone_weights(self.audio, cfg.audio_weights, "audio")

    @property
    def rho(self) -> torch.Tensor:
        return self.log_rho.exp().squeeze(0)

    def forward(self, frames: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        qv = self.visual(frames)                                   # (B, 8w, h, w)
        qa = self.audio(audio).mean(dim=(2, 3))                    # (B, 8w)
        pooled = qv.mean(dim=(2, 3))                               # (B, 8w)
        return {
            "vis_emb": F.normalize(self.vis_head(qv), dim=1),      # f^v_u(v), unit norm per location
            "aud_emb": F.normalize(self.aud_head(qa), dim=1),      # f^a(a)
            "vis_logits": self.vis_cls(pooled),                    # g^v(v)
            "aud_logits": self.aud_cls(qa),                        # g^a(a)
            "vis_pool": pooled,                                    # what g^v sees (k-means warm start)
            "aud_pool": qa,                                        # what g^a sees
            "rho": self.rho,
        }

    def heatmap(self, vis_emb: torch.Tensor, aud_emb: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w), (B, C) -> (B, h, w) heatmap of each frame with its own audio."""
        return heatmap(vis_emb, aud_emb, self.rho)

    def scores(self, vis_emb: torch.Tensor, aud_emb: torch.Tensor) -> torch.Tensor:
        """(Bv, C, h, w), (Ba, C) -> (Bv, Ba) cross-pair scores S(v, a)."""
        return score_matrix(vis_emb, aud_emb, self.rho)


def combined_log_p(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, K) log-probabilities Sinkhorn acts on: the mean of the audio and visual log-softmaxes (SeLaVi's product of
    the two softmaxes, in the log domain; λ_sk is applied inside Sinkhorn)."""
    return (F.log_softmax(out["vis_logits"].float(), 1) + F.log_softmax(out["aud_logits"].float(), 1)) / 2


def pooled_features(out: dict[str, torch.Tensor], which: str) -> torch.Tensor:
    """What k-means clusters: the L2-normalised pooled trunk features the classifiers see — "audio", "visual", or
    "both" concatenated (scaled to unit norm) — or DSOL's masked object features ("objects")."""
    if which == "objects":                                   # DSOL's masked object features (avdet.dsol)
        return F.normalize(out["obj_feat"].float(), dim=1)
    vis, aud = F.normalize(out["vis_pool"].float(), dim=1), F.normalize(out["aud_pool"].float(), dim=1)
    if which == "both":
        return torch.cat([vis, aud], 1) / 2 ** 0.5
    return {"audio": aud, "visual": vis}[which]


def pooled_width(model: "AVModel", which: str) -> int:
    """The width of :func:`pooled_features` ``which`` for ``model``."""
    return {"audio": model.audio.out_channels, "visual": model.visual.out_channels,
            "objects": model.visual.out_channels}.get(
        which, model.visual.out_channels + model.audio.out_channels)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The stage-1 model's plain state_dict on CPU: what ``model.pt`` holds (``torch.load(weights_only=True)``)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_model(cfg: ModelConfig, path: str | Path, build=None) -> "AVModel":
    """An :class:`AVModel` of ``cfg`` (or ``build(cfg)``: a method's own model) with the weights of ``path`` (a
    :func:`model_state` file), in eval mode."""
    model = AVModel(cfg) if build is None else build(cfg)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
