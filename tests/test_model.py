"""AVModel: output shapes per frame size, the heatmap and scores, local weight loading."""
import logging

import pytest
import torch

from avdet.config import ModelConfig
from avdet.model import AVModel, ResNet18


@pytest.mark.parametrize("size,stride,grid", [(64, 16, 4), (112, 16, 7), (128, 16, 8), (128, 8, 16), (112, 8, 14)])
def test_output_shapes(size, stride, grid):
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=size, visual_width=8, audio_width=4, embed_dim=16, num_clusters=5,
                      visual_stride=stride)
    model = AVModel(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size), torch.randn(2, 1, 64, 101))
    assert out["vis_emb"].shape == (2, 16, grid, grid) and out["aud_emb"].shape == (2, 16)
    assert out["vis_logits"].shape == out["aud_logits"].shape == (2, 5)
    assert torch.allclose(out["vis_emb"].norm(dim=1), torch.ones(2, grid, grid), atol=1e-5)
    assert torch.allclose(out["aud_emb"].norm(dim=1), torch.ones(2), atol=1e-5)
    assert abs(float(out["rho"]) - 0.07) < 1e-6


def test_heatmap_and_scores_are_dot_products_over_rho():
    torch.manual_seed(1)
    model = AVModel(ModelConfig(image_size=64, visual_width=4, audio_width=4, embed_dim=8, num_clusters=3))
    with torch.no_grad():
        model.log_rho.fill_(torch.tensor(0.5).log())
        out = model(torch.randn(3, 3, 64, 64), torch.randn(3, 1, 64, 101))
        h = model.heatmap(out["vis_emb"], out["aud_emb"])
        s = model.scores(out["vis_emb"], out["aud_emb"])
    v, a = out["vis_emb"], out["aud_emb"]
    assert h.shape == (3, 4, 4)
    assert abs(float(h[1, 2, 3]) - float(v[1, :, 2, 3] @ a[1]) / 0.5) < 1e-5
    assert abs(float(s[0, 2]) - float((v[0] * a[2][:, None, None]).sum(0).max()) / 0.5) < 1e-5
    assert torch.allclose(torch.diagonal(s), h.flatten(1).amax(1), atol=1e-6)


def test_weights_round_trip(tmp_path, caplog):
    torch.manual_seed(2)
    src = AVModel(ModelConfig(image_size=64, visual_width=4, audio_width=4, embed_dim=8, num_clusters=3))
    vis_state = dict(src.visual.state_dict(), **{"fc.weight": torch.zeros(2, 2)})   # like torchvision's resnet18
    torch.save(vis_state, tmp_path / "v.pt")
    torch.save({"state_dict": src.audio.state_dict()}, tmp_path / "a.pt")
    with caplog.at_level(logging.WARNING, logger="avdet.model"):
        dst = AVModel(ModelConfig(image_size=64, visual_width=4, audio_width=4, embed_dim=8, num_clusters=3,
                                  visual_weights=str(tmp_path / "v.pt"), audio_weights=str(tmp_path / "a.pt")))
    assert "fc.weight" in caplog.text
    for name, t in src.visual.state_dict().items():
        assert torch.equal(dst.visual.state_dict()[name], t), name
    for name, t in src.audio.state_dict().items():
        assert torch.equal(dst.audio.state_dict()[name], t), name
    with pytest.raises(FileNotFoundError):
        AVModel(ModelConfig(visual_width=4, audio_width=4, visual_weights=str(tmp_path / "missing.pt")))


def test_stride_8_takes_the_same_weights():
    """A stride is not a weight: a stride-16 state_dict loads strictly into a stride-8 model, which then sees the
    same layer1-2 features and a 2x finer map."""
    torch.manual_seed(4)
    src = AVModel(ModelConfig(visual_width=4, audio_width=4, embed_dim=8, num_clusters=3))
    dst = AVModel(ModelConfig(visual_width=4, audio_width=4, embed_dim=8, num_clusters=3, visual_stride=8))
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        early = lambda m: m.visual.layer2(m.visual.layer1(m.visual.maxpool(m.visual.relu(m.visual.bn1(m.visual.conv1(x))))))  # noqa: E731
        assert torch.equal(early(src.eval()), early(dst.eval()))
        assert src.visual(x).shape[-1] == 4 and dst.visual(x).shape[-1] == 8
    with pytest.raises(Exception, match="visual_stride"):
        ModelConfig(visual_stride=4).check()


def test_rgb_weights_load_into_audio_conv1(tmp_path):
    rgb = ResNet18(4, in_channels=3)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    model = AVModel(ModelConfig(image_size=64, visual_width=4, audio_width=4, embed_dim=8, num_clusters=3,
                                audio_weights=str(tmp_path / "rgb.pt")))
    assert torch.allclose(model.audio.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))


def test_reflect_padding_removes_the_border_signature():
    """On a constant image a zero-padded trunk's map differs between border and centre (the positional signature
    the max can latch onto); with visual_padding="reflect" every location is the same. Keys are unchanged."""
    cfg = dict(image_size=64, visual_width=8, audio_width=8, embed_dim=16, num_clusters=3)
    zeros, reflect = AVModel(ModelConfig(**cfg)).eval(), AVModel(ModelConfig(**cfg, visual_padding="reflect")).eval()
    reflect.load_state_dict(zeros.state_dict())
    flat = torch.ones(1, 3, 64, 64)
    with torch.no_grad():
        spread = {name: float(m.visual(flat).std(dim=(2, 3)).max()) for name, m in (("zeros", zeros),
                                                                                    ("reflect", reflect))}
    assert spread["reflect"] < 1e-4 < spread["zeros"], spread
    with pytest.raises(Exception, match="visual_padding"):
        ModelConfig(**cfg, visual_padding="circular").check()
