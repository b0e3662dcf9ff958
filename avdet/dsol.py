"""DSOL, stage 1 (seed 002, Hu et al., "Discriminative Sounding Objects Localization via Self-supervised Audiovisual
Matching", NeurIPS 2020): the model and the maths of the baseline localiser ``stage1.method=dsol``. No framework
imports.

- Model (:class:`DSOLModel`, the paper's Table 3 on this project's ResNet-18 trunks): the visual trunk keeps
  layer 4 at stride 1 (ResNet-18-S5); the audio trunk ends in global **max** pooling; two 1×1 convs (visual) and two
  FCs (audio) to ``embed_dim``, L2-normalised; the cosine map goes through a 1×1 conv (the "parameterised sigmoid",
  weight initialised to 5 as in the authors' code) and a sigmoid: the localisation map l ∈ (0, 1)^{h×w}; its global
  max is the match score. Classifiers g^v (on the GAP of the visual map) and g^a (on the audio vector) over K.
- Localisation (eq. 1): BCE of the match score, positives = each frame with its own audio, negatives = the frame
  with the audio of the next pair of the global batch that comes from another clip (one negative per positive).
- Object features (eq. 2): o = GAP(f(v) ∘ m), m = [l > mask_threshold] (0.05); every frame's o is clustered by
  k-means over the whole dataset (eq. 3) between epochs, and the assignments are the pseudo-labels.
- Classification: cross-entropy of g^v and g^a on the pseudo-labels, alternated step by step with the localisation
  loss once a dictionary exists; the classifiers are re-initialised after every k-means round (the cluster order
  changes). The k-means centroids are the object dictionary D (a buffer of the model: it travels in model.pt).
- Stage 2, on multi-source clips: class-aware maps m^k = d^k · f(v) (eq. 4), filtered by the localisation map of
  the mixture, s^k = m^k ∘ l (eq. 5, "Prod"); p_v = softmax_k(a · GAP(s^k)) (eq. 6, with the learned scale a of the
  authors' code, a 1×1 conv on the class maps: without it the only way to soften p_v is to shrink l, and on the demo
  set two stage-2 epochs did exactly that — self-boxes of one map cell, IoU@0.5 0.0); L_c = KL(p_v ‖ p_a) with p_a the
  stage-1 audio classifier's distribution (eq. 7: a target, no gradient); L_2 = L_c + λ·L_1 (eq. 8, L_1 = the
  match loss on the mixtures).

Where we differ from the paper (and its code), and why: the trunks are narrow and random-initialised like every
method here (no weights can be downloaded); the object mask is not dilated by one pixel; alternation is per step
within an epoch (the paper alternates phases and stops classification "when its accuracy saturates"); a frame whose
map has no location above the threshold uses its maximum location; stage 2 takes the last epochs of the same
budget (``dsol.stage2_epochs``), not a separate schedule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .losses import Gather
from .model import AVModel

__all__ = ["DSOLModel", "localisation_map", "match_scores", "negative_partner", "match_loss", "object_mask",
           "object_features", "classification_loss", "fresh_classifiers", "class_maps", "sounding_class_logits",
           "consistency_loss", "stage2_loss"]

AV_WEIGHT_INIT = 5.0      # the authors' code initialises the 1×1 conv of the parameterised sigmoid to 5


def localisation_map(vis_emb: torch.Tensor, aud_emb: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """l = σ(w·cos(f^v_u, f^a) + b): vis_emb (B, C, h, w), aud_emb (B, C), both L2-normalised -> (B, h, w)."""
    return torch.sigmoid(weight * torch.einsum("bchw,bc->bhw", vis_emb, aud_emb) + bias)


def _match_logits(vis_emb, aud_emb, weight, bias) -> torch.Tensor:
    """(B,) logit of the match score max_u l_u: σ is increasing, so GMP(σ(z)) = σ(max_u z); the BCE is computed on
    the logit, which is stable where σ saturates."""
    z = weight * torch.einsum("bchw,bc->bhw", vis_emb, aud_emb).flatten(1) + bias
    return z.amax(1)


def match_scores(vis_emb: torch.Tensor, aud_emb: torch.Tensor, weight: torch.Tensor,
                              bias: torch.Tensor) -> torch.Tensor:
    """(B,) match scores GMP(l(v_i, a_i)) in (0, 1)."""
    return torch.sigmoid(_match_logits(vis_emb, aud_emb, weight, bias))


def negative_partner(clip_all: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """For each global row position in ``rows``, the next position of the global batch (cyclically) whose clip
    differs; −1 when every pair is of that clip."""
    n = clip_all.shape[0]
    out = torch.full_like(rows, -1)
    for k, i in enumerate(rows.tolist()):
        for step in range(1, n):
            j = (i + step) % n
            if clip_all[j] != clip_all[i]:
                out[k] = j
                break
    return out


def match_loss(vis_emb: torch.Tensor, aud_emb: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               clip: torch.Tensor, gather: Gather | None = None) -> torch.Tensor:
    """Eq. 1 for this process's rows: mean BCE over its positives (v_i, a_i) -> 1 and one negative each,
    (v_i, a_j) -> 0 with j the next pair of the global batch from another clip (:func:`negative_partner`; none when
    the whole batch is one clip). ``gather`` all-gathers along dim 0 with gradient (``None``: one process)."""
    aud_all, offset = (aud_emb, 0) if gather is None else gather(aud_emb)
    with torch.no_grad():
        clip_all = clip if gather is None else gather(clip)[0]
        partner = negative_partner(clip_all.cpu(), torch.arange(offset, offset + clip.shape[0])).to(clip.device)
    pos = _match_logits(vis_emb, aud_emb, weight, bias)
    has = partner >= 0
    neg = _match_logits(vis_emb[has], aud_all[partner[has]], weight, bias)
    logits = torch.cat([pos, neg])
    target = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
    return F.binary_cross_entropy_with_logits(logits, target)


def object_mask(loc_map: torch.Tensor, threshold: float) -> torch.Tensor:
    """m = [l > threshold] (B, h, w) bool; a frame without such a location keeps its maximum location."""
    mask = loc_map > threshold
    flat = mask.flatten(1)
    empty = ~flat.any(1)
    if bool(empty.any()):
        rows = torch.arange(flat.shape[0], device=flat.device)[empty]
        flat = flat.clone()
        flat[rows, loc_map.flatten(1)[empty].argmax(1)] = True
    return flat.view_as(mask)


def object_features(feature_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 2: o = GAP(f(v) ∘ m): feature_map (B, D, h, w), mask (B, h, w) -> (B, D) (the mean over all h·w
    locations of the masked map, as a GAP of the Hadamard product is)."""
    return (feature_map * mask.unsqueeze(1).to(feature_map.dtype)).mean(dim=(2, 3))


def classification_loss(vis_logits: torch.Tensor, aud_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the visual and the audio classifier on the pseudo-labels, summed."""
    return F.cross_entropy(vis_logits, labels) + F.cross_entropy(aud_logits, labels)


def class_maps(feature_map: torch.Tensor, dictionary: torch.Tensor) -> torch.Tensor:
    """Eq. 4: m^k_u = <d^k, f(v)_u>: feature_map (B, D, h, w), dictionary (K, D) -> (B, K, h, w)."""
    return torch.einsum("kd,bdhw->bkhw", dictionary.to(feature_map.dtype), feature_map)


def sounding_class_logits(maps: torch.Tensor, loc_map: torch.Tensor) -> torch.Tensor:
    """Eq. 5–6 before the softmax: GAP(s^k) with s^k = m^k ∘ l: maps (B, K, h, w), loc_map (B, h, w) -> (B, K)."""
    return (maps * loc_map.unsqueeze(1)).mean(dim=(2, 3))


def consistency_loss(vis_class_logits: torch.Tensor, aud_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 7, batch mean: KL(p_v ‖ p_a) = Σ_k p_v,k (log p_v,k − log p_a,k), p_v = softmax(vis_class_logits), p_a =
    softmax(aud_logits) taken as the target (no gradient into the audio network)."""
    log_pv = F.log_softmax(vis_class_logits, dim=1)
    log_pa = F.log_softmax(aud_logits.detach(), dim=1)
    return (log_pv.exp() * (log_pv - log_pa)).sum(1).mean()


def stage2_loss(out: dict, clip: torch.Tensor, lam: float, gather: Gather | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 8 on a batch of multi-source pairs: (L_2 = L_c + λ·L_1, L_c, L_1) from a :class:`DSOLModel` output."""
    l_c = consistency_loss(out["class_logits"], out["aud_logits"])
    l_1 = match_loss(out["vis_emb"], out["aud_emb"], out["av_weight"], out["av_bias"], clip, gather)
    return l_c + lam * l_1, l_c, l_1


@torch.no_grad()
def fresh_classifiers(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """New values of g^v and g^a (nn.Linear's default init, U(±1/√fan_in)) drawn from ``seed`` — the same on every
    process: {parameter name: tensor} (the distributed trainer writes them where its optimizer keeps the weights)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in ("vis_cls", "aud_cls"):
        layer = getattr(model, name)
        bound = 1.0 / layer.in_features ** 0.5
        for p in ("weight", "bias"):
            out[f"{name}.{p}"] = torch.empty(getattr(layer, p).shape).uniform_(-bound, bound, generator=g)
    return out


class DSOLModel(AVModel):
    """:class:`avdet.model.AVModel`'s trunks and classifiers with DSOL's localisation head. forward(frames, audio)
    -> AVModel's dict (``vis_emb``, ``aud_emb``, ``vis_logits``, ``aud_logits``, ``vis_pool``, ``aud_pool``,
    ``rho`` — unused) plus ``av_weight``, ``av_bias`` (the parameterised sigmoid), ``loc_map`` (B, h, w) = l(v, a)
    of each frame with its own audio, ``obj_feat`` (B, 8w) = GAP(f(v) ∘ [l > mask_threshold]) and ``class_logits``
    (B, K) = a · GAP(m^k ∘ l) from the object dictionary (the buffer ``dictionary`` (K, 8w), zeros until the first
    k-means round writes it; ``class_scale`` a, learned, initially 1)."""

    def __init__(self, cfg: ModelConfig, mask_threshold: float = 0.05):
        super().__init__(cfg)
        d, cv, ca = cfg.embed_dim, self.visual.out_channels, self.audio.out_channels
        self.vis_head = nn.Sequential(nn.Conv2d(cv, d, 1), nn.ReLU(inplace=True), nn.Conv2d(d, d, 1))
        self.aud_head = nn.Sequential(nn.Linear(ca, d), nn.ReLU(inplace=True), nn.Linear(d, d))
        self.av_conv = nn.Conv2d(1, 1, 1)
        nn.init.constant_(self.av_conv.weight, AV_WEIGHT_INIT)
        nn.init.zeros_(self.av_conv.bias)
        self.mask_threshold = mask_threshold
        self.register_buffer("dictionary", torch.zeros(cfg.num_clusters, cv))
        self.class_scale = nn.Parameter(torch.ones(1))          # 1-D: DeepSpeed flattens no 0-d parameter

    def forward(self, frames: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        qv = self.visual(frames)                                   # f(v) (B, 8w, h, w)
        qa = self.audio(audio).amax(dim=(2, 3))                    # g(a): global max pooling (B, 8w)
        pooled = qv.mean(dim=(2, 3))
        vis_emb = F.normalize(self.vis_head(qv), dim=1)
        aud_emb = F.normalize(self.aud_head(qa), dim=1)
        weight, bias = self.av_conv.weight.view(()), self.av_conv.bias.view(())
        loc = localisation_map(vis_emb, aud_emb, weight, bias)
        return {"vis_emb": vis_emb, "aud_emb": aud_emb, "vis_logits": self.vis_cls(pooled),
                "aud_logits": self.aud_cls(qa), "vis_pool": pooled, "aud_pool": qa, "rho": self.rho,
                "av_weight": weight, "av_bias": bias, "loc_map": loc,
                "obj_feat": object_features(qv, object_mask(loc.detach(), self.mask_threshold)),
                "class_logits": self.class_scale * sounding_class_logits(class_maps(qv, self.dictionary), loc)}
