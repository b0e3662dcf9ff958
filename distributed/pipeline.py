"""The whole pipeline as one config and one function: (synthetic data) → ingest → stage 1 → pseudo-annotations →
detector → evaluation. Each stage is skipped when its artifact is complete (its ``done.json``), so a re-run — or a
requeued SLURM job — resumes where the last one stopped; but only when it was computed from the same config and the
same inputs (its lineage, :data:`NOT_RESULT_KEYS` and :func:`stage_inputs`): otherwise its old output is moved aside
to ``<dir>.stale-<n>`` and it runs again, and so does every stage after it.

Paths left empty are derived from ``workdir``; values that must agree across stages (audio window, frame size, K)
have one source and are copied into the stages that need them (:func:`resolve`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from avdet.config import ConfigError, require, save_config, to_dict
from avdet.fileio import write_json
from data.artifacts import LINEAGE, flatten, lineage_changes, make_lineage, move_aside, recorded_lineage
from data.config import IngestConfig
from data.synthetic.config import SynthConfig
from distributed.detector.config import DetectorTrainConfig
from distributed.evaluation.evaluate import EvalConfig
from distributed.pseudo.config import PseudoConfig
from distributed.stage1.config import Stage1Config

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """``dataset``: "synthetic" generates the embedded benchmark into ``<workdir>/synthetic`` (the demo);
    "vggsound" ingests ``videos_dir`` + ``csv`` (VGGSound format) and evaluates on ``gt`` when given.
    ``num_clusters`` (K) and ``frame_size`` are the single sources for every stage; ``ray_address`` is used by
    every stage ("local" = a loopback-only Ray on this machine; "auto" = the cluster this job was submitted to).
    ``seed`` is the one seed of the run: stage 1 (initialisation, stream order, equipartition, k-means) and the
    detector (initialisation, stream order, samplers, augmentations); the synthetic data keeps ``synthetic.seed``.
    ``data_dir`` holds ``synthetic/`` and ``shards/`` ("" = ``workdir``): runs with different seeds share them.
    ``stages`` may add "weak_sup" (the paper's weak-sup. baseline, :func:`run_weak_sup`; off by default for time)."""
    workdir: str = "outputs/run"
    data_dir: str = ""
    seed: int = 0
    dataset: str = "vggsound"
    videos_dir: str = ""
    csv: str = ""
    gt: str = ""
    num_clusters: int = 309
    frame_size: int = 224
    ray_address: str = "auto"
    stages: list[str] = field(default_factory=lambda: ["ingest", "stage1", "pseudo", "detector", "evaluate"])
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    detector: DetectorTrainConfig = field(default_factory=DetectorTrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    def check(self) -> None:
        require(self.dataset in ("synthetic", "vggsound"), "dataset", "must be 'synthetic' or 'vggsound'")
        require(self.num_clusters >= 1, "num_clusters", "must be >= 1 (K pseudo-classes)")
        require(self.frame_size >= 32, "frame_size", "must be >= 32")
        require(self.seed >= 0, "seed", "must be >= 0")
        bad = [s for s in self.stages if s not in STAGES]
        require(not bad, "stages", f"has unknown stages {bad}; known: {list(STAGES)}")


STAGES = ("ingest", "stage1", "pseudo", "detector", "weak_sup", "evaluate")   # weak_sup: opt-in (not a default)


def git_commit() -> str:
    """The short commit of this checkout ("unknown" outside git), for result files that say what made them."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"

# Config keys (dotted, per stage) that do not change a stage's results, left out of its lineage: where it runs, how
# often it logs, fault-injection and restart knobs, and the paths of its inputs and output (what the inputs *hold*
# is in the lineage as sha256s, so a moved workdir does not re-run anything).
NOT_RESULT_KEYS: dict[str, tuple[str, ...]] = {
    "ingest": ("ray_address", "out_dir", "videos_dir", "csv", "concurrency", "use_ray"),
    "stage1": ("ray_address", "out_dir", "manifest", "train.report_every", "train.max_failures",
               "train.fail_at_step"),
    "pseudo": ("ray_address", "out_dir", "manifest", "stage1_dir"),
    "detector": ("ray_address", "out_dir", "manifest", "pseudo_dir", "stage1_model", "report_every", "max_failures",
                 "fail_at_step"),
    "evaluate": ("ray_address", "out_dir", "manifest", "gt", "pseudo_train", "pseudo_test", "heatmaps", "detector",
                 "detector_history", "stage1_done", "k_sweep_json", "weak_sup_results", "onscreen", "gt_offscreen"),
}


def stage_inputs(cfg: PipelineConfig, stage: str) -> dict[str, str]:
    """{name: file} whose sha256 a stage's lineage records: the shard manifest and the upstream stages'
    ``done.json`` (each lists the sha256 of its stage's artifacts, so it stands for all of them), and for evaluation
    the ground truth and the optional Table-4 and weak-sup. results it prints (``None`` while they do not exist); for
    ingest the CSV (and the synthetic dataset's ``done.json``) — not every video, which would cost too much at
    VGGSound scale. ``cfg`` resolved."""
    w = Path(cfg.workdir)
    if stage == "ingest":
        syn = {"synthetic/done.json": str(Path(cfg.data_dir or cfg.workdir) / "synthetic" / "done.json")}
        return {"csv": cfg.ingest.csv, **(syn if cfg.dataset == "synthetic" else {})}
    manifest = {"shards/manifest.json": cfg.stage1.manifest}
    done = {s: str(w / d / "done.json") for s, d in (("stage1", "stage1"), ("pseudo", "pseudo"),
                                                      ("detector", "detector"))}
    return {"stage1": manifest,
            "pseudo": {**manifest, "stage1/done.json": done["stage1"]},
            "detector": {**manifest, "pseudo/done.json": done["pseudo"]},
            "evaluate": {**manifest, "gt": cfg.gt, **{f"{s}/done.json": p for s, p in done.items()},
                         "ksweep.json": cfg.evaluate.k_sweep_json,
                         "weak_sup/results.json": cfg.evaluate.weak_sup_results,
                         "gt_test_offscreen.json": cfg.evaluate.gt_offscreen}
            }[stage]


def stage_lineage(cfg: PipelineConfig, stage: str) -> dict:
    """What ``stage`` would be computed from now: its config (minus :data:`NOT_RESULT_KEYS`) and its inputs'
    sha256s. Call it right before the stage runs (the upstream stages' records must be final)."""
    return make_lineage(to_dict(getattr(cfg, stage)), stage_inputs(cfg, stage), NOT_RESULT_KEYS[stage])


def stage_defaults(cfg: PipelineConfig, stage: str) -> dict:
    """Flat {key: default} of ``stage``'s config class: a setting added to the code after an output was written
    counts as unchanged at its default (:func:`data.artifacts.lineage_changes`)."""
    return flatten(to_dict(type(getattr(cfg, stage))()))


def prepare_stage(stage: str, out: str | Path, lineage: dict, rerun: list[str],
                  defaults: dict | None = None) -> list[str]:
    """Before ``stage`` runs into ``out``: when ``out`` holds output (finished or not) of another config or other
    inputs, move it aside to ``<out>.stale-<n>`` and log why (so nothing of it — ``done.json``, Ray Train
    checkpoints, label tables — is reused); then record ``lineage`` in ``out/lineage.json``, which the stage's
    ``done.json`` copies. ``rerun`` names this stage and the ones after it (for the log). Returns the reasons."""
    out = Path(out)
    why: list[str] = []
    if out.is_dir() and any(out.iterdir()):
        why = lineage_changes(recorded_lineage(out), lineage, defaults)
        if why:
            dest = move_aside(out)
            log.warning("%s: %s; re-running %s (the later ones as their inputs change; the old output was moved "
                        "to %s)", stage, "; ".join(why), ", ".join(rerun), dest)
    out.mkdir(parents=True, exist_ok=True)
    if recorded_lineage(out) != lineage:
        write_json(out / LINEAGE, lineage)
    return why


def missing_vggsound_message(cfg: PipelineConfig) -> str:
    return (f"dataset=vggsound needs the clips and the CSV: set videos_dir=<folder of <youtube_id>_<start>.mp4> and "
            f"csv=<vggsound.csv> (got videos_dir={cfg.videos_dir!r}, csv={cfg.csv!r}); optionally gt=<COCO json> "
            f"for evaluation. To try the pipeline without VGGSound run `make demo` (dataset=synthetic, "
            f"clusters/local/demo.yaml).")


def pipeline_inputs(cfg: PipelineConfig) -> dict[str, str]:
    """{key: path} the pipeline reads: nothing for the synthetic benchmark (it is generated); VGGSound needs its
    clips, CSV and (when given) ground truth."""
    if cfg.dataset == "synthetic":
        return {}
    return {"videos_dir": cfg.videos_dir, "csv": cfg.csv, **({"gt": cfg.gt} if cfg.gt else {})}


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def _same_path(a, b) -> bool:
    """``a`` is a relative spelling of the absolute path ``b`` (resolve() makes the paths it derives absolute)."""
    return isinstance(a, str) and isinstance(b, str) and bool(a) and Path(b).is_absolute() and \
        str(Path(a).resolve()) == b


def replaced_settings(given, resolved, prefix: str = "") -> list[str]:
    """Every value the user set (differs from its field's default) that :func:`resolve` replaced, as
    ``"key: given -> resolved"`` lines; nested configs are walked."""
    out = []
    for f in dataclasses.fields(given):
        a, b = getattr(given, f.name), getattr(resolved, f.name)
        if dataclasses.is_dataclass(a):
            out += replaced_settings(a, b, f"{prefix}{f.name}.")
        elif a != b and a != _default(f) and not _same_path(a, b):
            out.append(f"{prefix}{f.name}: {a!r} -> {b!r}")
    return out


def _evaluated_detector(cfg: PipelineConfig, det: str) -> str:
    """The detector evaluation scores: this pipeline's, when it trains one (``stages`` has "detector") or one is
    there (its ``done.json``); "" otherwise — ``stages=[stage1,pseudo,evaluate]`` reports the self-label figures."""
    has = "detector" in cfg.stages or (Path(det) / "done.json").exists()
    return str(Path(det) / "detector.pt") if has else ""


def resolve(cfg: PipelineConfig) -> PipelineConfig:
    """Fill derived paths and shared values into every stage's config; raises ConfigError when inputs are missing."""
    w = Path(cfg.workdir).resolve()
    d = Path(cfg.data_dir).resolve() if cfg.data_dir else w
    videos_dir, csv, gt = cfg.videos_dir, cfg.csv, cfg.gt
    if cfg.dataset == "synthetic":
        syn = d / "synthetic"
        videos_dir, csv, gt = str(syn / "videos"), str(syn / "vggsound.csv"), str(syn / "gt_test.json")
    elif not (videos_dir and csv):
        raise ConfigError(missing_vggsound_message(cfg))
    shards = str(d / "shards")
    s1, pseudo, det, ev = (str(w / n) for n in ("stage1", "pseudo", "detector", "report"))
    manifest = str(Path(shards) / "manifest.json")
    r = dataclasses.replace
    audio = cfg.stage1.audio
    model = r(cfg.stage1.model, num_clusters=cfg.num_clusters, image_size=cfg.frame_size)
    return r(
        cfg,
        videos_dir=videos_dir, csv=csv, gt=gt,
        synthetic=r(cfg.synthetic, frame_size=max(cfg.synthetic.frame_size, cfg.frame_size)),
        ingest=r(cfg.ingest, videos_dir=videos_dir, csv=csv, out_dir=shards, frame_size=cfg.frame_size, audio=audio,
                 ray_address=cfg.ray_address),
        stage1=r(cfg.stage1, manifest=manifest, out_dir=s1, model=model, ray_address=cfg.ray_address,
                 train=r(cfg.stage1.train, seed=cfg.seed), stream=r(cfg.stage1.stream, seed=cfg.seed)),
        pseudo=r(cfg.pseudo, stage1_dir=s1, manifest=manifest, out_dir=pseudo, ray_address=cfg.ray_address),
        detector=r(cfg.detector, pseudo_dir=pseudo, manifest=manifest, out_dir=det, ray_address=cfg.ray_address,
                   stage1_model=str(Path(s1) / "model.pt"),
                   detector=r(cfg.detector.detector, num_classes=cfg.num_clusters), seed=cfg.seed,
                   stream=r(cfg.detector.stream, seed=cfg.seed)),
        evaluate=r(cfg.evaluate, manifest=manifest, gt=gt, pseudo_train=str(Path(pseudo) / "pseudo_train.json"),
                   pseudo_test=str(Path(pseudo) / "pseudo_test.json"),
                   heatmaps=str(Path(pseudo) / "heatmaps_test.npz"), detector=_evaluated_detector(cfg, det),
                   stage1_done=str(Path(s1) / "done.json"), out_dir=ev, dataset=cfg.dataset,
                   k_sweep_json=cfg.evaluate.k_sweep_json or str(w / "ksweep" / "ksweep.json"),
                   weak_sup_results=cfg.evaluate.weak_sup_results or str(w / "weak_sup" / "report" / "results.json"),
                   onscreen=str(Path(pseudo) / "onscreen_test.npz"),
                   gt_offscreen=str(Path(gt).with_name("gt_test_offscreen.json")) if cfg.dataset == "synthetic"
                   else cfg.evaluate.gt_offscreen,
                   ray_address=cfg.ray_address),
    )


class Observer:
    """What the pipeline tells whoever watches it (``jobs/console.py`` draws it for a person). This default logs
    one line per stage start and end and lets Ray forward its workers' output to the driver (``quiet`` False)."""
    quiet = False

    def stage_started(self, name: str, out_dir: str | None) -> None:
        log.info("=== %s ===", name)

    def stage_finished(self, name: str, seconds: float, result: dict) -> None:
        log.info("=== %s finished in %.1f s ===", name, seconds)


def stage_dirs(cfg: PipelineConfig, syn_dir: Path) -> dict[str, str]:
    """Where each step writes (``cfg``: resolved); a long stage's ``progress.json`` is there."""
    w = Path(cfg.workdir)
    return {"synthetic": str(syn_dir), "ingest": cfg.ingest.out_dir, "stage1": cfg.stage1.out_dir,
            "pseudo": cfg.pseudo.out_dir, "detector": cfg.detector.out_dir, "weak_sup": str(w / "weak_sup"),
            "evaluate": cfg.evaluate.out_dir, "evaluate_multi": str(w / "report_multi"),
            "proposals": str(Path(cfg.stage1.manifest).parent / "proposals" / cfg.stage1.proposals.set)}


def run_pipeline(cfg: PipelineConfig, observer: Observer | None = None) -> dict:
    """Run every stage in ``cfg.stages`` in order (skipping complete ones). Returns {stage: summary} plus
    per-stage wall times in ``timings_s``; writes ``<workdir>/pipeline.json``. ``observer`` (default
    :class:`Observer`) hears of every stage's start and end; a ``quiet`` one keeps the Ray workers' output out of
    this process's console (it stays in Ray's session logs)."""
    from data.ingest import ingest
    from data.synthetic.generate import generate
    from distributed.detector.train import run_detector_training
    from distributed.evaluation.evaluate import run_evaluation
    from distributed.pseudo.annotate import run_pseudo
    from distributed.stage1.job import run_stage1

    given, cfg = cfg, resolve(cfg)
    for line in replaced_settings(given, cfg):
        log.warning("pipeline: %s (the pipeline derives this from workdir, frame_size, num_clusters, ray_address "
                    "and dataset; set those instead, or run the stage's own job)", line)
    w = Path(cfg.workdir)
    w.mkdir(parents=True, exist_ok=True)
    save_config(cfg, w / "config.yaml")
    syn_dir = Path(cfg.data_dir or cfg.workdir) / "synthetic"
    steps = [("synthetic", lambda: generate(cfg.synthetic, syn_dir))] if cfg.dataset == "synthetic" else []
    steps += [("ingest", lambda: _ingest(ingest, cfg.ingest)), ("proposals", lambda: _proposals(cfg)),
              ("stage1", lambda: run_stage1(cfg.stage1)),
              ("pseudo", lambda: run_pseudo(cfg.pseudo)), ("detector", lambda: run_detector_training(cfg.detector)),
              ("weak_sup", lambda: run_weak_sup(cfg)),
              ("evaluate", lambda: run_evaluation(cfg.evaluate) if cfg.gt else {"skipped": "no ground truth (gt)"})]
    if cfg.dataset == "synthetic" and cfg.synthetic.num_multi_per_class:
        steps.append(("evaluate_multi", lambda: run_evaluation(multi_source_eval(cfg, syn_dir))))
    observer = observer or Observer()
    from distributed.cluster.ray_local import connect_ray, train_state_api
    if cfg.ray_address == "local":
        connect_ray("local", num_cpus=local_cpus(cfg), log_to_driver=not observer.quiet, **train_state_api())
    elif observer.quiet:
        connect_ray(cfg.ray_address, log_to_driver=False)
    dirs = stage_dirs(cfg, syn_dir)
    results: dict = {"timings_s": {}}
    for name, step in steps:
        if name not in ("synthetic", "evaluate_multi", "proposals") and name not in cfg.stages or \
                name == "evaluate_multi" and "evaluate" not in cfg.stages or \
                name == "proposals" and (cfg.stage1.method != "proposals" or "stage1" not in cfg.stages):
            continue
        t0 = time.perf_counter()
        observer.stage_started(name, dirs.get(name))
        if name in NOT_RESULT_KEYS and (name != "evaluate" or cfg.gt):
            later = [s for s in cfg.stages if STAGES.index(s) >= STAGES.index(name)]
            prepare_stage(name, getattr(cfg, name).out_dir, stage_lineage(cfg, name), later,
                          stage_defaults(cfg, name))
        results[name] = step()
        results["timings_s"][name] = round(time.perf_counter() - t0, 1)
        observer.stage_finished(name, results["timings_s"][name], results[name])
        write_json(w / "pipeline.json", results, default=str)
    return results


def weak_sup_configs(cfg: PipelineConfig) -> tuple[DetectorTrainConfig, EvalConfig]:
    """The weak-sup. detector (the same job and budget as the main one, trained on ``<workdir>/weak_sup/pseudo``)
    and its evaluation. Its pseudo-annotations carry the true classes, so the evaluation's Hungarian matching of
    pseudo-class against true class is the identity mapping. ``cfg``: resolved."""
    root = Path(cfg.workdir).resolve() / "weak_sup"
    pseudo = root / "pseudo"
    det = dataclasses.replace(cfg.detector, pseudo_dir=str(pseudo), out_dir=str(root / "detector"))
    ev = dataclasses.replace(cfg.evaluate, pseudo_train=str(pseudo / "pseudo_train.json"),
                             pseudo_test=str(pseudo / "pseudo_test.json"), heatmaps="", stage1_done="",
                             detector=str(root / "detector" / "detector.pt"), out_dir=str(root / "report"),
                             dataset=f"{cfg.dataset} (weak sup.)", selective_search_boxes=0, k_sweep_json="",
                             weak_sup_results="")
    return det, ev


def run_weak_sup(cfg: PipelineConfig) -> dict:
    """The paper's "Ours - weak sup." (Table 1): the self-boxes with the TRUE video labels
    (:func:`data.pseudo_coco.true_label_document`) train the same detector, evaluated with the identity class
    mapping; the main evaluation shows its mAP in Table 1 (``evaluate.weak_sup_results``). ``cfg``: resolved."""
    from data.shards import read_manifest
    from distributed.detector.train import run_detector_training
    from distributed.evaluation.evaluate import run_evaluation
    from data.pseudo_coco import true_label_document

    det, ev = weak_sup_configs(cfg)
    classes = read_manifest(cfg.detector.manifest).classes
    Path(det.pseudo_dir).mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        target = Path(det.pseudo_dir) / f"pseudo_{split}.json"
        if not target.is_file():
            doc = json.loads((Path(cfg.pseudo.out_dir) / f"pseudo_{split}.json").read_text())
            write_json(target, true_label_document(doc, classes))
    trained = run_detector_training(det)
    return {"detector": trained, "evaluate": run_evaluation(ev) if cfg.gt else {"skipped": "no ground truth (gt)"}}


def multi_source_eval(cfg: PipelineConfig, syn_dir: Path) -> EvalConfig:
    """The evaluation of the synthetic multi-source split (duets, ``gt_test_multi.json``; its clips are ingested as
    test clips) under ``<workdir>/report_multi``: the class-aware protocols (Table 2b) score its two-source frames."""
    return dataclasses.replace(cfg.evaluate, gt=str(Path(syn_dir).resolve() / "gt_test_multi.json"),
                               out_dir=str(Path(cfg.workdir).resolve() / "report_multi"),
                               dataset=f"{cfg.dataset} (multi-source)", k_sweep_json="")


def local_cpus(cfg: PipelineConfig) -> int:
    """Logical CPUs for the pipeline's local Ray: the largest stage's workers plus its read tasks. Logical slots,
    not cores — the stages time-share this machine's cores, but none may starve its own readers."""
    import os

    read = cfg.stage1.stream.read_concurrency
    need = max(cfg.ingest.concurrency,
               cfg.stage1.train.num_workers + read,
               int(cfg.pseudo.num_actors * cfg.pseudo.actor_cpus + 0.999) + read,
               int(cfg.detector.num_workers * cfg.detector.cpus_per_worker + 0.999) + read)
    return max(os.cpu_count() or 1, need)


def _proposals(cfg: PipelineConfig) -> dict:
    """``stage1.method=proposals``: the proposal set ``stage1.proposals.set`` for every shard of the manifest
    (computed once, beside the shards; a re-run computes only what is missing)."""
    from data.proposals import ProposalSettings
    from data.shards import read_manifest
    from distributed.proposals.job import ProposalsConfig, run_proposals
    splits = sorted({s.split for s in read_manifest(cfg.stage1.manifest).shards})
    return run_proposals(ProposalsConfig(manifest=cfg.stage1.manifest, splits=splits, ray_address=cfg.ray_address,
                                         settings=ProposalSettings.from_name(cfg.stage1.proposals.set)))


def _ingest(ingest_fn, cfg: IngestConfig) -> dict:
    done = Path(cfg.out_dir) / "manifest.json"
    report = Path(cfg.out_dir) / "ingest_report.json"
    if done.is_file() and report.is_file():
        from data.shards import read_manifest
        m = read_manifest(done)
        missing = [s.path for s in m.shards if not m.shard_path(s).is_file()]
        if missing:                 # presence only: hashing every shard on each re-run costs too much at scale;
            raise FileNotFoundError(    # data.shards.verify_manifest checks the sha256s when asked
                f"ingest: {done} lists {len(missing)} shards that are missing (first: {missing[:3]}); restore them "
                f"or delete {done} to re-ingest (finished shards are kept and skipped)")
        log.info("ingest: %s exists with all %d shards; skipping (delete it to re-ingest)", done, len(m.shards))
        return json.loads(report.read_text())
    if cfg.use_ray:
        from distributed.cluster.ray_local import connect_ray
        connect_ray(cfg.ray_address, num_cpus=max(cfg.concurrency, os.cpu_count() or 1))
    return ingest_fn(cfg)

