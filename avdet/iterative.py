"""Iterative contrastive learning (seed 003, Lin et al., "Unsupervised Sound Localization via Iterative Contrastive
Learning"): the maths of the baseline localiser ``stage1.method=iterative``. No framework imports.

- Response map R = V * a, a dot product at every location, min-max normalised per frame (eq. 1); the sounding
  patches are R > δ_v (eq. 2). It is also the method's heatmap for the self-boxes.
- Initialisation: InfoNCE on φ(V), the spatial mean of the L2-normalised feature map, against every audio of the
  global batch (eq. 3).
- Iterative epochs (eq. 4–7): from the previous epoch's maps R̃ and audio embeddings ã (cached over the whole dataset
  between epochs), v⁺ = φ over the patches with R̃ > δ_v, v⁻ = φ over those with R̃ < δ_v (hard negatives of the same
  frame), and inter-frame positives y_ij = [⟨ã_i, ã_j⟩ ≥ δ_a].
- Ablations (the paper's Table 4 switches): ``itr`` (v⁺ in place of φ(V)), ``intra`` (the v⁻ terms), ``inter`` (y from
  ã; off: each frame's own audio only).

Where the paper is silent, and what we chose: τ, δ_v and δ_a are configuration; "features sampled randomly from
patches which show high responses" is read as all of them (φ over the whole set); a frame without a patch above
(below) δ_v uses its highest (lowest) patch; pairs of the same clip share their sound, so they are never negatives:
left out of eq. 3's denominator and counted as positives (y = 1) in eq. 7 — the rule L_NC follows
(:mod:`avdet.losses`).

Data parallelism as in :mod:`avdet.losses`: ``gather(t) -> (gathered, offset)`` all-gathers along dim 0 with
gradient; each process's loss is the mean over its own rows against the whole global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import Gather, same_clip_negatives

__all__ = ["response_map", "patch_masks", "masked_pool", "info_nce", "iterative_loss"]


def response_map(vis_emb: torch.Tensor, aud_emb: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """R = V * a min-max normalised per frame (eq. 1): vis_emb (B, C, h, w), aud_emb (B, C) -> (B, h, w) in [0, 1]
    (a flat map is all zeros)."""
    r = torch.einsum("bchw,bc->bhw", vis_emb, aud_emb)
    lo = r.flatten(1).amin(1).view(-1, 1, 1)
    hi = r.flatten(1).amax(1).view(-1, 1, 1)
    return (r - lo) / (hi - lo).clamp_min(eps)


def patch_masks(prev_map: torch.Tensor, delta_v: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sounding, silent) bool masks (B, h, w) of R̃ > δ_v and R̃ < δ_v (eq. 4, 5); a frame with an empty mask gets its
    highest (lowest) patch instead."""
    pos, neg = prev_map > delta_v, prev_map < delta_v
    flat = prev_map.flatten(1)
    rows = torch.arange(flat.shape[0], device=flat.device)
    for mask, pick in ((pos, flat.argmax(1)), (neg, flat.argmin(1))):
        empty = ~mask.flatten(1).any(1)
        if bool(empty.any()):
            m = mask.view(flat.shape)
            m[rows[empty], pick[empty]] = True
    return pos, neg


def masked_pool(vis_emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """φ: the mean of the L2-normalised features (B, C, h, w) over the patches of ``mask`` (B, h, w) (``None``: all
    of them, eq. 3's φ(V)) -> (B, C)."""
    v = F.normalize(vis_emb, dim=1)
    if mask is None:
        return v.mean(dim=(2, 3))
    w = mask.to(v.dtype).unsqueeze(1)
    return (v * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp_min(1.0)


def _global_audio(aud_emb: torch.Tensor, gather: Gather | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(every audio of the global batch (B_tot, C), the column of each local row's own audio (B,))."""
    aud_all, offset = (aud_emb, 0) if gather is None else gather(aud_emb)
    return aud_all, torch.arange(offset, offset + aud_emb.shape[0], device=aud_emb.device)


def info_nce(vis_emb: torch.Tensor, aud_emb: torch.Tensor, tau: float, gather: Gather | None = None,
             clip: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3: −mean_i log exp(φ(V_i)·a_i/τ) / Σ_j exp(φ(V_i)·a_j/τ), j over the global batch; other pairs of the
    same clip are left out of the denominator. vis_emb (B, C, h, w), aud_emb (B, C) L2-normalised."""
    aud_all, own = _global_audio(aud_emb, gather)
    logits = masked_pool(vis_emb) @ aud_all.t() / tau
    if clip is not None:
        logits = logits.masked_fill(same_clip_negatives(clip, gather, own), float("-inf"))
    return F.cross_entropy(logits, own)


def iterative_loss(vis_emb: torch.Tensor, aud_emb: torch.Tensor, prev_map: torch.Tensor, prev_aud: torch.Tensor,
                   tau: float, delta_v: float, delta_a: float, gather: Gather | None = None,
                   clip: torch.Tensor | None = None, itr: bool = True, intra: bool = True,
                   inter: bool = True) -> torch.Tensor:
    """Eq. 7 for this process's rows: −mean_i log Σ_j y_ij e^{v⁺_i·a_j/τ} / Σ_j (e^{v⁻_i·a_j/τ} + e^{v⁺_i·a_j/τ}).

    vis_emb (B, C, h, w), aud_emb (B, C): this step's embeddings; prev_map (B, h, w) and prev_aud (B, C): the
    previous epoch's R̃ (min-max normalised) and ã (L2-normalised) of the same samples (no gradient); clip (B,): the
    pairs' clips (same clip → y = 1). With ``itr``, ``intra`` and ``inter`` all off this is eq. 3 without the
    same-clip mask."""
    aud_all, own = _global_audio(aud_emb, gather)
    pos, neg = patch_masks(prev_map.detach(), delta_v)
    v_pos = masked_pool(vis_emb, pos if itr else None)
    s_pos = v_pos @ aud_all.t() / tau                                       # (B, B_tot)
    with torch.no_grad():
        y = torch.zeros_like(s_pos, dtype=torch.bool)
        if inter:
            prev_all = prev_aud if gather is None else gather(prev_aud.detach())[0]
            y |= (F.normalize(prev_aud.float(), dim=1) @ F.normalize(prev_all.float(), dim=1).t()) >= delta_a
        if clip is not None:
            y |= same_clip_negatives(clip, gather, own)
        y[torch.arange(len(own), device=y.device), own] = True
    numerator = torch.logsumexp(s_pos.masked_fill(~y, float("-inf")), dim=1)
    terms = [s_pos]
    if intra:
        terms.append(masked_pool(vis_emb, neg) @ aud_all.t() / tau)
    denominator = torch.logsumexp(torch.cat(terms, dim=1), dim=1)
    return (denominator - numerator).mean()
