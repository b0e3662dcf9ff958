"""DSOL (seed 002, avdet/dsol.py): known answers of the localisation map, the match loss (eq. 1), the object
features (eq. 2), stage 2's class-aware maps, sounding filter and KL (eq. 4–8); the two-process split of the loss;
the model's outputs; fresh classifiers; the between-epoch round and its dictionary."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avdet.config import ModelConfig
from avdet.dsol import (DSOLModel, class_maps, classification_loss, consistency_loss, fresh_classifiers,
                        localisation_map, match_loss, match_scores, negative_partner, object_features, object_mask,
                        sounding_class_logits, stage2_loss)


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_localisation_map_is_the_parameterised_sigmoid_of_the_cosine():
    vis = torch.zeros(1, 2, 1, 2)
    vis[0, :, 0, 0] = torch.tensor([1.0, 0.0])            # cos 1 with the audio
    vis[0, :, 0, 1] = torch.tensor([0.0, 1.0])            # cos 0
    aud = _unit([1.0, 0.0])
    got = localisation_map(vis, aud, torch.tensor(5.0), torch.tensor(-1.0))
    sig = lambda z: 1 / (1 + math.exp(-z))                  # noqa: E731
    assert got[0, 0].tolist() == pytest.approx([sig(4.0), sig(-1.0)])
    assert float(match_scores(vis, aud, torch.tensor(5.0), torch.tensor(-1.0))[0]) == pytest.approx(sig(4.0))
    # a negative weight: the match score is still the map's maximum
    assert float(match_scores(vis, aud, torch.tensor(-2.0), torch.tensor(0.0))[0]) == pytest.approx(sig(0.0))


def test_negative_partner_is_the_next_pair_of_another_clip():
    clip = torch.tensor([7, 7, 3, 9])
    assert negative_partner(clip, torch.arange(4)).tolist() == [2, 2, 3, 0]
    assert negative_partner(torch.tensor([1, 1]), torch.arange(2)).tolist() == [-1, -1]


def test_match_loss_is_the_bce_of_positives_and_one_negative_each_by_hand():
    torch.manual_seed(0)
    vis = F.normalize(torch.randn(4, 3, 2, 2), dim=1)
    aud = F.normalize(torch.randn(4, 3), dim=1)
    w, b = torch.tensor(5.0), torch.tensor(0.3)
    clip = torch.tensor([7, 7, 3, 9])
    partner = [2, 2, 3, 0]

    def gmp(i, j):
        return max(1 / (1 + math.exp(-(5.0 * float((vis[i, :, y, x] * aud[j]).sum()) + 0.3)))
                   for y in range(2) for x in range(2))

    terms = [-math.log(gmp(i, i)) for i in range(4)] + [-math.log(1 - gmp(i, partner[i])) for i in range(4)]
    assert float(match_loss(vis, aud, w, b, clip)) == pytest.approx(sum(terms) / 8, rel=1e-5)
    one_clip = float(match_loss(vis, aud, w, b, torch.zeros(4, dtype=torch.int64)))       # no negatives at all
    assert one_clip == pytest.approx(sum(terms[:4]) / 4, rel=1e-5)


def test_two_processes_average_to_the_single_batch_loss():
    torch.manual_seed(1)
    vis = F.normalize(torch.randn(6, 3, 2, 2), dim=1)
    aud = F.normalize(torch.randn(6, 3), dim=1)
    clip = torch.tensor([1, 2, 2, 4, 5, 1])
    w, b = torch.tensor(4.0), torch.tensor(-0.2)

    def gather_for(rank):
        def gather(t):
            for whole in (aud, clip):
                part = whole[rank * 3:(rank + 1) * 3]
                if part.shape == t.shape and part.dtype == t.dtype and torch.equal(part, t):
                    return whole, rank * 3
            raise AssertionError("unexpected tensor gathered")
        return gather

    one = float(match_loss(vis, aud, w, b, clip))
    halves = [float(match_loss(vis[r * 3:(r + 1) * 3], aud[r * 3:(r + 1) * 3], w, b, clip[r * 3:(r + 1) * 3],
                               gather_for(r))) for r in range(2)]
    assert sum(halves) / 2 == pytest.approx(one, rel=1e-6)


def test_object_features_are_the_gap_of_the_masked_map_and_an_empty_mask_keeps_the_peak():
    loc = torch.tensor([[[0.9, 0.01], [0.2, 0.04]], [[0.01, 0.03], [0.02, 0.04]]])
    mask = object_mask(loc, 0.05)
    assert mask[0].tolist() == [[True, False], [True, False]]
    assert mask[1].tolist() == [[False, False], [False, True]]           # nothing above 0.05: its maximum
    feat = torch.arange(16, dtype=torch.float32).view(2, 2, 2, 2)
    got = object_features(feat, mask)
    assert got[0].tolist() == [(0 + 2) / 4, (4 + 6) / 4] and got[1].tolist() == [11 / 4, 15 / 4]


def test_classification_loss_and_fresh_classifiers():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    expected = 2 * float(F.cross_entropy(logits, labels))
    assert float(classification_loss(logits, logits, labels)) == pytest.approx(expected)
    model = DSOLModel(ModelConfig(image_size=32, visual_width=4, audio_width=4, embed_dim=8, num_clusters=3))
    a, b, c = fresh_classifiers(model, 5), fresh_classifiers(model, 5), fresh_classifiers(model, 6)
    assert set(a) == {"vis_cls.weight", "vis_cls.bias", "aud_cls.weight", "aud_cls.bias"}
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["vis_cls.weight"], c["vis_cls.weight"])
    bound = 1 / model.vis_cls.in_features ** 0.5
    assert a["vis_cls.weight"].shape == model.vis_cls.weight.shape and float(a["vis_cls.weight"].abs().max()) <= bound


def test_class_maps_and_the_sounding_filter_by_hand():
    """Eq. 4: m^k_u = <d^k, f_u>; eq. 5–6: GAP(m^k ∘ l) — one frame, 2 locations, D = 2, K = 2."""
    f = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])                   # (1, D=2, h=1, w=2): f_0 = (1, 0), f_1 = (0, 2)
    d = torch.tensor([[3.0, 0.0], [0.0, 1.0]])                           # d^0 = (3, 0), d^1 = (0, 1)
    m = class_maps(f, d)
    assert m.tolist() == [[[[3.0, 0.0]], [[0.0, 2.0]]]]
    loc = torch.tensor([[[0.5, 0.25]]])
    assert sounding_class_logits(m, loc).tolist() == [[(3.0 * 0.5 + 0.0) / 2, (0.0 + 2.0 * 0.25) / 2]]


def test_consistency_loss_is_kl_of_the_visual_from_the_audio_distribution_and_trains_only_the_visual_side():
    pv_logits = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)   # p_v = (3/4, 1/4)
    pa_logits = torch.tensor([[0.0, 0.0]], requires_grad=True)             # p_a = (1/2, 1/2)
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    value = consistency_loss(pv_logits, pa_logits)
    assert float(value.detach()) == pytest.approx(want, abs=1e-6)
    value.backward()
    assert pa_logits.grad is None and float(pv_logits.grad.abs().sum()) > 0     # p_a is the target
    same = torch.tensor([[0.3, -1.0, 2.0]])
    assert float(consistency_loss(same, same + 5.0)) == pytest.approx(0.0, abs=1e-6)   # softmax ignores a shift


def test_stage2_loss_is_consistency_plus_lambda_times_the_match_loss():
    torch.manual_seed(0)
    out = {"vis_emb": F.normalize(torch.randn(4, 3, 2, 2), dim=1), "aud_emb": F.normalize(torch.randn(4, 3), dim=1),
           "av_weight": torch.tensor(5.0), "av_bias": torch.tensor(0.0), "class_logits": torch.randn(4, 5),
           "aud_logits": torch.randn(4, 5)}
    clip = torch.tensor([0, 1, 2, 3])
    total, l_c, l_1 = stage2_loss(out, clip, 0.5)
    assert float(l_c) == pytest.approx(float(consistency_loss(out["class_logits"], out["aud_logits"])))
    assert float(l_1) == pytest.approx(float(match_loss(out["vis_emb"], out["aud_emb"], out["av_weight"],
                                                        out["av_bias"], clip)))
    assert float(total) == pytest.approx(float(l_c) + 0.5 * float(l_1))


def test_model_outputs_the_map_its_match_head_and_the_object_features():
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=64, visual_width=4, audio_width=4, embed_dim=8, num_clusters=3)
    model = DSOLModel(cfg, mask_threshold=0.05).eval()
    frames, audio = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 32, 20)
    out = model(frames, audio)
    assert out["loc_map"].shape == (2, 4, 4) and out["obj_feat"].shape == (2, 32)
    assert float(out["av_weight"].detach()) == 5.0 and float(out["av_bias"].detach()) == 0.0   # the authors' init
    assert torch.allclose(out["loc_map"], localisation_map(out["vis_emb"], out["aud_emb"], out["av_weight"],
                                                           out["av_bias"]))
    assert torch.allclose(out["aud_pool"], model.audio(audio).amax(dim=(2, 3)))         # global max pooling
    qv = model.visual(frames)
    assert torch.allclose(out["obj_feat"], object_features(qv, object_mask(out["loc_map"], 0.05)))
    assert model.dictionary.shape == (3, 32) and torch.equal(out["class_logits"], torch.zeros(2, 3))  # no dictionary
    model.dictionary.copy_(torch.randn(3, 32))
    out = model(frames, audio)
    assert torch.allclose(out["class_logits"], sounding_class_logits(class_maps(qv, model.dictionary), out["loc_map"]))
    with torch.no_grad():
        model.class_scale.fill_(3.0)                                         # the learned scale a of p_v's logits
    assert torch.allclose(model(frames, audio)["class_logits"], 3.0 * out["class_logits"])
    assert "dictionary" in model.state_dict()                               # it travels in model.pt


# ---------------------------------------------------------------------------------------------------------------
# the between-epoch round (k-means over the masked object features, fresh classifiers), one and two processes

ROUND_CFG = ModelConfig(image_size=32, visual_width=4, audio_width=4, embed_dim=8, num_clusters=3)


def _round_batches():
    g = torch.Generator().manual_seed(0)
    return [{"frames": torch.randn(6, 3, 32, 32, generator=g), "audio": torch.randn(6, 1, 16, 20, generator=g),
             "index": torch.arange(6) * 3 + 100 * b, "label": torch.full((6,), -1)} for b in range(3)]


def _as_dict(table) -> dict[int, int]:
    return {int(i): int(table.lookup(torch.tensor([int(i)]))[0]) for b in _round_batches() for i in b["index"]}


def _round(batches, out_dir=None, rank=0):
    """One DSOL round on a DeepSpeed-wrapped model (ZeRO 1: the classifiers' fp32 master copy is partitioned)."""
    from distributed.stage1.config import Stage1Config, Stage1TrainConfig
    from distributed.stage1.engine import build_engine
    from distributed.stage1.labels import random_equipartition
    from distributed.stage1.methods import METHODS, State, build_model

    cfg = Stage1Config(method="dsol", model=ROUND_CFG,
                       train=Stage1TrainConfig(batch_size=6, zero_stage=1, optimizer="adamw", seed=3))
    torch.manual_seed(0)
    engine = build_engine(build_model(cfg), cfg.train, steps_per_epoch=1)
    first = random_equipartition(torch.cat([b["index"] for b in _round_batches()]), 3, seed=3)
    state, stats, line = METHODS["dsol"].round(engine, batches, cfg, State(first), 2, None)
    cls = {k: v.detach().clone() for k, v in engine.module.named_parameters() if "_cls" in k}
    cls["dictionary"] = engine.module.dictionary.clone()
    if out_dir is not None:
        torch.save({"table": _as_dict(state.table), "cls": cls}, f"{out_dir}/rank{rank}.pt")
    return state, stats, line, cls


def _round_job(rank: int, world_size: int, out_dir: str) -> None:
    mine = [b for i, b in enumerate(_round_batches()) if i % 2 == rank]     # rank 1 holds one batch, rank 0 two
    _round(mine, out_dir, rank)


def test_the_round_gives_one_table_and_fresh_classifiers_in_one_or_two_processes(tmp_path):
    from distributed.stage1.engine import release_process_group
    try:
        state, stats, line, cls = _round(list(reversed(_round_batches())))   # arrival order does not matter
    finally:
        release_process_group()
    table = _as_dict(state.table)
    assert state.table.version == 2 and stats["method"] == "kmeans" and line.startswith("dictionary v2 (kmeans): ")
    assert sorted(set(table.values())) == [0, 1, 2]                          # K = 3 clusters, all used
    fresh = fresh_classifiers(DSOLModel(ROUND_CFG), 3 * 1009 + 2)
    assert all(torch.equal(cls[k], fresh[k]) for k in fresh)
    assert torch.equal(cls["dictionary"], torch.from_numpy(state.table.centroids))   # the round wrote D
    assert float(cls["dictionary"].abs().sum()) > 0
    from distributed.cluster.dist import spawn_loopback
    spawn_loopback(_round_job, 2, str(tmp_path))
    for r in (0, 1):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert got["table"] == table
        assert all(torch.equal(got["cls"][k], fresh[k]) for k in fresh)
        # the centroids are sums over the rows: over two ranks they are all-reduced in another order, so their last
        # bits may differ with the machine's kernels (on an AVX-512 EPYC: 44 of 96 values, by at most 3e-8 = 1 ulp);
        # the labels above may not
        torch.testing.assert_close(got["cls"]["dictionary"], cls["dictionary"], rtol=1e-6, atol=1e-7)
