"""Every config the docs and job docstrings point at exists and loads with its job's config class (a user copying a
command from the README must not meet a missing file or a stale key)."""
import re
from pathlib import Path

import pytest
import yaml

from avdet.config import load_config
from data.config import IngestConfig
from data.synthetic.config import SynthConfig
from distributed.cluster.slurm import SlurmConfig
from distributed.detector.config import DetectorTrainConfig
from distributed.evaluation.evaluate import EvalConfig
from distributed.pipeline import PipelineConfig, replaced_settings, resolve
from distributed.pseudo.config import PseudoConfig
from distributed.stage1.config import Stage1Config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "clusters/README.md", "Makefile", "clusters/kuberay/rayjob.yaml", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "jobs").glob("*.py"))]
JOB_CLASS = {"full_vggsound": PipelineConfig, "stage1": Stage1Config, "evaluate": EvalConfig,
             "pseudo_annotate": PseudoConfig, "train_detector": DetectorTrainConfig, "ingest": IngestConfig,
             "make_synthetic": SynthConfig, "launch_slurm": SlurmConfig}
# a config file's job, from its name (configs not named after their job)
NAME_CLASS = {"demo": PipelineConfig, "pipeline_tiny": PipelineConfig, "vggsound": PipelineConfig,
              "vggsound_instruments": PipelineConfig, "audioset_instruments": PipelineConfig,
              "stage1_tiny": Stage1Config, "eval": EvalConfig, "pseudo_tiny": PseudoConfig,
              "detector_tiny": DetectorTrainConfig, "ingest_tiny": IngestConfig, "synthetic_demo": SynthConfig,
              "synthetic_tiny": SynthConfig, "local": SlurmConfig, "gpu_4x8": SlurmConfig}
NOT_JOB_CONFIGS = {"clusters/local/ray_local.yaml", "clusters/ray/aws_gpu.yaml", "clusters/kuberay/rayjob.yaml"}


def _referenced() -> set[str]:
    refs = set()
    for doc in DOCS:
        refs |= set(re.findall(r"clusters/[\w/.-]+\.yaml", (ROOT / doc).read_text()))
    return refs


def test_every_referenced_config_exists():
    missing = sorted(r for r in _referenced() if not (ROOT / r).is_file())
    assert not missing, f"referenced but missing: {missing}"


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "clusters").rglob("*.yaml")))
def test_every_config_loads(path):
    if path in NOT_JOB_CONFIGS:
        assert isinstance(yaml.safe_load((ROOT / path).read_text()), dict)
        return
    cls = NAME_CLASS[Path(path).stem]
    cfg = load_config(cls, ROOT / path)
    if cls is PipelineConfig:              # its stages resolve (paths, K, sizes) without replacing what it sets
        given = cfg if cfg.dataset == "synthetic" else load_config(cls, ROOT / path, ["videos_dir=/v", "csv=/v.csv"])
        assert replaced_settings(given, resolve(given)) == []
    assert cfg is not None


def test_job_docstrings_name_their_own_config_class():
    """``python jobs/<job>.py --config X``: X loads with <job>'s class (a stage-1 yaml is not a pipeline yaml)."""
    for job, cls in JOB_CLASS.items():
        text = (ROOT / "jobs" / f"{job}.py").read_text()
        for path in re.findall(rf"jobs/{job}\.py --(?:config|profile) (clusters/[\w/.-]+\.yaml)", text):
            load_config(cls, ROOT / path)


def test_the_pipeline_names_each_setting_it_replaces():
    given = load_config(PipelineConfig, ROOT / "clusters/local/demo.yaml",
                        ["stage1.out_dir=/elsewhere", "stage1.model.num_clusters=5", "pseudo.batch_size=7"])
    lines = replaced_settings(given, resolve(given))
    assert len(lines) == 2, lines                                   # pseudo.batch_size is the user's to set
    assert lines[0].startswith("stage1.out_dir: '/elsewhere' -> ") and lines[0].endswith("/stage1'")
    assert lines[1] == "stage1.model.num_clusters: 5 -> 9"
    same = load_config(PipelineConfig, ROOT / "clusters/local/demo.yaml",
                       ["workdir=outputs/w", "stage1.out_dir=outputs/w/stage1"])
    assert replaced_settings(same, resolve(same)) == []          # a relative spelling of the derived path


def test_without_a_detector_stage_evaluation_scores_the_self_labels_alone(tmp_path):
    """``stages=[stage1,pseudo,evaluate]`` (a stage-1 study): evaluation has no detector to load unless one is there."""
    def evaluated(stages: str) -> str:
        cfg = load_config(PipelineConfig, ROOT / "clusters/local/demo.yaml", [f"workdir={tmp_path}", f"stages={stages}"])
        return resolve(cfg).evaluate.detector
    assert evaluated("[ingest,stage1,pseudo,detector,evaluate]") == str(tmp_path.resolve() / "detector/detector.pt")
    assert evaluated("[stage1,pseudo,evaluate]") == ""
    (tmp_path / "detector").mkdir()
    (tmp_path / "detector/done.json").write_text("{}")           # a detector trained earlier is evaluated
    assert evaluated("[evaluate]") == str(tmp_path.resolve() / "detector/detector.pt")


@pytest.mark.parametrize("name, k, marginal", [("vggsound_instruments", 39, "uniform"),
                                               ("audioset_instruments", 30, "gaussian"), ("vggsound", 300, "uniform")])
def test_the_papers_headline_configs(name, k, marginal):
    """Paper §4.3: VGGSound instruments K = 39, uniform marginals; AudioSet K = 30, Gaussian marginals; §4.4 /
    Table 6: all of VGGSound with K = 300. K reaches stage 1 and the detector through the pipeline."""
    cfg = resolve(load_config(PipelineConfig, ROOT / f"clusters/ray/{name}.yaml", ["videos_dir=/v", "csv=/v.csv"]))
    assert cfg.num_clusters == cfg.stage1.model.num_clusters == cfg.detector.detector.num_classes == k
    assert cfg.stage1.sinkhorn.marginal == marginal
