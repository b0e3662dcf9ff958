"""Detector stage: Ray Train (2 DDP workers on CPU, loopback) on toy frames with their true squares as pseudo-boxes;
fault injection + resume from Ray Train's checkpoint; the saved detector rebuilds with plain torchvision."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchvision

from avdet.config import DetectorConfig
from avdet.detector import detect
from data.config import StreamConfig
from distributed.detector.config import DetectorTrainConfig
from data.pseudo_coco import training_rows
from distributed.detector.rows import attach_pseudo
from distributed.detector.train import run_detector_training
from distributed.detector.worker import FAULT_MARKER, lr_schedule
from tests.pseudokit import K, SIZE, make_two_split_shards, write_truth_pseudo


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from distributed.cluster.ray_local import connect_ray
    connect_ray("local", num_cpus=4)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    manifest, truth = make_two_split_shards(root / "shards", n_train=32, n_test=4, per_shard=16)
    write_truth_pseudo(root / "pseudo", truth)
    return root, manifest, truth


def _cfg(root, manifest, **kw) -> DetectorTrainConfig:
    det = DetectorConfig(backbone="mobilenet_v3_fpn", num_classes=99, min_size=SIZE, max_size=SIZE)
    base = dict(pseudo_dir=str(root / "pseudo"), manifest=str(manifest), out_dir=str(root / "det"), detector=det,
                epochs=1, batch_size=4, lr=0.01, warmup_steps=2, num_workers=2, report_every=2,
                stream=StreamConfig(shard_block_rows=8, read_concurrency=1, shuffle_buffer=8))
    return DetectorTrainConfig(**{**base, **kw})


def _load_plain(path):
    """Rebuild a saved detector with torchvision alone: builder + kwargs, strict state_dict."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    builder = getattr(torchvision.models.detection, ckpt["builder"].rsplit(".", 1)[1])
    model = builder(**ckpt["kwargs"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model, ckpt


def test_train_one_epoch_and_reload(ray_local, toy):
    root, manifest, _ = toy
    out = root / "det1"
    summary = run_detector_training(_cfg(root, manifest, out_dir=str(out)))
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0] and math.isfinite(hist[0]["loss"]) and hist[0]["images"] == 32
    assert summary["num_classes"] == K and summary["resumes"] == 0 and (out / "tb").is_dir()
    model, ckpt = _load_plain(out / "detector.pt")
    assert ckpt["kwargs"]["num_classes"] == K + 1 and ckpt["kwargs"]["min_size"] == SIZE
    frames = np.random.default_rng(0).integers(0, 255, (2, SIZE, SIZE, 3), dtype=np.uint8)
    preds = detect(model, frames)
    assert len(preds) == 2 and set(preds[0]) == {"boxes", "scores", "labels"}
    assert preds[0]["boxes"].shape[1:] == (4,) and preds[0]["labels"].dtype == np.int64
    assert run_detector_training(_cfg(root, manifest, out_dir=str(out))) == summary     # complete: skipped


def test_backbone_starts_from_the_stage1_trunk(ray_local, toy):
    """init_from_stage1: the job exports the stage-1 visual trunk and every worker's backbone starts from it (after a
    few steps the weights are still near the trunk's, not near a fresh initialisation)."""
    from avdet.config import ConfigError, ModelConfig
    from avdet.model import AVModel, model_state
    from avdet.transfer import export_visual_trunk

    root, manifest, _ = toy
    torch.manual_seed(3)
    stage1 = model_state(AVModel(ModelConfig(visual_width=8, audio_width=8, num_clusters=K, embed_dim=16)))
    torch.save(stage1, root / "model.pt")
    det = DetectorConfig(backbone="resnet18_fpn", num_classes=99, min_size=SIZE, max_size=SIZE)
    out = root / "det_s1"
    cfg = _cfg(root, manifest, out_dir=str(out), detector=det, init_from_stage1=True,
               stage1_model=str(root / "model.pt"))
    cfg.check()
    run_detector_training(cfg)
    exported = torch.load(out / "backbone_from_stage1.pt", weights_only=True)
    assert all(torch.equal(v, exported[k]) for k, v in export_visual_trunk(stage1, seed=cfg.seed).items())
    saved = (out / "config.yaml").read_text()
    assert "init_from_stage1: true" in saved and "backbone_weights: null" in saved
    trained = torch.load(out / "detector.pt", weights_only=True)["state_dict"]["backbone.body.layer3.0.conv1.weight"]
    trunk = stage1["visual.layer3.0.conv1.weight"]
    torch.manual_seed(0)
    fresh = torchvision.models.resnet18(weights=None).layer3[0].conv1.weight.detach()
    w = trunk.shape
    assert (trained[:w[0], :w[1]] - trunk).norm() < 0.2 * (fresh[:w[0], :w[1]] - trunk).norm()
    with pytest.raises(ConfigError, match="resnet18_fpn"):
        _cfg(root, manifest, init_from_stage1=True, stage1_model="m.pt").check()


@pytest.mark.slow
def test_fault_injection_and_resume(ray_local, toy):
    root, manifest, _ = toy
    out = root / "det2"
    # 32 images / (2 workers x 4) = 4 steps per epoch; rank 0 raises once at step 5 (epoch 1), Ray Train restarts
    # the worker group and it resumes from the epoch-0 checkpoint. max_failures=2, not 1: on an overloaded shared
    # machine a Ray actor occasionally dies on its own and would use up the one allowed restart
    summary = run_detector_training(_cfg(root, manifest, out_dir=str(out), epochs=2, fail_at_step=5,
                                         max_failures=2))
    assert (out / FAULT_MARKER).is_file() and summary["resumes"] >= 1
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1] and all(math.isfinite(h["loss"]) for h in hist)
    # after removing done.json + detector.pt, a longer run continues from Ray Train's latest checkpoint
    (out / "done.json").unlink()
    (out / "detector.pt").unlink()
    again = run_detector_training(_cfg(root, manifest, out_dir=str(out), epochs=3))
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1, 2] and again["resumes"] == summary["resumes"] + 1
    _load_plain(out / "detector.pt")


def test_pseudo_table_and_join(toy, tmp_path):
    root, _, truth = toy
    table, k = training_rows(root / "pseudo" / "pseudo_train.json", max_images=10, seed=1)
    assert k == K and len(table["index"]) == 10 and np.all(np.diff(table["index"]) > 0)
    i0 = int(table["index"][0])
    assert table["box"][0].tolist() == list(map(float, truth[i0][:4])) and table["cls"][0] == truth[i0][4] + 1
    batch = {"frames": np.zeros((3, 4, 4, 3), np.uint8), "index": np.array([i0, 999, int(table["index"][-1])]),
             "label": np.zeros(3, np.int64), "audio": np.zeros((3, 5), np.int16)}
    rows = attach_pseudo(batch, table["index"], table["box"], table["cls"])
    assert rows["index"].tolist() == [i0, int(table["index"][-1])] and rows["box"].shape == (2, 4)
    empty = attach_pseudo(batch, np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert len(empty["index"]) == 0
    with pytest.raises(FileNotFoundError, match="pseudo_annotate"):
        training_rows(tmp_path / "missing.json")


def test_lr_schedule_and_predict_rejects_bad_frames():
    lr_at = lr_schedule(0.1, warmup_steps=10, warmup_factor=0.01, lr_steps=[2], lr_gamma=0.1)
    assert lr_at(0, 0) == pytest.approx(0.001) and lr_at(10, 0) == pytest.approx(0.1)
    assert lr_at(50, 2) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="uint8"):
        detect(torch.nn.Identity(), np.zeros((1, 8, 8, 3), np.float32))


def test_augmented_detection_batch_is_seeded_and_keeps_boxes_in_the_frame():
    """The demo's training path (hflip 0.5, scale jitter [0.75, 1.25]): the same generator seed gives the same
    images and boxes; boxes stay inside the frame; labels are untouched."""
    import torch

    from distributed.detector.worker import to_detection_batch
    batch = {"frames": np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8),
             "box": np.array([[10, 20, 40, 50]] * 4, np.float32), "cls": np.array([1, 2, 3, 1])}
    a = to_detection_batch(batch, "cpu", 0.5, (0.75, 1.25), torch.Generator().manual_seed(1))
    b = to_detection_batch(batch, "cpu", 0.5, (0.75, 1.25), torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(a[1], b[1]))
    boxes = torch.cat([t["boxes"] for t in a[1]])
    assert boxes.min() >= 0 and boxes.max() <= 64 and bool((boxes[:, 2:] > boxes[:, :2]).all())
    assert [int(t["labels"]) for t in a[1]] == [1, 2, 3, 1]
    plain = to_detection_batch(batch, "cpu")
    assert plain[1][0]["boxes"].tolist() == [[10.0, 20.0, 40.0, 50.0]]
    assert any(not torch.equal(p, x) for p, x in zip(plain[0], a[0]))      # something was augmented


def test_stage1_backbone_export_names_what_is_missing(tmp_path):
    from distributed.detector.train import export_stage1_backbone
    with pytest.raises(ValueError, match="needs stage1_model"):
        export_stage1_backbone("", tmp_path, 0)
    with pytest.raises(FileNotFoundError, match="nothing.pt do not exist"):
        export_stage1_backbone(tmp_path / "nothing.pt", tmp_path, 0)
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an avdet stage-1 model.pt"):
        export_stage1_backbone(tmp_path / "other.pt", tmp_path, 0)
    assert not (tmp_path / "backbone_from_stage1.pt").exists()
