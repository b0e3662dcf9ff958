"""What a stage-1 model is, per method, for whoever reads the artifact (pseudo-annotation, evaluation): the network to
rebuild from its config, the map the self-boxes come from, and whether it has pseudo-classes. Training (the loss and
the between-epoch round) is ``distributed.stage1.methods``; this is the part the stages after it share, so they meet
stage 1 through its artifact only. No framework imports.

=============  ====================================================  ==============================================
method         map (``maps(model, out)``)                            pseudo-classes
=============  ====================================================  ==============================================
``afouras``    h_u(v, a) = <f^v_u, f^a>/ρ (``AVModel.heatmap``)       K: y* from its classifiers
``iterative``  the min-max response map R (``avdet.iterative``)      none: one category, "object"
``dsol``       its localisation map l (``avdet.dsol``)               K: y* from its classifiers
``proposals``  its location map m (the attention, ``avdet.proposal_  none: one category, "object"
               ssl``); the self-box is the best proposal, not the
               map's box (``boxes``), when the proposals are streamed
=============  ====================================================  ==============================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .config import DSOLConfig, ModelConfig, ProposalConfig
from .dsol import DSOLModel
from .iterative import response_map
from .model import AVModel
from .proposal_ssl import ProposalModel, best_proposal

__all__ = ["Localiser", "LOCALISERS"]


@dataclass(frozen=True)
class Localiser:
    """``build(model config, dsol config, proposal config)`` -> the method's network (untrained); ``maps(model,
    out)`` -> (B, h, w) the heatmaps of the self-boxes from the model's output on matching pairs; ``classes``:
    whether its self-labels take the classifiers' y* (else class-agnostic); ``boxes(out)`` -> (B, 4) xyxy frame
    pixels: the method's own self-box, which replaces the map's (None: the box comes from the map); ``proposals``:
    whether the model reads the proposal set (the streams must carry it)."""
    build: Callable[[ModelConfig, DSOLConfig, ProposalConfig], nn.Module]
    maps: Callable[[nn.Module, dict], torch.Tensor]
    classes: bool
    boxes: Callable[[dict], torch.Tensor] | None = None
    proposals: bool = False

    def num_classes(self, num_clusters: int) -> int:
        """How many pseudo-classes its self-labels have: K, or 1 for a class-agnostic method."""
        return num_clusters if self.classes else 1


LOCALISERS: dict[str, Localiser] = {
    "afouras": Localiser(lambda model, dsol, prop: AVModel(model),
                         lambda net, out: net.heatmap(out["vis_emb"], out["aud_emb"]), True),
    "iterative": Localiser(lambda model, dsol, prop: AVModel(model),
                           lambda net, out: response_map(out["vis_emb"], out["aud_emb"]), False),
    "dsol": Localiser(lambda model, dsol, prop: DSOLModel(model, dsol.mask_threshold),
                      lambda net, out: out["loc_map"], True),
    "proposals": Localiser(lambda model, dsol, prop: ProposalModel(model, prop.top_k, prop.select),
                           lambda net, out: out["loc_map"], False,
                           lambda out: best_proposal(out["boxes"], out["assoc"])[0], True),
}
