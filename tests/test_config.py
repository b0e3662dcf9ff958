"""avdet.config: YAML round trip, dotted overrides, and errors that name the offending key."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from avdet.config import (AudioConfig, ConfigError, DetectorConfig, LossConfig, ModelConfig, SelfLabelConfig,
                          SinkhornConfig, load_config, save_config)
from data.config import IngestConfig, StreamConfig


@dataclass
class MethodConfig:
    """A nested composite of the method's sections (what a job config looks like), for the loader's tests."""
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sinkhorn: SinkhornConfig = field(default_factory=SinkhornConfig)
    selflabel: SelfLabelConfig = field(default_factory=SelfLabelConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)


def test_yaml_round_trip(tmp_path):
    cfg = load_config(MethodConfig, overrides=["model.num_clusters=17", "loss.lam=0.25", "audio.n_mels=40"])
    path = save_config(cfg, tmp_path / "cfg.yaml")
    assert load_config(MethodConfig, path) == cfg


@pytest.mark.parametrize("cls", [MethodConfig, IngestConfig, StreamConfig])
def test_defaults_round_trip(tmp_path, cls):
    cfg = load_config(cls)
    assert load_config(cls, save_config(cfg, tmp_path / "c.yaml")) == cfg


def test_dotted_overrides_on_top_of_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  num_clusters: 5\n  embed_dim: 32\nsinkhorn:\n  marginal: gaussian\n")
    cfg = load_config(MethodConfig, path, ["model.num_clusters=9", "detector.backbone_weights=/w.pt"])
    assert cfg.model.num_clusters == 9 and cfg.model.embed_dim == 32
    assert cfg.sinkhorn.marginal == "gaussian" and cfg.detector.backbone_weights == "/w.pt"
    assert isinstance(cfg.model.num_clusters, int)


def test_ingest_overrides():
    cfg = load_config(IngestConfig, overrides=["fps=2.5", "audio.window_s=0.5", "use_ray=false"])
    assert cfg.fps == 2.5 and cfg.audio.num_samples == 8000 and cfg.use_ray is False


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.num_clusterz"):
        load_config(MethodConfig, overrides=["model.num_clusterz=3"])
    path = tmp_path / "c.yaml"
    path.write_text("sinkhorn:\n  lambda_sk: 3\n  bogus_key: 1\n")
    with pytest.raises(ConfigError, match=r"sinkhorn\.bogus_key"):
        load_config(MethodConfig, path)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"model\.num_clusters"):
        load_config(MethodConfig, overrides=["model.num_clusters=many"])
    with pytest.raises(ConfigError, match=r"loss\.lam"):
        load_config(MethodConfig, overrides=["loss.lam=[1, 2]"])


def test_impossible_value_is_named():
    with pytest.raises(ConfigError, match=r"model\.num_clusters"):
        load_config(MethodConfig, overrides=["model.num_clusters=0"])
    with pytest.raises(ConfigError, match=r"max_bad_fraction"):
        load_config(StreamConfig, overrides=["max_bad_fraction=2"])
    with pytest.raises(ConfigError, match=r"audio\.win_length"):
        load_config(IngestConfig, overrides=["audio.win_length=1024"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(MethodConfig, tmp_path / "nope.yaml")
