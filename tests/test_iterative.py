"""avdet/iterative.py (seed 003's losses): known answers computed by hand, the ablation switches, and the split over
processes giving the single-batch loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avdet.iterative import info_nce, iterative_loss, masked_pool, patch_masks, response_map


def _batch(b=4, c=3, h=2, w=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    vis = F.normalize(torch.randn(b, c, h, w, generator=g), dim=1)
    aud = F.normalize(torch.randn(b, c, generator=g), dim=1)
    prev_map = torch.rand(b, h, w, generator=g)
    prev_aud = F.normalize(torch.randn(b, c, generator=g), dim=1)
    return vis, aud, prev_map, prev_aud


def test_response_map_is_the_min_max_normalised_dot_product():
    vis = torch.zeros(1, 2, 1, 3)
    vis[0, 0, 0] = torch.tensor([1.0, 0.0, -1.0])
    vis[0, 1, 0] = torch.tensor([0.0, 1.0, 0.0])
    aud = torch.tensor([[2.0, 1.0]])                  # dot products 2, 1, -2 -> (x + 2) / 4
    assert torch.allclose(response_map(vis, aud), torch.tensor([[[1.0, 0.75, 0.0]]]))
    assert torch.equal(response_map(torch.ones(1, 2, 2, 2), aud), torch.zeros(1, 2, 2))   # flat: all zeros


def test_patch_masks_split_at_delta_v_and_fall_back_to_the_extreme_patch():
    prev = torch.tensor([[[0.9, 0.2], [0.6, 0.1]], [[0.3, 0.4], [0.2, 0.35]]])
    pos, neg = patch_masks(prev, 0.5)
    assert pos[0].tolist() == [[True, False], [True, False]] and neg[0].tolist() == [[False, True], [False, True]]
    assert pos[1].tolist() == [[False, True], [False, False]]          # none above 0.5: the highest patch
    assert neg[1].all()


def test_masked_pool_is_the_mean_of_the_normalised_features_over_the_mask():
    vis = torch.zeros(1, 2, 1, 2)
    vis[0, :, 0, 0] = torch.tensor([3.0, 4.0])         # normalised: (0.6, 0.8)
    vis[0, :, 0, 1] = torch.tensor([0.0, 2.0])         # normalised: (0, 1)
    assert torch.allclose(masked_pool(vis), torch.tensor([[0.3, 0.9]]))
    assert torch.allclose(masked_pool(vis, torch.tensor([[[True, False]]])), torch.tensor([[0.6, 0.8]]))


def test_iterative_loss_matches_eq7_computed_by_hand():
    vis, aud, prev_map, prev_aud = _batch()
    tau, dv, da = 0.1, 0.5, 0.3
    clip = torch.tensor([7, 8, 7, 9])                  # rows 0 and 2 share a clip
    got = iterative_loss(vis, aud, prev_map, prev_aud, tau, dv, da, clip=clip)
    b = len(aud)
    total = 0.0
    for i in range(b):
        cells = [(y, x) for y in range(2) for x in range(2)]
        pos = [p for p in cells if prev_map[i, p[0], p[1]] > dv] or [max(cells, key=lambda p: prev_map[i, p[0], p[1]])]
        neg = [p for p in cells if prev_map[i, p[0], p[1]] < dv] or [min(cells, key=lambda p: prev_map[i, p[0], p[1]])]
        v_pos = sum(vis[i, :, y, x] for y, x in pos) / len(pos)
        v_neg = sum(vis[i, :, y, x] for y, x in neg) / len(neg)
        num = den = 0.0
        for j in range(b):
            positive = i == j or clip[i] == clip[j] or float(prev_aud[i] @ prev_aud[j]) >= da
            e_pos = math.exp(float(v_pos @ aud[j]) / tau)
            num += e_pos if positive else 0.0
            den += e_pos + math.exp(float(v_neg @ aud[j]) / tau)
        total += -math.log(num / den)
    assert float(got) == pytest.approx(total / b, rel=1e-5)


def test_with_every_switch_off_eq7_is_eq3():
    vis, aud, prev_map, prev_aud = _batch(seed=1)
    off = iterative_loss(vis, aud, prev_map, prev_aud, 0.2, 0.5, 0.3, itr=False, intra=False, inter=False)
    assert float(off) == pytest.approx(float(info_nce(vis, aud, 0.2)), rel=1e-6)
    by_hand = -sum(math.log(math.exp(float(masked_pool(vis)[i] @ aud[i]) / 0.2)
                            / sum(math.exp(float(masked_pool(vis)[i] @ aud[j]) / 0.2) for j in range(4)))
                   for i in range(4)) / 4
    assert float(off) == pytest.approx(by_hand, rel=1e-5)


def test_each_switch_changes_the_loss():
    vis, aud, prev_map, prev_aud = _batch(seed=2)
    full = float(iterative_loss(vis, aud, prev_map, prev_aud, 0.1, 0.5, -1.0))     # δ_a = -1: every pair positive
    for switch in ("itr", "intra", "inter"):
        assert float(iterative_loss(vis, aud, prev_map, prev_aud, 0.1, 0.5, -1.0, **{switch: False})) != \
            pytest.approx(full), switch


def test_info_nce_leaves_same_clip_pairs_out_of_the_denominator():
    vis, aud, _, _ = _batch(seed=3)
    clip = torch.tensor([1, 2, 1, 3])
    got = float(info_nce(vis, aud, 0.1, clip=clip))
    pooled = masked_pool(vis)
    want = 0.0
    for i in range(4):
        cols = [j for j in range(4) if j == i or clip[j] != clip[i]]
        want += -math.log(math.exp(float(pooled[i] @ aud[i]) / 0.1)
                          / sum(math.exp(float(pooled[i] @ aud[j]) / 0.1) for j in cols))
    assert got == pytest.approx(want / 4, rel=1e-5)


def test_two_processes_average_to_the_single_batch_loss():
    """Each half of the batch against the gathered whole (what two ranks compute) averages to the one-process loss."""
    vis, aud, prev_map, prev_aud = _batch(b=6, seed=4)
    clip = torch.tensor([1, 2, 3, 1, 5, 2])
    full = {"aud": aud, "prev": prev_aud, "clip": clip}

    def gather_for(rank):
        def gather(t):
            for whole in full.values():
                part = whole[rank * 3:(rank + 1) * 3]
                if part.shape == t.shape and part.dtype == t.dtype and torch.equal(part, t):
                    return whole, rank * 3
            raise AssertionError("unexpected tensor gathered")
        return gather

    one = float(iterative_loss(vis, aud, prev_map, prev_aud, 0.1, 0.5, 0.2, clip=clip))
    halves = [float(iterative_loss(vis[r * 3:(r + 1) * 3], aud[r * 3:(r + 1) * 3], prev_map[r * 3:(r + 1) * 3],
                                   prev_aud[r * 3:(r + 1) * 3], 0.1, 0.5, 0.2, gather_for(r),
                                   clip[r * 3:(r + 1) * 3])) for r in range(2)]
    assert sum(halves) / 2 == pytest.approx(one, rel=1e-6)
    init = [float(info_nce(vis[r * 3:(r + 1) * 3], aud[r * 3:(r + 1) * 3], 0.1, gather_for(r),
                           clip[r * 3:(r + 1) * 3])) for r in range(2)]
    assert sum(init) / 2 == pytest.approx(float(info_nce(vis, aud, 0.1, clip=clip)), rel=1e-6)


def test_the_methods_give_pseudo_annotation_their_maps_and_say_whether_they_have_classes():
    """afouras: h = <f^v_u, f^a>/ρ and K pseudo-classes; iterative: the response map R (eq. 1), class-agnostic;
    dsol: its localisation map l and K pseudo-classes; every trainable method has a localiser and builds its net."""
    from avdet.config import ConfigError, load_config
    from avdet.dsol import DSOLModel
    from avdet.localisers import LOCALISERS
    from avdet.model import AVModel, heatmap
    from distributed.pipeline import PipelineConfig
    from distributed.stage1.config import METHOD_NAMES, Stage1Config
    from distributed.stage1.methods import METHODS, build_model

    assert list(METHODS) == list(LOCALISERS) == list(METHOD_NAMES)
    torch.manual_seed(0)
    out = {"vis_emb": F.normalize(torch.randn(3, 4, 2, 2), dim=1), "aud_emb": F.normalize(torch.randn(3, 4), dim=1)}
    model = type("M", (), {"heatmap": lambda self, v, a: heatmap(v, a, torch.tensor(0.5))})()
    assert torch.allclose(LOCALISERS["afouras"].maps(model, out),
                          torch.einsum("bchw,bc->bhw", out["vis_emb"], out["aud_emb"]) / 0.5)
    assert torch.equal(LOCALISERS["iterative"].maps(model, out), response_map(out["vis_emb"], out["aud_emb"]))
    assert [LOCALISERS[m].num_classes(7) for m in ("afouras", "iterative", "dsol")] == [7, 1, 7]
    loc = torch.rand(3, 2, 2)
    assert torch.equal(LOCALISERS["dsol"].maps(model, {**out, "loc_map": loc}), loc)
    small = ["model.num_clusters=7", "model.visual_width=8", "model.audio_width=8", "model.embed_dim=8"]
    assert type(build_model(load_config(Stage1Config, None, small))) is AVModel
    assert type(build_model(load_config(Stage1Config, None, small + ["method=dsol"]))) is DSOLModel
    assert load_config(PipelineConfig, None, ["stage1.method=iterative"]).stage1.method == "iterative"
    with pytest.raises(ConfigError, match="stage1.method must be one of afouras, iterative, dsol"):
        load_config(PipelineConfig, None, ["stage1.method=nope"])
