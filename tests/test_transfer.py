"""The stage-1 visual trunk exported as a torchvision resnet18 state_dict (avdet.transfer): known answers."""
import pytest
import torch
import torchvision

from avdet.config import DetectorConfig
from avdet.detector import build_detector
from avdet.model import ResNet18
from avdet.transfer import export_visual_trunk, trunk_width


def _trunk(width: int) -> ResNet18:
    torch.manual_seed(width)
    trunk = ResNet18(width, last_stride=1)
    for m in trunk.modules():                 # batch-norm statistics unlike torchvision's defaults
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)
    return trunk.eval()


def _features(net: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = []
    for name in ("layer1", "layer2", "layer3"):          # layer4's stride differs (1 in stage 1), its weights do not
        x = getattr(net, name)(x)
        out.append(x)
    return out


@pytest.mark.parametrize("width", [16, 64])
def test_resnet18_computes_the_trunk_in_its_first_channels(width):
    trunk = _trunk(width)
    state = {"visual." + k: v for k, v in trunk.state_dict().items()}
    state["vis_cls.weight"] = torch.zeros(3, 8 * width)           # the rest of a stage-1 model.pt is ignored
    assert trunk_width(state) == width
    tv = torchvision.models.resnet18(weights=None)
    missing, unexpected = tv.load_state_dict(export_visual_trunk(state), strict=False)
    assert missing == ["fc.weight", "fc.bias"] and not unexpected
    tv.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(_features(trunk, x), _features(tv, x)):
            assert torch.equal(ours, theirs[:, :ours.shape[1]])
            if width < 64:                        # the added channels are live (random init), not dead zeros
                assert theirs[:, ours.shape[1]:].abs().mean() > 0.1
    if width == 64:                               # the torchvision width: a plain copy
        assert all(torch.equal(v, state["visual." + k]) for k, v in export_visual_trunk(state).items())


def test_export_is_seeded_and_leaves_the_global_rng_alone():
    state = {"visual." + k: v for k, v in _trunk(16).state_dict().items()}
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a, b, c = export_visual_trunk(state, seed=1), export_visual_trunk(state, seed=1), export_visual_trunk(state, seed=2)
    assert torch.equal(torch.rand(1), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layer1.0.conv1.weight"], c["layer1.0.conv1.weight"])


def test_bad_trunks_are_refused():
    with pytest.raises(ValueError, match="not an avdet stage-1 model.pt"):
        export_visual_trunk({"conv1.weight": torch.zeros(64, 3, 7, 7)})
    wide = {"visual." + k: v for k, v in ResNet18(96, last_stride=1).state_dict().items()}
    with pytest.raises(ValueError, match="96 wide"):
        export_visual_trunk(wide)
    partial = {k: v for k, v in _trunk(16).state_dict().items() if not k.startswith("layer4")}
    with pytest.raises(ValueError, match="lacks resnet18 tensors"):
        export_visual_trunk({"visual." + k: v for k, v in partial.items()})


def test_detector_backbone_starts_from_the_exported_trunk(tmp_path):
    trunk = _trunk(16)
    torch.save(export_visual_trunk({"visual." + k: v for k, v in trunk.state_dict().items()}), tmp_path / "b.pt")
    model = build_detector(DetectorConfig(backbone="resnet18_fpn", num_classes=3, min_size=64, max_size=64,
                                          backbone_weights=str(tmp_path / "b.pt")))
    body = model.backbone.body
    assert torch.equal(body.layer2[0].conv1.weight[:32, :16], trunk.layer2[0].conv1.weight)
    assert torch.equal(body.layer2[0].bn1.running_var[:32], trunk.layer2[0].bn1.running_var)
    assert all(p.requires_grad for p in body.parameters())           # trainable_backbone_layers 5: all of it
