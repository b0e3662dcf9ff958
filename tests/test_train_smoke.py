"""Single-process stage-1 smoke run: joint loss + Sinkhorn relabelling every epoch on a tiny synthetic set.

4 classes; a frame is a coloured square at a class-dependent corner, its audio a tone at a class-dependent pitch.
"""
import math

import torch

from avdet.audio import LogMel
from avdet.config import AudioConfig, ModelConfig
from avdet.losses import joint_loss
from avdet.model import AVModel
from avdet.sinkhorn import column_marginal, label_histogram, plan_column_sums, sinkhorn_knopp

N, K, SIZE = 64, 4, 64


def _dataset(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % K
    frames = 0.3 * torch.randn(N, 3, SIZE, SIZE, generator=g)
    colours = torch.eye(3)[[0, 1, 2, 0]] * 2.0 + 0.5
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 2)
        frames[i, :, r * 32 + 4:r * 32 + 28, col * 32 + 4:col * 32 + 28] += colours[c][:, None, None]
    cfg = AudioConfig()
    t = torch.arange(cfg.num_samples) / cfg.sample_rate
    freqs = torch.tensor([250.0, 700.0, 1800.0, 4000.0])[y]
    wave = torch.sin(2 * math.pi * freqs[:, None] * t) + 0.05 * torch.randn(N, cfg.num_samples, generator=g)
    audio = LogMel(cfg)(wave)
    audio = (audio - audio.mean()) / audio.std()
    return frames, audio, y


@torch.no_grad()
def _relabel(model, frames, audio):
    model.eval()
    out = model(frames, audio)
    log_p = (out["vis_logits"].log_softmax(1) + out["aud_logits"].log_softmax(1)) / 2   # SeLaVi: product^(λ/2)
    c = column_marginal(K)
    res = sinkhorn_knopp(log_p, 20.0, c, max_iters=500, tol=1e-3)
    model.train()
    return res, log_p, c


def test_stage1_smoke():
    torch.manual_seed(0)
    frames, audio, _ = _dataset()
    model = AVModel(ModelConfig(image_size=SIZE, visual_width=8, audio_width=8, embed_dim=16, num_clusters=K))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    labels = torch.randperm(N) % K                                   # random equipartition to start
    epoch_loss = []
    for _epoch in range(5):
        losses = []
        for idx in torch.randperm(N).split(16):
            loss, parts = joint_loss(model(frames[idx], audio[idx]), labels[idx], lam=0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(parts["nce"])
        epoch_loss.append(sum(losses) / len(losses))
        res, log_p, c = _relabel(model, frames, audio)
        assert res.converged
        assert torch.allclose(plan_column_sums(log_p, 20.0, res), c, rtol=1.1e-3)
        counts = label_histogram(res.labels, K)
        assert torch.all((counts - N / K).abs() <= 4), counts          # argmax labels close to the marginal
        labels = res.labels
    assert epoch_loss[-1] < epoch_loss[0] - 0.1, epoch_loss
