"""Stage-1 methods: what the trainer's loop asks of a localiser, per batch and between epochs (docs/ARCHITECTURE.md,
"The method interface"). ``stage1.method`` picks one entry of :data:`METHODS`; this module is the one place that
branches on it.

====================  ===============================================  ============================================
method                per-batch loss (``loss``)                        between epochs (``round``)
====================  ===============================================  ============================================
``afouras`` (ours)    L = λ·L_NC + (1−λ)·L_clust (``avdet.losses``)     relabel (``relabel.py``): k-means or
                                                                       Sinkhorn over the whole dataset
``iterative`` (003)   eq. 3 until a cache exists, then eq. 7            the response cache (``responses.py``):
                      (``avdet.iterative``)                            R̃ and ã of every sample
``dsol`` (002)        BCE match loss (eq. 1); once a dictionary         k-means over the masked object features (the
                      exists, alternated step by step with the         relabel round's ``kmeans`` strategy): labels
                      classifiers' CE on its labels; in the last       and the dictionary D (its centroids), then the
                      ``dsol.stage2_epochs``, stage 2 on the multi-    classifiers are re-initialised; none during
                      source clips: L_c + λ·L_1 (``avdet.dsol``)       stage 2
``proposals`` (001)   distance ratio on (f^v, own audio, another       none
                      clip's audio) + λ·‖f^v − f^att‖² over the GRM's
                      top-K proposals (``avdet.proposal_ssl``); in the
                      first ``proposals.warmup_epochs`` (default 0),
                      the frame stream alone (``warmup_loss``)
====================  ===============================================  ============================================

``split(cfg, epoch)`` names the shards' split an epoch trains on: ``cfg.split``, except DSOL's stage-2 epochs
(``dsol.stage2_split``).

What the stages after stage 1 need of a method (its network, the map the self-boxes come from, whether it has
pseudo-classes) is :data:`avdet.localisers.LOCALISERS`, so they read the artifact without this module;
:func:`build_model` builds the network for a stage-1 config.

A method's state is a :class:`State`: the label table (the iterative method keeps its initial equipartition: it
has no clusters, so its self-labels are class-agnostic) and, for the iterative method, the response cache. Both
travel in the checkpoints.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from avdet.dsol import classification_loss, fresh_classifiers, match_loss, stage2_loss
from avdet.iterative import info_nce, iterative_loss
from avdet.localisers import LOCALISERS
from avdet.losses import joint_loss
from avdet.proposal_ssl import frame_loss, proposal_loss
from distributed.cluster import dist
from distributed.stage1.config import Stage1Config
from distributed.stage1.engine import set_parameters
from distributed.stage1.labels import LabelTable, describe_round
from distributed.stage1.relabel import score_and_relabel
from distributed.stage1.relabel_pool import RelabelService
from distributed.stage1.responses import ResponseCache, score_responses

LossFn = Callable[[dict, dict], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]   # parts: detached 0-d tensors


@dataclass
class State:
    table: LabelTable
    cache: ResponseCache | None = None


@dataclass(frozen=True)
class Method:
    """``loss(cfg, state, epoch)`` -> the per-batch loss ``(model output, batch) -> (loss, parts for logging)``;
    ``round_after(cfg, epoch)`` -> whether ``round`` runs after that (0-based) epoch; ``round(engine, stream, cfg,
    state, version, service)`` (the DeepSpeed engine; its ``module`` is the model) -> (the new state, statistics
    for the epoch's metrics under ``<prefix>_``, a line for the console); ``split(cfg, epoch)`` -> the split the
    epoch streams."""
    name: str
    prefix: str
    loss: Callable[[Stage1Config, State, int], LossFn]
    round_after: Callable[[Stage1Config, int], bool]
    round: Callable[..., "tuple[State, dict, str]"]
    split: Callable[[Stage1Config, int], str] = lambda cfg, epoch: cfg.split


def _afouras_loss(cfg: Stage1Config, state: State, epoch: int) -> LossFn:
    def loss(out: dict, batch: dict):
        labels = state.table.lookup(batch["index"]).to(out["vis_logits"].device)
        return joint_loss(out, labels, cfg.loss.lam, gather=dist.all_gather_with_grad,
                          clip=batch["clip"], column_lse=dist.column_logsumexp)
    return loss


def _afouras_round(engine, stream, cfg: Stage1Config, state: State, version: int,
                   service: RelabelService | None) -> tuple[State, dict, str]:
    table, stats = score_and_relabel(engine.module, stream, cfg, state.table, version=version, service=service)
    return State(table, state.cache), stats, describe_round(stats)


def _unused_heads(out: dict) -> torch.Tensor:
    """0 × the outputs a loss does not use (the classifier heads, ρ), so every parameter has a gradient
    (zero) and the DeepSpeed engine reduces the same buckets on every step."""
    return 0.0 * (out["vis_logits"].sum() + out["aud_logits"].sum() + out["rho"].sum())


def _iterative_loss(cfg: Stage1Config, state: State, epoch: int) -> LossFn:
    it = cfg.iterative

    def loss(out: dict, batch: dict):
        if state.cache is None:                                              # initialisation: eq. 3
            value = info_nce(out["vis_emb"], out["aud_emb"], it.tau, dist.all_gather_with_grad, batch["clip"])
        else:                                                                # eq. 7 on the previous epoch's R̃, ã
            prev_map, prev_aud = (t.to(out["vis_emb"].device) for t in state.cache.lookup(batch["index"]))
            value = iterative_loss(out["vis_emb"], out["aud_emb"], prev_map, prev_aud, it.tau, it.delta_v,
                                   it.delta_a, dist.all_gather_with_grad, batch["clip"], it.itr, it.intra, it.inter)
        total = value + _unused_heads(out)
        return total, {"loss": value.detach(), "nce": value.detach(), "rho": out["rho"].detach()}
    return loss


def _iterative_round(engine, stream, cfg: Stage1Config, state: State, version: int,
                     service: RelabelService | None) -> tuple[State, dict, str]:
    cache, stats = score_responses(engine.module, stream, version)
    sounding = float((cache.maps > cfg.iterative.delta_v).mean()) if len(cache) else 0.0
    stats["sounding_fraction"] = sounding
    line = (f"responses v{version}: {len(cache)} samples scored in {stats['round_s']:.0f} s, "
            f"{100 * sounding:.1f} % of patches above delta_v={cfg.iterative.delta_v}")
    return State(state.table, cache), stats, line


def _dsol_loss(cfg: Stage1Config, state: State, epoch: int) -> LossFn:
    if cfg.dsol_stage2(epoch):
        return _dsol_stage2_loss(cfg)
    dictionary = state.table.version >= 1          # labels of a k-means round (version 0 is the initial table)
    steps = [0]

    def loss(out: dict, batch: dict):
        match = match_loss(out["vis_emb"], out["aud_emb"], out["av_weight"], out["av_bias"], batch["clip"],
                           dist.all_gather_with_grad)
        cls = classification_loss(out["vis_logits"], out["aud_logits"],
                                  state.table.lookup(batch["index"]).to(out["vis_logits"].device))
        classify = dictionary and steps[0] % 2 == 1
        steps[0] += 1
        value = cls if classify else match
        # 0 × what this step does not train, so every parameter has a gradient and the engine reduces the same buckets
        total = value + 0.0 * ((match if classify else cls) + out["rho"].sum() + out["class_logits"].sum())
        return total, {"loss": value.detach(), "match": match.detach(), "cls": cls.detach()}
    return loss


def _dsol_stage2_loss(cfg: Stage1Config) -> LossFn:
    """Eq. 8 on the multi-source clips (they have no pseudo-labels: the classifiers only give p_a)."""
    def loss(out: dict, batch: dict):
        value, l_c, l_1 = stage2_loss(out, batch["clip"], cfg.dsol.lam, dist.all_gather_with_grad)
        total = value + _unused_heads(out)
        return total, {"loss": value.detach(), "kl": l_c.detach(), "match": l_1.detach()}
    return loss


def _dsol_round(engine, stream, cfg: Stage1Config, state: State, version: int,
                service: RelabelService | None) -> tuple[State, dict, str]:
    model = engine.module
    kmeans = dataclasses.replace(cfg.relabel, warm_start="kmeans", kmeans_epochs=version, kmeans_features="objects",
                                 mode="workers", kmeans_until_stable=0.0)        # every DSOL round is k-means
    table, stats = score_and_relabel(model, stream, dataclasses.replace(cfg, relabel=kmeans), state.table,
                                     version=version)
    with torch.no_grad():                           # the object dictionary D: the (renamed) centroids, every rank
        model.dictionary.copy_(torch.from_numpy(table.centroids))
    # the cluster order changed: fresh classifiers (paper, App. 8.2), in the module and the optimizer's copy
    set_parameters(engine, fresh_classifiers(model, cfg.train.seed * 1009 + version))
    return State(table, state.cache), stats, describe_round(stats, "dictionary")


def _proposals_loss(cfg: Stage1Config, state: State, epoch: int) -> LossFn:
    warmup = epoch < cfg.proposals.warmup_epochs

    def loss(out: dict, batch: dict):
        if warmup:                                  # the frame stream alone (not in seed 001: an optional warm-up)
            value, parts = frame_loss(out, batch["clip"], dist.all_gather_with_grad, cfg.proposals.warmup_loss)
        else:
            value, parts = proposal_loss(out, batch["clip"], cfg.proposals.lam, dist.all_gather_with_grad)
        return value, {"loss": value.detach(), **parts}
    return loss


def _no_round(engine, stream, cfg, state, version, service):
    raise AssertionError("stage1.method=proposals has no between-epoch round")


METHODS: dict[str, Method] = {
    "afouras": Method("afouras", "relabel", _afouras_loss, lambda cfg, epoch: cfg.train.relabel_after(epoch),
                      _afouras_round),
    "iterative": Method("iterative", "responses", _iterative_loss,
                        lambda cfg, epoch: epoch + 1 >= cfg.iterative.init_epochs, _iterative_round),
    "dsol": Method("dsol", "dictionary", _dsol_loss,
                   lambda cfg, epoch: epoch + 1 >= cfg.dsol.init_epochs and not cfg.dsol_stage2(epoch), _dsol_round,
                   lambda cfg, epoch: cfg.dsol.stage2_split if cfg.dsol_stage2(epoch) else cfg.split),
    "proposals": Method("proposals", "proposals", _proposals_loss, lambda cfg, epoch: False, _no_round),
}


def build_model(cfg: Stage1Config) -> torch.nn.Module:
    """The network of ``cfg.method`` for a stage-1 config (untrained)."""
    return LOCALISERS[cfg.method].build(cfg.model, cfg.dsol, cfg.proposals)
