"""Stage-1 losses (paper §3.1): noise-contrastive L_NC (eq. 1), clustering L_clust (eq. 2), joint L (eq. 4).

Data parallelism: negatives come from the global batch. ``gather`` is injected by the distributed layer:
``gather(t) -> (gathered, offset)`` all-gathers ``t`` (B, ...) from every process along dim 0 WITH gradient
(e.g. ``torch.distributed.nn.functional.all_gather`` then ``cat``) and returns the row ``offset`` of this process's
first sample in the gathered tensor (rank · B for equal batches). Each process's loss is the mean over its own
B samples against all gathered negatives, so the average over processes (what DDP/DeepSpeed gradient averaging
computes) equals the single-big-batch loss. ``gather=None`` is one process (offset 0).

The v→a denominators need every frame against each audio. With ``column_lse`` (injected like ``gather``:
log Σ exp over every process's rows of a score matrix, per column) only the audio embeddings are gathered: each
process scores its own frames against the global audio batch, and the per-audio denominators are summed over the
processes; the (B, C, h, w) frame maps never leave their process. Without it the frames are gathered too.

Same-clip negatives: frames of one clip share their sound, so a frame and an audio of the same clip (``clip`` ids,
:func:`data.schema.clip_id` of the video id) are never negatives of each other, across the whole global batch: they
are masked out of both softmax denominators (METHOD.md §2). Without the mask the loss asks the model to tell apart
frames that differ only in where the object sits.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .model import score_matrix

Gather = Callable[[torch.Tensor], tuple[torch.Tensor, int]]
ColumnLSE = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["score_matrix", "nce_loss", "same_clip_negatives", "cluster_loss", "joint_loss"]


def nce_loss(vis_emb: torch.Tensor, aud_emb: torch.Tensor, rho: torch.Tensor,
             gather: Gather | None = None, clip: torch.Tensor | None = None,
             column_lse: ColumnLSE | None = None) -> torch.Tensor:
    """L_NC = (L_a→v + L_v→a)/2 over the (global) batch, for this process's B pairs.   # eq. 1

    vis_emb (B, C, h, w), aud_emb (B, C) L2-normalised, rho scalar. L_a→v: each local frame v_i against every
    audio a' of the global batch; L_v→a: each local audio a_i against every frame v'. ``clip`` (B,) int64: the
    clip of each pair; other pairs of the same clip are left out of both denominators (``None``: no mask).
    ``column_lse`` (with ``gather``): the v→a denominators summed over processes instead of gathering the frames
    (module docstring). Returns a scalar."""
    b = vis_emb.shape[0]
    if gather is not None and column_lse is not None:
        return _nce_local_frames(vis_emb, aud_emb, rho, gather, clip, column_lse)
    if gather is None:
        vis_all, aud_all, offset = vis_emb, aud_emb, 0
    else:
        vis_all, offset = gather(vis_emb)
        aud_all, aud_offset = gather(aud_emb)
        if aud_offset != offset:
            raise ValueError(f"nce_loss: gather gave offsets {offset} (frames) and {aud_offset} (audio)")
    target = torch.arange(offset, offset + b, device=vis_emb.device)
    s_v = score_matrix(vis_emb, aud_all, rho)             # (B, B_tot): S(v_i, a')
    s_a = score_matrix(vis_all, aud_emb, rho).t()         # (B, B_tot): S(v', a_i)
    if clip is not None:
        same = same_clip_negatives(clip, gather, target)  # (B, B_tot) True where a' (or v') is a false negative
        s_v = s_v.masked_fill(same, float("-inf"))
        s_a = s_a.masked_fill(same, float("-inf"))
    loss_a2v = F.cross_entropy(s_v, target)               # −mean log softmax_{a'} S(v_i, a')
    loss_v2a = F.cross_entropy(s_a, target)               # −mean log softmax_{v'} S(v', a_i)
    return (loss_a2v + loss_v2a) / 2


def _nce_local_frames(vis_emb, aud_emb, rho, gather: Gather, clip, column_lse: ColumnLSE) -> torch.Tensor:
    """:func:`nce_loss` with only the audio gathered: S(v_i, a') for the local frames against the global audio
    batch serves L_a→v by rows and, through ``column_lse``, the denominators of L_v→a by columns."""
    aud_all, offset = gather(aud_emb)
    target = torch.arange(offset, offset + vis_emb.shape[0], device=vis_emb.device)
    s_v = score_matrix(vis_emb, aud_all, rho)             # (B, B_tot): S(v_i, a')
    if clip is not None:
        s_v = s_v.masked_fill(same_clip_negatives(clip, gather, target), float("-inf"))
    loss_a2v = F.cross_entropy(s_v, target)
    positive = s_v.gather(1, target[:, None])[:, 0]       # S(v_i, a_i)
    loss_v2a = (column_lse(s_v)[target] - positive).mean()  # −mean log softmax_{v' of every process} S(v', a_i)
    return (loss_a2v + loss_v2a) / 2


def same_clip_negatives(clip: torch.Tensor, gather: Gather | None, target: torch.Tensor) -> torch.Tensor:
    """(B, B_tot) bool: column j is another pair of local pair i's clip (same id, j ≠ i's own column ``target[i]``).
    ``clip`` (B,) int64 is gathered like the embeddings (no gradient)."""
    with torch.no_grad():
        clip_all = clip if gather is None else gather(clip)[0]
        same = clip[:, None] == clip_all[None, :]
        same[torch.arange(len(target), device=same.device), target] = False
    return same


def cluster_loss(vis_logits: torch.Tensor, aud_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_clust = (CE(g^v(v), y) + CE(g^a(a), y))/2 with labels y (B,) shared by both modalities.   # eq. 2"""
    return (F.cross_entropy(vis_logits, labels) + F.cross_entropy(aud_logits, labels)) / 2


def joint_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, lam: float,
               gather: Gather | None = None, clip: torch.Tensor | None = None,
               column_lse: ColumnLSE | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = λ·L_NC + (1−λ)·L_clust (eq. 4) from an AVModel output dict (vis_emb, aud_emb, vis_logits, aud_logits,
    rho), labels (B,) int64 and the pairs' clip ids (B,) (same-clip pairs are not negatives; ``None``: no mask).
    ``column_lse``: see :func:`nce_loss`. Returns (loss, {"loss", "nce", "clust", "rho"} as detached 0-d tensors
    for logging: read them with ``float`` when needed, so a GPU step does not wait for the host)."""
    nce = nce_loss(out["vis_emb"], out["aud_emb"], out["rho"], gather, clip, column_lse)
    clust = cluster_loss(out["vis_logits"], out["aud_logits"], labels)
    loss = lam * nce + (1.0 - lam) * clust                 # eq. 4
    parts = {"loss": loss.detach(), "nce": nce.detach(), "clust": clust.detach(), "rho": out["rho"].detach()}
    return loss, parts
