"""The proposal-based paradigm (seed 001, Xuan et al., "A Proposal-based Paradigm for Self-supervised Sound Source
Localization in Videos", CVPR 2022): the model and the maths of the baseline localiser ``stage1.method=proposals``.
No framework imports.

Seed 001 scores class-agnostic region proposals against the sound instead of thresholding a map, as multiple-instance
learning over a bag of proposals that may hold no sounding object (an off-screen sound):

- **Frame stream, ProSelectNet.** Audio-guided attention over the trunk's locations, w = softmax_u(<U_v v_u, U_s s>)
  (:func:`attention`); the attended frame feature v^att = Σ_u w_u v_u; the location map m = w on the grid, upsampled
  to the frame (:func:`location_map`); the global response map g = (m − min m) / max m — **max, not max − min, as
  the paper writes it** (:func:`global_response_map`); a proposal's confidence is the sum of g over its pixels
  (:func:`proposal_confidence`, a summed-area table); the K most confident proposals form the bag, with an
  existence mask e for frames with fewer than K (:func:`select_top_k`).
- **Proposal stream, localisation network.** Each selected proposal's feature from the shared trunk by spatial
  pyramid pooling over the box (RoI-align at 1×1 and 2×2, concatenated: :func:`spp_features`); FC layers map audio,
  frame and proposals to the common space (f^s, f^att, f^box_k, unit norm); d_k = ReLU(cos(f^s, f^box_k)) · e_k
  (eq. 3, :func:`association`); α = d / Σ d (:func:`proposal_weights`); f^v = Σ_k α_k f^box_k.
- **Loss.** The distance-ratio loss of Senocak et al. on (f^v, same-clip audio, another clip's audio)
  (:func:`distance_ratio_loss`) + λ ‖f^v − f^att‖² (λ = 0.5, :func:`consistency_loss`).
- **Inference.** One source: the proposal of the largest d (:func:`best_proposal`); two sources: the two most
  confident non-overlapping proposals (:func:`two_sources`); map only: m; on/off screen: d_on = max_k d_k > 0.2,
  or the map criterion m_on (‖f^att − f^s‖ below a threshold: the mean of the medians of the positive and the
  negative pairs' distances, :func:`distance_threshold`), on-screen if either holds (:func:`on_screen`).

Where we differ from the paper, and why: its trunks are ImageNet VGG16 (dilated convs for the penultimate pool)
and AudioSet VGGish; ours are this project's narrow ResNet-18s from random initialisation like every method here
(no weights can be downloaded), the visual one at stride 16 (or 8) instead of dilation. φ (softmax) is applied once,
over the locations of the audio-visual dot product (Senocak's attention, which the seed builds on); the paper's
φ(U_v v)^T φ(U_s s) leaves where each softmax runs unsaid. The paper does not say how α is normalised (ours: L1,
uniform over the existing proposals when every d_k is 0), nor whether the common space is normalised (ours: unit
norm, as in Senocak's loss). The LSTMs over frame sequences are not built: the stream gives single frames.

Not in the paper: an optional warm-up (``stage1.proposals.warmup_epochs``, default 0) that trains the frame stream
alone first (:func:`frame_loss`; ``warmup_loss``: "mil", multiple-instance contrast on the attention's own logits,
or "triplet", Senocak's distance ratio on f^att). From random trunks the attention that picks the bag is untrained
at first, and on the demo set it ended up on the background (docs/RESULTS.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .losses import Gather, nce_loss
from .model import ResNet18

__all__ = ["ProposalModel", "attention", "location_map", "global_response_map", "proposal_confidence",
           "select_top_k", "spp_features", "association", "proposal_weights", "distance_ratio_loss",
           "consistency_loss", "proposal_loss", "frame_loss", "best_proposal", "two_sources", "distance_threshold",
           "on_screen", "box_iou_matrix"]

ON_SCREEN_D = 0.2           # seed 001: the sound is on screen when d_on = max_k d_k > 0.2
SPP_LEVELS = (1, 2)         # RoI pooling grids whose features are concatenated (spatial pyramid pooling)


# ---------------------------------------------------------------------------------------------------------------
# frame stream: attention, location map, GRM, proposal selection


def attention(vis_proj: torch.Tensor, aud_proj: torch.Tensor) -> torch.Tensor:
    """w = softmax over the locations u of <U_v v_u, U_s s>: (B, D, h, w), (B, D) -> (B, h, w), each frame's w
    summing to 1."""
    b, _, h, w = vis_proj.shape
    logits = torch.einsum("bdu,bd->bu", vis_proj.flatten(2), aud_proj)
    return logits.softmax(dim=1).view(b, h, w)


def location_map(weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """m: the attention ``weights`` (B, h, w) upsampled (bilinear) to ``size`` = (H, W) -> (B, H, W)."""
    return F.interpolate(weights[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def global_response_map(m: torch.Tensor) -> torch.Tensor:
    """g = (m − min m) / max m per frame (the paper's normalisation as written: the divisor is max m, not
    max m − min m, so g's maximum is 1 − min m / max m). (B, H, W) -> (B, H, W)."""
    lo = m.flatten(1).amin(1).view(-1, 1, 1)
    hi = m.flatten(1).amax(1).view(-1, 1, 1)
    return (m - lo) / hi.clamp_min(torch.finfo(m.dtype).tiny)


def _pixel_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """xyxy boxes in pixels -> integer [x0, x1) × [y0, y1) pixel ranges, clipped to the frame, at least 1 pixel."""
    x0 = boxes[..., 0].floor().clamp(0, width - 1)
    y0 = boxes[..., 1].floor().clamp(0, height - 1)
    x1 = torch.maximum(boxes[..., 2].ceil().clamp(0, width), x0 + 1)
    y1 = torch.maximum(boxes[..., 3].ceil().clamp(0, height), y0 + 1)
    return torch.stack([x0, y0, x1, y1], -1).long()


def proposal_confidence(grm: torch.Tensor, boxes: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The sum of the GRM over each proposal's pixels: grm (B, H, W), boxes (B, P, 4) xyxy pixels (a pixel is in
    the box when its cell [x, x+1) × [y, y+1) overlaps it: the box's floor/ceil), count (B,) the real proposals per
    frame (the rest is padding) -> (B, P), −inf on padding."""
    b, h, w = grm.shape
    sat = F.pad(grm.double().cumsum(1).cumsum(2), (1, 0, 1, 0))           # (B, H+1, W+1), sat[y, x] = Σ g[:y, :x]
    px = _pixel_boxes(boxes, h, w)
    flat = sat.flatten(1)

    def at(y, x):
        return flat.gather(1, y * (w + 1) + x)
    total = at(px[..., 3], px[..., 2]) - at(px[..., 1], px[..., 2]) - at(px[..., 3], px[..., 0]) \
        + at(px[..., 1], px[..., 0])
    real = torch.arange(boxes.shape[1], device=boxes.device)[None] < count[:, None]
    return total.to(grm.dtype).masked_fill(~real, float("-inf"))


def select_top_k(confidence: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bag: indices (B, k) of the k most confident proposals, best first, and the existence mask e (B, k) —
    False where a frame has fewer than k real proposals (the index then points at padding, any one)."""
    p = confidence.shape[1]
    if p < k:
        confidence = F.pad(confidence, (0, k - p), value=float("-inf"))
    values, index = confidence.topk(k, dim=1)
    return index.clamp_max(max(p - 1, 0)), torch.isfinite(values)


# ---------------------------------------------------------------------------------------------------------------
# proposal stream: SPP features, association, weighted proposal feature


def spp_features(feature_map: torch.Tensor, boxes: torch.Tensor, stride: int,
                 levels: tuple[int, ...] = SPP_LEVELS) -> torch.Tensor:
    """Spatial pyramid pooling of the trunk's ``feature_map`` (B, C, h, w) over ``boxes`` (B, K, 4) xyxy frame
    pixels (RoI-align at each level's grid, averaged within a bin, concatenated): -> (B, K, C·Σ level²)."""
    from torchvision.ops import roi_align
    b, k = boxes.shape[:2]
    rois = torch.cat([torch.arange(b, device=boxes.device, dtype=boxes.dtype).repeat_interleave(k)[:, None],
                      boxes.reshape(-1, 4)], 1)
    parts = [roi_align(feature_map, rois.to(feature_map.dtype), output_size=level, spatial_scale=1.0 / stride,
                       sampling_ratio=2, aligned=True).flatten(1) for level in levels]
    return torch.cat(parts, 1).view(b, k, -1)


def association(aud_feat: torch.Tensor, box_feat: torch.Tensor, exists: torch.Tensor) -> torch.Tensor:
    """Eq. 3: d_k = ReLU(cos(f^s, f^box_k)) · e_k: (B, D), (B, K, D), (B, K) bool -> (B, K) in [0, 1]."""
    cos = F.cosine_similarity(box_feat, aud_feat[:, None], dim=2)
    return F.relu(cos) * exists.to(cos.dtype)


def proposal_weights(d: torch.Tensor, exists: torch.Tensor) -> torch.Tensor:
    """α = d / Σ_k d per frame; uniform over the existing proposals when every d_k is 0 (B, K) -> (B, K)."""
    total = d.sum(1, keepdim=True)
    uniform = exists.to(d.dtype) / exists.sum(1, keepdim=True).clamp_min(1)
    return torch.where(total > 0, d / total.clamp_min(torch.finfo(d.dtype).tiny), uniform)


# ---------------------------------------------------------------------------------------------------------------
# losses


def distance_ratio_loss(query: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Senocak et al.'s distance-ratio loss (after Hoffer & Ailon), mean over rows: with d± = ‖q − p±‖₂ and
    (s+, s−) = softmax(d+, d−), L = ‖(s+, s− − 1)‖² (= 2 s+²): small when the positive is much nearer."""
    d = torch.stack([(query - positive).norm(dim=1), (query - negative).norm(dim=1)], 1)
    s = d.softmax(dim=1)
    return (s[:, 0] ** 2 + (s[:, 1] - 1) ** 2).mean()


def consistency_loss(vis_feat: torch.Tensor, att_feat: torch.Tensor) -> torch.Tensor:
    """L_edu = ‖f^v − f^att‖²₂, mean over rows."""
    return ((vis_feat - att_feat) ** 2).sum(1).mean()


def _negatives(aud_feat: torch.Tensor, clip: torch.Tensor, gather: Gather | None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each local row, the audio of the next pair of the global batch from another clip, and which rows have
    one (the whole global batch one clip: none)."""
    from .dsol import negative_partner
    aud_all, offset = (aud_feat, 0) if gather is None else gather(aud_feat)
    with torch.no_grad():
        clip_all = clip if gather is None else gather(clip)[0]
        partner = negative_partner(clip_all.cpu(), torch.arange(offset, offset + clip.shape[0])).to(clip.device)
    has = partner >= 0
    return aud_all[partner.clamp_min(0)], has


def _triplet(query: torch.Tensor, aud: torch.Tensor, clip: torch.Tensor, gather: Gather | None) -> torch.Tensor:
    """L_tri(query, own audio, another clip's audio) over the rows that have a negative (0 when none has)."""
    negative, has = _negatives(aud, clip, gather)
    return distance_ratio_loss(query[has], aud[has], negative[has]) if bool(has.any()) else query.sum() * 0


def proposal_loss(out: dict[str, torch.Tensor], clip: torch.Tensor, lam: float = 0.5,
                  gather: Gather | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_tri(f^v, f^s+, f^s−) + λ·L_edu over this process's rows (the negative audio is another clip's, from the
    whole global batch when ``gather`` all-gathers with gradient). Returns (loss, detached parts)."""
    vis, aud, att = out["vis_feat"], out["aud_feat"], out["att_feat"]
    tri = _triplet(vis, aud, clip, gather)
    edu = consistency_loss(vis, att)
    return tri + lam * edu, {"triplet": tri.detach(), "consistency": edu.detach()}


def frame_loss(out: dict[str, torch.Tensor], clip: torch.Tensor, gather: Gather | None = None,
               kind: str = "mil") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The frame stream alone — not in seed 001's loss: this project's optional warm-up
    (``stage1.proposals.warmup_epochs``), so that the GRM choosing the bag comes from an attention trained to find
    the sound before the proposal stream trains on it (seed 001 starts from ImageNet/AudioSet weights instead).

    ``kind`` "mil": the attention's own logits <U_v v_u, U_s s>, max-pooled over the locations u, as the scores of
    a symmetric InfoNCE over the (global) batch, same-clip pairs left out of the denominators
    (:func:`avdet.losses.nce_loss` with ρ = 1: multiple-instance contrast, which makes the logits peak where the
    sound is); "triplet": L_tri(f^att, f^s+, f^s−), Senocak et al.'s attention model (seed 001's ref. [41]).
    The proposal stream's outputs get a zero gradient (the engine reduces the same buckets every step). Parts:
    ``frame`` (this loss), and the paper's ``triplet`` and ``consistency`` at 0 (not trained yet)."""
    if kind == "mil":
        value = nce_loss(out["att_vis"], out["att_aud"], torch.ones((), device=out["att_aud"].device), gather, clip)
    elif kind == "triplet":
        value = _triplet(out["att_feat"], out["aud_feat"], clip, gather)
    else:
        raise ValueError(f"frame_loss kind={kind!r} must be 'mil' or 'triplet'")
    unused = 0.0 * (out["att_feat"].sum() + out["aud_feat"].sum())
    if "vis_feat" in out:
        unused = unused + 0.0 * out["vis_feat"].sum()
    zero = torch.zeros((), device=value.device)
    return value + unused, {"frame": value.detach(), "triplet": zero, "consistency": zero}


# ---------------------------------------------------------------------------------------------------------------
# inference


def box_iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4), xyxy -> (n, m)."""
    from torchvision.ops import box_iou
    return box_iou(a, b)


def best_proposal(boxes: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One source: the selected proposal of the largest d per frame: boxes (B, K, 4), d (B, K) -> (B, 4), d_on (B,)."""
    d_on, k = d.max(dim=1)
    return boxes[torch.arange(len(k), device=boxes.device), k], d_on


def two_sources(boxes: torch.Tensor, d: torch.Tensor, exists: torch.Tensor) -> list[torch.Tensor]:
    """Two sources: per frame the most confident proposal and the most confident one that does not overlap it
    (IoU 0) — (2, 4), or (1, 4) when every other proposal overlaps the first."""
    out = []
    for bx, dd, ex in zip(boxes, d, exists):
        order = [int(i) for i in dd.masked_fill(~ex, float("-inf")).argsort(descending=True) if ex[i]]
        if not order:
            out.append(bx[:0])
            continue
        first = order[0]
        iou = box_iou_matrix(bx[first:first + 1], bx)[0]
        rest = [i for i in order[1:] if iou[i] <= 0]
        out.append(bx[[first] + rest[:1]])
    return out


def distance_threshold(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """m_on's threshold: the mean of the median distance of the positive pairs and that of the negative pairs
    (distances ‖f^att − f^s‖ in the common space, from a set of pairs with known on/off labels or matched pairs and
    shuffled ones)."""
    return float((positive.median() + negative.median()) / 2)


def on_screen(d_on: torch.Tensor, distance: torch.Tensor, threshold: float,
              d_threshold: float = ON_SCREEN_D, rule: str = "either") -> torch.Tensor:
    """Seed 001's on/off-screen decision per frame: ``rule`` "d" (d_on > 0.2), "m" (the frame/audio distance below
    ``threshold``) or "either" (the paper's m_on ‖ d_on) -> (B,) bool."""
    by_d, by_m = d_on > d_threshold, distance < threshold
    if rule == "d":
        return by_d
    if rule == "m":
        return by_m
    if rule == "either":
        return by_d | by_m
    raise ValueError(f"on_screen rule={rule!r} must be 'd', 'm' or 'either'")


# ---------------------------------------------------------------------------------------------------------------
# the network


class ProposalModel(nn.Module):
    """Seed 001's three streams on this project's trunks. ``forward(frames (B,3,H,W), audio (B,1,n_mels,T),
    proposals (B,P,4) xyxy frame pixels = None, proposal_count (B,) = None)`` -> dict:

    - always: ``weights`` (B, h, w) the attention w, ``loc_map`` (B, h, w) = w (the map the map-only mode and the
      map metrics read; upsample with :func:`location_map`), ``att_feat`` f^att and ``aud_feat`` f^s (B, D), unit
      norm; ``att_vis`` U_v v (B, D, h, w) and ``att_aud`` U_s s (B, D), the attention's projections;
    - with proposals: ``grm`` (B, H, W), ``bag`` (B, K) indices of the selected proposals, ``boxes`` (B, K, 4) their
      boxes, ``exists`` (B, K), ``assoc`` d (B, K), ``alpha`` (B, K), ``vis_feat`` f^v (B, D) unit norm.
      ``select=False`` (the "without ProSelectNet" ablation): the bag is the first ``top_k`` proposals in the
      source's own order (e.g. Selective Search's), not the GRM's choice.
    """

    def __init__(self, cfg: ModelConfig, top_k: int = 20, select: bool = True):
        super().__init__()
        self.cfg, self.top_k, self.select = cfg, top_k, select
        self.stride = cfg.visual_stride
        self.visual = ResNet18(cfg.visual_width, in_channels=3, last_stride=1,
                               padding_mode=cfg.visual_padding, layer3_stride=cfg.visual_stride // 8)
        self.audio = ResNet18(cfg.audio_width, in_channels=1, last_stride=2)
        cv, ca, d = self.visual.out_channels, self.audio.out_channels, cfg.embed_dim
        self.att_vis = nn.Conv2d(cv, d, 1)                         # U_v
        self.att_aud = nn.Linear(ca, d)                            # U_s
        self.frame_fc = nn.Linear(cv, d)                           # v^att -> f^att
        self.audio_fc = nn.Linear(ca, d)                           # s -> f^s
        self.box_fc = nn.Sequential(nn.Linear(cv * sum(k * k for k in SPP_LEVELS), d), nn.ReLU(inplace=True),
                                    nn.Linear(d, d))               # SPP(b_k) -> f^box_k

    def forward(self, frames: torch.Tensor, audio: torch.Tensor, proposals: torch.Tensor | None = None,
                proposal_count: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        qv = self.visual(frames)                                   # v (B, C, h, w)
        qa = self.audio(audio).mean(dim=(2, 3))                    # s (B, C_a)
        att_vis, att_aud = self.att_vis(qv), self.att_aud(qa)
        w = attention(att_vis, att_aud)
        v_att = torch.einsum("bchw,bhw->bc", qv, w)
        out = {"weights": w, "loc_map": w, "att_feat": F.normalize(self.frame_fc(v_att), dim=1),
               "aud_feat": F.normalize(self.audio_fc(qa), dim=1), "att_vis": att_vis, "att_aud": att_aud}
        if proposals is None:
            return out
        b, p = proposals.shape[:2]
        count = torch.full((b,), p, device=proposals.device) if proposal_count is None else proposal_count
        proposals = proposals.to(qv.dtype)
        with torch.no_grad():                                      # top-K selection is not differentiable
            grm = global_response_map(location_map(w.detach().float(), frames.shape[-2:]))
            if self.select:
                conf = proposal_confidence(grm, proposals.float(), count)
            else:                                                  # the source's own ranking
                conf = (-torch.arange(p, device=proposals.device, dtype=torch.float32)).expand(b, p).clone()
                conf = conf.masked_fill(torch.arange(p, device=proposals.device)[None] >= count[:, None],
                                        float("-inf"))
            bag, exists = select_top_k(conf, self.top_k)
        boxes = proposals.gather(1, bag[..., None].expand(-1, -1, 4))
        box_feat = F.normalize(self.box_fc(spp_features(qv, boxes, self.stride)), dim=2)
        d = association(out["aud_feat"], box_feat, exists)
        alpha = proposal_weights(d, exists)
        vis = F.normalize(torch.einsum("bk,bkd->bd", alpha, box_feat), dim=1)
        out.update({"grm": grm, "bag": bag, "boxes": boxes, "exists": exists, "assoc": d, "alpha": alpha,
                    "vis_feat": vis})
        return out
