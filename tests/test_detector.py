import pytest
import torch
import torchvision

from avdet.config import DetectorConfig
from avdet.detector import build_detector, detector_spec, load_detector, save_detector

SMALL = dict(num_classes=3, min_size=128, max_size=128)


def _batch():
    images = [torch.rand(3, 96, 128), torch.rand(3, 128, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 30.0, 80.0, 100.0]]), "labels": torch.tensor([3])}]
    return images, targets


def test_spec_records_plain_builder_call():
    spec = detector_spec(DetectorConfig(backbone="mobilenet_v3_fpn", bg_iou=0.4, fg_iou=0.6, **SMALL))
    assert spec["builder"] == "torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn"
    kw = spec["kwargs"]
    assert kw["num_classes"] == 4 and kw["weights"] is None and kw["weights_backbone"] is None
    assert kw["box_bg_iou_thresh"] == 0.4 and kw["box_fg_iou_thresh"] == 0.6 and kw["min_size"] == 128


@pytest.mark.parametrize("backbone", ["resnet50_fpn", "mobilenet_v3_fpn"])
def test_builds_both_backbones(backbone):
    model = build_detector(DetectorConfig(backbone=backbone, **SMALL))
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    assert model.roi_heads.proposal_matcher.low_threshold == 0.5
    assert model.transform.min_size == (128,)


def test_mobilenet_forward_backward_and_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = DetectorConfig(backbone="mobilenet_v3_fpn", **SMALL)
    model = build_detector(cfg)
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.roi_heads.parameters())

    model.eval()
    model.roi_heads.score_thresh = 0.0  # keep whatever boxes there are so the comparison is not vacuous
    path = save_detector(model, cfg, tmp_path / "det" / "model.pt")
    assert path.is_file() and not list(path.parent.glob("*.tmp*"))
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"state_dict", "builder", "kwargs"}
    # plain torchvision rebuild, as the module docstring promises
    plain = getattr(torchvision.models.detection, ckpt["builder"].rsplit(".", 1)[1])(**ckpt["kwargs"])
    plain.load_state_dict(ckpt["state_dict"])

    loaded = load_detector(path)
    loaded.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        a, b = model(images), loaded(images)
    assert sum(len(x["boxes"]) for x in a) > 0
    for x, y in zip(a, b):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["scores"], y["scores"])
        assert torch.equal(x["labels"], y["labels"])


def test_local_backbone_weights_are_loaded(tmp_path):
    src = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save(src.state_dict(), tmp_path / "mb.pt")
    cfg = DetectorConfig(backbone="mobilenet_v3_fpn", backbone_weights=str(tmp_path / "mb.pt"),
                         trainable_backbone_layers=3, **SMALL)
    model = build_detector(cfg)
    assert torch.equal(model.backbone.body["0"][0].weight, src.features[0][0].weight)
    assert not model.backbone.body["0"][0].weight.requires_grad
    with pytest.raises(FileNotFoundError):
        build_detector(DetectorConfig(backbone="mobilenet_v3_fpn", backbone_weights=str(tmp_path / "no.pt"), **SMALL))


@pytest.mark.parametrize("layers", [[1, 2, 3, 4], [2, 3, 4]])
def test_resnet18_fpn_round_trips_through_plain_torchvision(tmp_path, layers):
    """The stage-1 trunk's topology as a detector backbone: the checkpoint rebuilds with torchvision alone, by the
    recipe of the module docstring, and detects exactly what the trained model detects — with every ResNet stage
    feeding the FPN, and without layer1's stride-4 map."""
    torch.manual_seed(0)
    cfg = DetectorConfig(backbone="resnet18_fpn", returned_layers=layers, **SMALL)
    model = build_detector(cfg)
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)       # trainable from scratch, not frozen
    assert all(p.requires_grad for p in model.backbone.body.parameters())
    images, targets = _batch()
    model.train()
    sum(model(images, targets).values()).backward()
    model.eval()
    model.roi_heads.score_thresh = 0.0
    path = save_detector(model, cfg, tmp_path / "r18.pt")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["builder"] == "torchvision.models.detection.FasterRCNN"
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    plain = FasterRCNN(resnet_fpn_backbone(**ckpt["backbone"]["kwargs"], norm_layer=torch.nn.BatchNorm2d),
                       rpn_anchor_generator=AnchorGenerator(**ckpt["anchor_generator"]["kwargs"]), **ckpt["kwargs"])
    plain.load_state_dict(ckpt["state_dict"])
    plain.eval().roi_heads.score_thresh = 0.0
    loaded = load_detector(path)
    loaded.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        a, b, c = model(images), plain(images), loaded(images)
    assert sum(len(x["boxes"]) for x in a) > 0
    for x, y, z in zip(a, b, c):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["boxes"], z["boxes"])
        assert torch.equal(x["scores"], y["scores"]) and torch.equal(x["labels"], z["labels"])


def test_returned_layers_choose_the_fpn_maps_and_their_anchors(tmp_path):
    """``returned_layers=[2, 3, 4]``: the FPN's finest map is layer2's (stride 8, 16 x 16 at 128 px), one anchor size
    per map (32, 64, 128, 256 by default, or ``anchor_sizes``), and a checkpoint written before the anchor entry
    existed still loads with torchvision's default anchors."""
    maps = lambda model: [tuple(f.shape[-2:]) for f in model.backbone(torch.rand(1, 3, 128, 128)).values()]  # noqa
    anchors = lambda model: [list(s) for s in model.rpn.anchor_generator.sizes]                      # noqa: E731
    default = build_detector(DetectorConfig(backbone="resnet18_fpn", **SMALL))
    assert maps(default) == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert anchors(default) == [[32], [64], [128], [256], [512]]
    cfg = DetectorConfig(backbone="resnet18_fpn", returned_layers=[2, 3, 4], **SMALL)
    lean = build_detector(cfg)
    assert maps(lean) == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert anchors(lean) == [[32], [64], [128], [256]]
    assert lean.rpn.head.cls_logits.out_channels == 3                              # 1 size x 3 aspect ratios
    sized = build_detector(DetectorConfig(backbone="resnet18_fpn", returned_layers=[2, 3, 4],
                                          anchor_sizes=[24, 48, 96, 192], **SMALL))
    assert anchors(sized) == [[24], [48], [96], [192]]
    ckpt = torch.load(save_detector(default, DetectorConfig(backbone="resnet18_fpn", **SMALL), tmp_path / "d.pt"),
                      weights_only=True)
    del ckpt["anchor_generator"], ckpt["backbone"]["kwargs"]["returned_layers"]    # the format before them
    torch.save(ckpt, tmp_path / "old.pt")
    old = load_detector(tmp_path / "old.pt")
    assert maps(old) == maps(default) and anchors(old) == anchors(default)
    ckpt["anchor_generator"] = {"builder": "os.system", "kwargs": {}}
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="anchor_generator"):
        load_detector(tmp_path / "bad.pt")
    for bad, message in [(dict(returned_layers=[3, 2]), "returned_layers"), (dict(returned_layers=[0, 1]),
                         "returned_layers"), (dict(anchor_sizes=[16, 32]), "one positive side per FPN map"),
                         (dict(backbone="mobilenet_v3_fpn", returned_layers=[2, 3, 4]), "resnet18_fpn settings")]:
        with pytest.raises(ValueError, match=message):
            DetectorConfig(**{"backbone": "resnet18_fpn", **bad}).check()


def test_test_time_proposals_reach_the_box_head_and_the_checkpoint(tmp_path):
    """``rpn_post_nms_top_n_test`` caps the proposals the box head scores per test image (the cost of a resnet FPN's
    inference), in the trained model and in the checkpoint's plain-torchvision rebuild; training keeps its own cap."""
    torch.manual_seed(0)
    cfg = DetectorConfig(backbone="resnet18_fpn", rpn_post_nms_top_n_test=40, rpn_post_nms_top_n_train=300, **SMALL)
    seen: list[int] = []
    hook = lambda module, args, out: seen.append(out.shape[0])      # noqa: E731  (box features: one row per RoI)

    def rois_per_image(model, images) -> list[int]:
        seen.clear()
        handle = model.roi_heads.box_head.register_forward_hook(hook)
        with torch.no_grad():
            model.eval()(images)
        handle.remove()
        return seen
    images, _ = _batch()
    model = build_detector(cfg)
    assert rois_per_image(model, images) == [80]                    # 2 images x 40 proposals
    default = build_detector(DetectorConfig(backbone="resnet18_fpn", **SMALL))
    assert rois_per_image(default, images)[0] > 80                  # torchvision's 1000 (what the NMS leaves)
    assert model.rpn.post_nms_top_n() == 40 and model.train().rpn.post_nms_top_n() == 300
    assert rois_per_image(load_detector(save_detector(model, cfg, tmp_path / "d.pt")), images) == [80]
    with pytest.raises(ValueError, match="rpn_post_nms_top_n_test"):
        DetectorConfig(rpn_post_nms_top_n_test=0).check()


def test_checkpoint_backbone_entry_is_checked(tmp_path):
    cfg = DetectorConfig(backbone="resnet18_fpn", **SMALL)
    path = save_detector(build_detector(cfg), cfg, tmp_path / "r18.pt")
    ckpt = torch.load(path, weights_only=True)
    for key, value, message in [("norm_layer", "torchvision.ops.misc.FrozenBatchNorm2d", "norm_layer"),
                                ("builder", "os.system", "not in torchvision.models.detection")]:
        bad = {**ckpt, "backbone": {**ckpt["backbone"], key: value}}
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=message):
            load_detector(tmp_path / "bad.pt")
    bad = {**ckpt, "backbone": {**ckpt["backbone"], "kwargs": {**ckpt["backbone"]["kwargs"], "weights": "DEFAULT"}}}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="downloadable weights"):
        load_detector(tmp_path / "bad.pt")
