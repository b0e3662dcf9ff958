"""The stage-1 visual trunk as a torchvision ``resnet18`` state_dict: the detector's backbone can start from what
stage 1 learned on the same videos, still without labels (``detector.init_from_stage1``).

The trunk (:class:`avdet.model.ResNet18`) has resnet18's topology and key names at base width w. At w = 64 (the
default) its tensors are torchvision's, copied as they are. A narrower trunk (the CPU demo's w = 16) is embedded in
the w = 64 network so that the first w·2^s channels of every stage compute exactly what the trunk computed:

- each weight of the trunk, (out, in, …), goes to the [:out, :in] corner of torchvision's tensor;
- the weights from the added input channels into the trunk's output channels are zero, so nothing the added channels
  carry reaches the trunk's channels at the start;
- the added output channels keep torchvision's initialisation (seeded), so they learn from the start (all-zero
  channels would get no gradient), and their batch norms start at torchvision's defaults.

The stride of layer4 (1 in stage 1, for the heatmap; 2 in torchvision) and the padding mode are not weights: the
copy is exact, the network it lands in is torchvision's. A trunk wider than 64 does not fit resnet18 and is refused.
"""
from __future__ import annotations

import torch
import torchvision

__all__ = ["TORCHVISION_WIDTH", "trunk_width", "export_visual_trunk"]

TORCHVISION_WIDTH = 64


def trunk_width(state: dict[str, torch.Tensor], prefix: str = "visual.") -> int:
    """The base width w of the trunk under ``prefix`` in a stage-1 state_dict (conv1's output channels)."""
    key = prefix + "conv1.weight"
    if key not in state:
        raise ValueError(f"no {key!r} in the stage-1 weights: not an avdet stage-1 model.pt with a ResNet-18 visual "
                         f"trunk (keys start {sorted(state)[:3]})")
    return int(state[key].shape[0])


def _embed(dst: torch.Tensor, src: torch.Tensor, key: str) -> torch.Tensor:
    if src.dim() != dst.dim() or any(s > d for s, d in zip(src.shape, dst.shape)) or src.shape[2:] != dst.shape[2:]:
        raise ValueError(f"stage-1 trunk tensor {key} {tuple(src.shape)} does not fit torchvision's "
                         f"{tuple(dst.shape)}")
    out = dst.clone()
    if src.dim() == 0:                               # num_batches_tracked
        return src.clone()
    corner = tuple(slice(0, n) for n in src.shape)
    out[corner] = src
    if src.dim() >= 2:                               # (out, in, …): the added inputs do not feed the trunk's outputs
        out[:src.shape[0], src.shape[1]:] = 0
    return out


def export_visual_trunk(state: dict[str, torch.Tensor], prefix: str = "visual.", seed: int = 0
                        ) -> dict[str, torch.Tensor]:
    """A torchvision ``resnet18`` state_dict (no ``fc``) holding the stage-1 visual trunk of ``state`` (a
    ``model.pt`` state_dict), embedded as the module docstring says; ``seed`` initialises the added channels."""
    width = trunk_width(state, prefix)
    if width > TORCHVISION_WIDTH:
        raise ValueError(f"the stage-1 visual trunk is {width} wide; resnet18 is {TORCHVISION_WIDTH}: it does not fit "
                         "(use a trunk of width <= 64 or train the detector from scratch)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        template = torchvision.models.resnet18(weights=None).state_dict()
    trunk = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    unknown = sorted(set(trunk) - set(template))
    if unknown:
        raise ValueError(f"stage-1 trunk keys not in torchvision's resnet18: {unknown[:5]}")
    missing = sorted(k for k in template if k not in trunk and not k.startswith("fc."))
    if missing:
        raise ValueError(f"the stage-1 trunk lacks resnet18 tensors {missing[:5]}")
    return {k: _embed(template[k], trunk[k], prefix + k) for k in template if not k.startswith("fc.")}
