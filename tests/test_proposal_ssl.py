"""Seed 001's maths (avdet.proposal_ssl): known answers for the GRM, the proposal confidence, the top-K bag with its
existence mask, the association, the weights, the distance-ratio loss, the two-source rule and the on/off-screen
decision; the network's outputs and gradients."""
import math

import pytest
import torch

from avdet.config import ModelConfig
from avdet.proposal_ssl import (ProposalModel, association, attention, best_proposal, consistency_loss,
                                distance_ratio_loss, distance_threshold, frame_loss, global_response_map, on_screen,
                                proposal_confidence, proposal_loss, proposal_weights, select_top_k, two_sources)


def test_grm_divides_by_max_as_the_paper_writes_it():
    m = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    g = global_response_map(m)
    assert torch.allclose(g, torch.tensor([[[0.0, 0.25], [0.5, 0.75]]]))     # (m − 1) / 4, not (m − 1) / 3


def test_attention_is_a_softmax_over_locations():
    vis = torch.zeros(1, 2, 1, 2)
    vis[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    vis[0, :, 0, 1] = torch.tensor([0.0, 1.0])
    w = attention(vis, torch.tensor([[2.0, 0.0]]))
    assert torch.allclose(w, torch.tensor([[[math.e ** 2 / (math.e ** 2 + 1), 1 / (math.e ** 2 + 1)]]]))


def test_confidence_is_the_grm_summed_over_the_box_pixels():
    g = torch.arange(30, dtype=torch.float32).view(1, 5, 6) / 10
    boxes = torch.tensor([[[0, 0, 6, 5], [1, 2, 3, 4], [2.5, 0.2, 3.5, 1.0], [0, 0, 0, 0]]])
    conf = proposal_confidence(g, boxes, torch.tensor([3]))
    expected = [g.sum(), g[0, 2:4, 1:3].sum(), g[0, 0:1, 2:4].sum()]      # floor/ceil: pixels the box touches
    assert torch.allclose(conf[0, :3], torch.stack(expected))
    assert conf[0, 3] == float("-inf")                                     # padding


def test_top_k_bag_and_existence_mask():
    conf = torch.tensor([[0.1, 0.9, 0.5, float("-inf")], [0.3, 0.2, 0.1, 0.4]])
    index, exists = select_top_k(conf, 3)
    assert index.tolist() == [[1, 2, 0], [3, 0, 1]] and exists.all()
    index, exists = select_top_k(conf, 5)                                  # more than the frame has
    assert index[0, :3].tolist() == [1, 2, 0]
    assert exists.tolist() == [[True, True, True, False, False], [True, True, True, True, False]]


def test_association_relu_and_mask():
    aud = torch.tensor([[1.0, 0.0]])
    boxes = torch.tensor([[[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [1.0, 0.0]]])
    d = association(aud, boxes, torch.tensor([[True, True, True, False]]))
    assert torch.allclose(d, torch.tensor([[1.0, 1 / math.sqrt(2), 0.0, 0.0]]))


def test_weights_normalise_and_fall_back_to_uniform():
    exists = torch.tensor([[True, True, False], [True, True, False]])
    alpha = proposal_weights(torch.tensor([[0.2, 0.6, 0.0], [0.0, 0.0, 0.0]]), exists)
    assert torch.allclose(alpha, torch.tensor([[0.25, 0.75, 0.0], [0.5, 0.5, 0.0]]))


def test_distance_ratio_loss_known_answer():
    q, pos, neg = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    s_pos = math.exp(1) / (math.exp(1) + math.exp(2))
    assert distance_ratio_loss(q, pos, neg).item() == pytest.approx(s_pos ** 2 + (1 - s_pos - 1) ** 2)
    assert distance_ratio_loss(q, neg, pos) > distance_ratio_loss(q, pos, neg)
    assert consistency_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(2.0)


def test_negatives_come_from_another_clip():
    """Rows 0 and 1 share a clip: row 0's negative is row 2's audio, not row 1's."""
    aud = torch.eye(3)
    out = {"vis_feat": aud.clone(), "aud_feat": aud, "att_feat": aud.clone()}
    loss, parts = proposal_loss(out, torch.tensor([7, 7, 9]), lam=0.5)
    d_pos, d_neg = 0.0, math.sqrt(2)
    s = math.exp(d_pos) / (math.exp(d_pos) + math.exp(d_neg))
    assert parts["triplet"].item() == pytest.approx(2 * s * s) and parts["consistency"].item() == 0.0
    loss, parts = proposal_loss(out, torch.tensor([7, 7, 7]))                # one clip: no negative at all
    assert parts["triplet"].item() == 0.0


def test_frame_warmup_losses_train_the_frame_stream_not_the_proposal_stream():
    """The optional warm-up: "mil" is a symmetric InfoNCE on the attention's logits max-pooled over locations;
    "triplet" the distance ratio with f^att as the query. f^v gets a zero gradient in both; from ``warmup_epochs``
    on, the method's loss is seed 001's again."""
    from avdet.config import ProposalConfig
    from distributed.stage1.config import Stage1Config
    from distributed.stage1.methods import METHODS
    aud = torch.eye(3)
    vis = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    att_vis = torch.tensor([[[[2.0, 0.0]]], [[[0.0, 1.0]]]], requires_grad=True)        # (B=2, D=1, 1, 2)
    att_aud = torch.tensor([[1.0], [-1.0]])
    out = {"vis_feat": vis[:2], "aud_feat": aud[:2], "att_feat": aud[:2].clone().requires_grad_(),
           "att_vis": att_vis, "att_aud": att_aud}
    # S(v_i, a_j) = max_u <v_i,u, a_j>: S00 = 2, S01 = 0, S10 = 1, S11 = 0
    a2v = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(1 / (math.e + 1))) / 2
    v2a = (-math.log(math.exp(2) / (math.exp(2) + math.e)) + math.log(2)) / 2
    loss, parts = frame_loss(out, torch.tensor([7, 9]), kind="mil")
    assert loss.item() == pytest.approx((a2v + v2a) / 2) and parts["frame"].item() == pytest.approx(loss.item())
    assert parts["triplet"].item() == parts["consistency"].item() == 0.0
    loss.backward()
    assert att_vis.grad.abs().sum() > 0 and torch.count_nonzero(vis.grad) == 0
    out = {"vis_feat": vis, "aud_feat": aud, "att_feat": aud.clone().requires_grad_()}
    loss, parts = frame_loss(out, torch.tensor([7, 7, 9]), kind="triplet")
    s = 1 / (1 + math.exp(math.sqrt(2)))                                     # att = own audio: d+ = 0, d− = √2
    assert loss.item() == pytest.approx(2 * s * s)
    with pytest.raises(ValueError, match="'mil' or 'triplet'"):
        frame_loss(out, torch.tensor([7, 7, 9]), kind="nope")
    cfg = Stage1Config(method="proposals", proposals=ProposalConfig(warmup_epochs=2, warmup_loss="triplet"))
    batch = {"clip": torch.tensor([7, 7, 9])}
    warm = METHODS["proposals"].loss(cfg, None, 1)(out, batch)[0]
    paper = METHODS["proposals"].loss(cfg, None, 2)(out, batch)[0]
    assert warm.item() == pytest.approx(2 * s * s)
    assert paper.item() == pytest.approx(proposal_loss(out, batch["clip"], cfg.proposals.lam)[0].item())
    assert paper.item() != pytest.approx(warm.item())


def test_best_and_two_non_overlapping_sources():
    boxes = torch.tensor([[[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 1, 1.0]]])
    d = torch.tensor([[0.9, 0.8, 0.5, 0.99]])
    exists = torch.tensor([[True, True, True, False]])
    box, d_on = best_proposal(boxes, d * exists)
    assert box.tolist() == [[0, 0, 10, 10]] and d_on.item() == pytest.approx(0.9)
    two = two_sources(boxes, d, exists)[0]
    assert two.tolist() == [[0, 0, 10, 10], [20, 20, 30, 30]]              # the overlapping 0.8 is skipped
    assert two_sources(boxes[:, :2], d[:, :2], exists[:, :2])[0].tolist() == [[0, 0, 10, 10]]


def test_on_screen_rules():
    d_on, dist = torch.tensor([0.3, 0.1, 0.1, 0.3]), torch.tensor([2.0, 0.5, 2.0, 0.5])
    thr = distance_threshold(torch.tensor([0.4, 0.5, 0.6]), torch.tensor([1.4, 1.5, 1.6]))
    assert thr == pytest.approx(1.0)
    assert on_screen(d_on, dist, thr, rule="d").tolist() == [True, False, False, True]
    assert on_screen(d_on, dist, thr, rule="m").tolist() == [False, True, False, True]
    assert on_screen(d_on, dist, thr).tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="rule"):
        on_screen(d_on, dist, thr, rule="and")


def _model(select=True, k=3):
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=64, visual_width=8, audio_width=8, embed_dim=16, num_clusters=3)
    return ProposalModel(cfg, top_k=k, select=select)


def test_model_outputs_and_gradients():
    model = _model()
    frames, audio = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 40, 32)
    proposals = torch.tensor([[[0, 0, 32, 32], [32, 32, 64, 64], [10, 10, 50, 50], [0, 0, 64, 64]]] * 2,
                             dtype=torch.float32)
    out = model(frames, audio, proposals, torch.tensor([4, 2]))
    assert out["loc_map"].shape == (2, 4, 4) and out["grm"].shape == (2, 64, 64)
    assert out["boxes"].shape == (2, 3, 4) and out["exists"].tolist() == [[True] * 3, [True, True, False]]
    assert torch.allclose(out["vis_feat"].norm(dim=1), torch.ones(2))
    conf = proposal_confidence(out["grm"], proposals, torch.tensor([4, 2]))
    assert out["bag"][0].tolist() == conf[0].topk(3).indices.tolist()       # the GRM's three best
    loss, _ = proposal_loss(out, torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("audio.fc"))
    assert model.att_vis.weight.grad.abs().sum() > 0 and model.box_fc[0].weight.grad.abs().sum() > 0
    only_map = model(frames, audio)
    assert "vis_feat" not in only_map and torch.allclose(only_map["loc_map"].sum((1, 2)), torch.ones(2))


def test_without_selection_the_bag_is_the_sources_own_order():
    model = _model(select=False, k=2)
    proposals = torch.tensor([[[0, 0, 32, 32], [32, 32, 64, 64], [10, 10, 50, 50]]], dtype=torch.float32)
    out = model(torch.randn(1, 3, 64, 64), torch.randn(1, 1, 40, 32), proposals, torch.tensor([3]))
    assert out["bag"].tolist() == [[0, 1]]


def test_warmup_settings_are_checked_with_the_key_named():
    from avdet.config import ConfigError, ProposalConfig
    with pytest.raises(ConfigError, match="warmup_loss must be 'mil' or 'triplet'"):
        ProposalConfig(warmup_loss="senocak").check()
    with pytest.raises(ConfigError, match="warmup_epochs must be >= 0"):
        ProposalConfig(warmup_epochs=-1).check()
