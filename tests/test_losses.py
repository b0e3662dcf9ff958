"""L_NC against a naive loop, the gathered (multi-process) path against one big batch, the joint loss."""
import math

import torch
import torch.nn.functional as F

from avdet.losses import cluster_loss, joint_loss, nce_loss, score_matrix


def _emb(b, c=8, h=3, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(b, c, h, w, generator=g, dtype=torch.float64), dim=1)
    a = F.normalize(torch.randn(b, c, generator=g, dtype=torch.float64), dim=1)
    return v, a


def _naive_nce(v, a, rho):
    b = v.shape[0]
    s = [[max(float(v[i, :, y, x] @ a[j]) for y in range(v.shape[2]) for x in range(v.shape[3])) / rho
          for j in range(b)] for i in range(b)]
    l_a2v = -sum(s[i][i] - math.log(sum(math.exp(s[i][j]) for j in range(b))) for i in range(b)) / b
    l_v2a = -sum(s[i][i] - math.log(sum(math.exp(s[j][i]) for j in range(b))) for i in range(b)) / b
    return (l_a2v + l_v2a) / 2


def test_score_matrix_and_nce_equal_naive():
    v, a = _emb(6)
    rho = torch.tensor(0.3, dtype=torch.float64)
    s = score_matrix(v, a, rho, chunk=4)                     # blocks of 4 frames + a remainder of 2
    assert s.shape == (6, 6)
    assert abs(float(s[2, 5]) - max(float(v[2, :, y, x] @ a[5]) for y in range(3) for x in range(4)) / 0.3) < 1e-12
    assert abs(float(nce_loss(v, a, rho)) - _naive_nce(v, a, 0.3)) < 1e-5
    s_rect = score_matrix(v[:2], a, rho)
    assert s_rect.shape == (2, 6) and torch.allclose(s_rect, s[:2])


def test_gathered_loss_equals_big_batch_with_gradients():
    """Two 'ranks' of 4; each computes its loss against the concatenated global batch; the mean equals the
    single-process loss over 8 and so do the gradients."""
    v0, a0 = _emb(8, seed=1)
    rho = torch.tensor(0.2, dtype=torch.float64)
    v, a = v0.clone().requires_grad_(), a0.clone().requires_grad_()
    big = nce_loss(v, a, rho)
    big.backward()
    vr, ar = v0.clone().requires_grad_(), a0.clone().requires_grad_()
    shards = [(vr[:4], ar[:4]), (vr[4:], ar[4:])]

    def gather_for(rank):
        def gather(t):                                        # what an all_gather with gradient returns
            full = torch.cat([shards[r][0 if t.dim() == 4 else 1] for r in range(2)])
            return full, rank * 4
        return gather
    per_rank = [nce_loss(sv, sa, rho, gather=gather_for(r)) for r, (sv, sa) in enumerate(shards)]
    mean = (per_rank[0] + per_rank[1]) / 2
    assert abs(float(mean.detach()) - float(big.detach())) < 1e-10
    mean.backward()
    assert torch.allclose(vr.grad, v.grad, atol=1e-10) and torch.allclose(ar.grad, a.grad, atol=1e-10)


def test_cluster_and_joint_loss():
    g = torch.Generator().manual_seed(2)
    lv, la = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    y = torch.tensor([0, 2, 1, 1, 0])
    ce = (F.cross_entropy(lv, y) + F.cross_entropy(la, y)) / 2
    assert torch.allclose(cluster_loss(lv, la, y), ce)
    v, a = _emb(5)
    out = {"vis_emb": v.float(), "aud_emb": a.float(), "vis_logits": lv, "aud_logits": la, "rho": torch.tensor(0.07)}
    loss, parts = joint_loss(out, y, 0.3)
    nce = nce_loss(v.float(), a.float(), torch.tensor(0.07))
    assert torch.allclose(loss, 0.3 * nce + 0.7 * ce) and set(parts) == {"loss", "nce", "clust", "rho"}
    assert abs(parts["loss"] - float(loss)) < 1e-6


def _naive_nce_masked(v, a, rho, clip):
    """L_NC by hand, with every other pair of the same clip left out of both denominators."""
    b = v.shape[0]
    s = [[max(float(v[i, :, y, x] @ a[j]) for y in range(v.shape[2]) for x in range(v.shape[3])) / rho
          for j in range(b)] for i in range(b)]
    keep = [[j == i or clip[j] != clip[i] for j in range(b)] for i in range(b)]
    l_a2v = -sum(s[i][i] - math.log(sum(math.exp(s[i][j]) for j in range(b) if keep[i][j])) for i in range(b)) / b
    l_v2a = -sum(s[i][i] - math.log(sum(math.exp(s[j][i]) for j in range(b) if keep[i][j])) for i in range(b)) / b
    return (l_a2v + l_v2a) / 2


def test_same_clip_pairs_are_not_negatives():
    """A batch of 6 where pairs 1 and 4 are frames of one clip (and 2, 3, 5 of another): the loss equals the loss
    computed by hand with the duplicates left out of the denominators, and differs from the unmasked loss."""
    v, a = _emb(6, seed=3)
    rho = torch.tensor(0.25, dtype=torch.float64)
    clip = torch.tensor([10, 11, 12, 12, 11, 12])
    got = float(nce_loss(v, a, rho, clip=clip))
    assert abs(got - _naive_nce_masked(v, a, 0.25, clip.tolist())) < 1e-9
    assert abs(got - float(nce_loss(v, a, rho))) > 1e-3
    # distinct clips: the mask changes nothing
    assert abs(float(nce_loss(v, a, rho, clip=torch.arange(6))) - float(nce_loss(v, a, rho))) < 1e-12


def test_same_clip_mask_spans_the_global_batch():
    """Two 'ranks' of 3 whose duplicate sits on the other rank: the mean of the per-rank losses equals the
    hand-computed masked loss over all 6 pairs."""
    v, a = _emb(6, seed=4)
    rho = torch.tensor(0.3, dtype=torch.float64)
    clip = torch.tensor([1, 2, 3, 4, 1, 5])                    # pair 0 (rank 0) and pair 4 (rank 1): one clip

    def gather_for(rank):
        def gather(t):
            return {4: v, 2: a, 1: clip}[t.dim()], rank * 3       # what all_gather returns
        return gather
    per_rank = [nce_loss(v[r * 3:(r + 1) * 3], a[r * 3:(r + 1) * 3], rho, gather=gather_for(r),
                         clip=clip[r * 3:(r + 1) * 3]) for r in range(2)]
    assert abs(float(sum(per_rank)) / 2 - _naive_nce_masked(v, a, 0.3, clip.tolist())) < 1e-9


def _local_frames_job(rank, world, out_dir):
    """Each rank: L_NC and its gradients with the frames gathered, and with only the audio gathered (the v→a
    denominators summed over ranks by ``column_logsumexp``); unequal batches, a same-clip pair across the ranks."""
    from distributed.cluster.dist import all_gather_with_grad, column_logsumexp
    v_all, a_all = _emb(7, seed=9)
    clip = torch.tensor([1, 2, 3, 4, 1, 5, 2])
    rows = slice(0, 4) if rank == 0 else slice(4, 7)
    rho = torch.tensor(0.25, dtype=torch.float64)
    out = {}
    for name, column_lse in (("gathered", None), ("local", column_logsumexp)):
        v, a = v_all[rows].clone().requires_grad_(), a_all[rows].clone().requires_grad_()
        loss = nce_loss(v, a, rho, gather=all_gather_with_grad, clip=clip[rows], column_lse=column_lse)
        loss.backward()
        out[name] = {"loss": loss.detach(), "v": v.grad, "a": a.grad}
    torch.save(out, f"{out_dir}/rank{rank}.pt")


def test_nce_without_gathering_frames_equals_the_gathered_loss(tmp_path):
    """Two gloo processes: the loss and every gradient of the audio-only path equal the gathered path's, per rank;
    and their mean equals the hand-computed masked loss over all 7 pairs (weighted by batch)."""
    from distributed.cluster.dist import spawn_loopback
    spawn_loopback(_local_frames_job, 2, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r in ranks:
        for key in ("loss", "v", "a"):
            assert torch.allclose(r["local"][key], r["gathered"][key], rtol=0, atol=1e-12), key
    v, a = _emb(7, seed=9)
    both = (4 * float(ranks[0]["local"]["loss"]) + 3 * float(ranks[1]["local"]["loss"])) / 7
    assert abs(both - _naive_nce_masked(v, a, 0.25, [1, 2, 3, 4, 1, 5, 2])) < 1e-9
