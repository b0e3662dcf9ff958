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


# ---------------------------------------------------------------------------------------------------------------
# values that must be errors (issue 15)

def _stage1():
    from distributed.stage1.config import Stage1Config
    return Stage1Config


@pytest.mark.parametrize("override,key", [
    ("train.lr=inf", "train.lr"), ("train.lr=.inf", "train.lr"), ("train.lr=nan", "train.lr"),
    ("sinkhorn.lambda_sk=1e400", "sinkhorn.lambda_sk"), ("train.lr=-.inf", "train.lr"),
])
def test_non_finite_floats_are_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: .*not a finite number"):
        load_config(_stage1(), None, [override])


def test_non_finite_fps_is_an_error():
    with pytest.raises(ConfigError, match=r"^fps: .*not a finite number"):
        load_config(IngestConfig, None, ["fps=inf"])


def test_null_for_a_non_optional_field_is_an_error_not_the_string_none(tmp_path):
    with pytest.raises(ConfigError, match=r"^out_dir: null is not allowed"):
        load_config(IngestConfig, None, ["out_dir=null"])
    (tmp_path / "c.yaml").write_text("out_dir: ~\n")
    with pytest.raises(ConfigError, match=r"^out_dir: null is not allowed"):
        load_config(IngestConfig, tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"^train\.epochs: null"):
        load_config(_stage1(), None, ["train.epochs=null"])
    cfg = load_config(_stage1(), None, ["model.visual_weights=null", "train.relabel_epochs=null"])  # Optional: fine
    assert cfg.model.visual_weights is None and cfg.train.relabel_epochs is None


@pytest.mark.parametrize("cls,override,key", [
    ("stream", "prefetch_batches=-5", "prefetch_batches"),
    ("detector", "fg_iou=7", "fg_iou"),
    ("detector", "fg_iou=0.3", "fg_iou"),                      # below bg_iou (0.5): torchvision's Matcher refuses
    ("detector", "trainable_backbone_layers=-9", "trainable_backbone_layers"),
    ("detector", "trainable_backbone_layers=6", "trainable_backbone_layers"),    # resnet50_fpn: 0..5
    ("audio", "hop_length=0", "hop_length"),
    ("audio", "n_fft=0", "n_fft"),
    ("ingest", "max_duration_s=0", "max_duration_s"),
    ("stream", "seed=-1", "seed"),
    ("stream", "substreams=0", "substreams"),
    ("train", "seed=-1", "seed"),
    ("eval", "picture_score=3", "picture_score"),
])
def test_out_of_range_values_are_errors_naming_the_key(cls, override, key):
    from distributed.stage1.config import Stage1TrainConfig
    from distributed.evaluation.evaluate import EvalConfig
    c = {"stream": StreamConfig, "detector": DetectorConfig, "audio": AudioConfig, "ingest": IngestConfig,
         "train": Stage1TrainConfig, "eval": EvalConfig}[cls]
    with pytest.raises(ConfigError, match=rf"^{key} "):
        load_config(c, None, [override])


def test_trainable_backbone_layers_range_follows_the_backbone():
    cfg = load_config(DetectorConfig, None, ["backbone=mobilenet_v3_fpn", "trainable_backbone_layers=6"])
    assert cfg.trainable_backbone_layers == 6


def test_slurm_ports_and_signal_delay_are_checked():
    from distributed.cluster.slurm import SlurmConfig
    for override, key in [("ray_port=70000", "ray_port"), ("ray_dashboard_port=-1", "ray_dashboard_port"),
                          ("signal_delay_s=-3", "signal_delay_s")]:
        with pytest.raises(ConfigError, match=rf"^{key} "):
            load_config(SlurmConfig, None, [override])


def test_python_yaml_tags_are_config_errors_naming_the_file(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("out_dir: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match=r"config file .*evil\.yaml: line 1.*!!python"):
        load_config(IngestConfig, bad)
    with pytest.raises(ConfigError, match=r"override 'out_dir=!!python/object/apply:os.system \[x\]'"):
        load_config(IngestConfig, None, ["out_dir=!!python/object/apply:os.system [x]"])
    assert not (tmp_path / "pwned").exists()


def test_broken_yaml_file_is_a_config_error_naming_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"config file .*broken\.yaml: line"):
        load_config(IngestConfig, bad)


def test_every_config_dataclass_has_finite_defaults_and_loads():
    """The null and finiteness checks must not reject any default of the project's configs."""
    from data.synthetic.config import SynthConfig
    from distributed.detector.config import DetectorTrainConfig
    from distributed.pipeline import PipelineConfig
    from distributed.pseudo.config import PseudoConfig
    from distributed.cluster.slurm import SlurmConfig
    for c in (PipelineConfig, _stage1(), PseudoConfig, DetectorTrainConfig, IngestConfig, SynthConfig, SlurmConfig):
        load_config(c)


def test_a_non_boolean_stream_switch_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^op_reservation: expected true/false, got 'maybe'"):
        load_config(StreamConfig, None, ["op_reservation=maybe"])
    assert load_config(StreamConfig, None, ["op_reservation=false"]).op_reservation is False


def test_an_idle_wait_beyond_rays_own_task_wait_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^idle_wait_s must be in \[0, 0.1\]"):
        load_config(StreamConfig, None, ["idle_wait_s=0.5"])
    with pytest.raises(ConfigError, match=r"^idle_wait_s must be in \[0, 0.1\]"):
        load_config(StreamConfig, None, ["idle_wait_s=-0.01"])
    assert load_config(StreamConfig, None, ["idle_wait_s=0"]).idle_wait_s == 0
