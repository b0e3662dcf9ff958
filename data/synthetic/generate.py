"""Generate the synthetic benchmark: plan clips, render them in a process pool, write every output file.

Each clip's randomness comes from ``SeedSequence([seed, clip_index])`` alone, so the dataset does not depend on how
clips are spread over processes. ``done.json`` (written last, holding the config) makes a rerun with the same
config a no-op.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from avdet.config import load_config, to_dict
from avdet.fileio import path_under, write_atomic, write_json
from data.artifacts import read_done, write_done
from data.shards import sweep_stale_temps
from data.synthetic import outputs, render, sound
from data.synthetic.catalogue import class_specs
from data.synthetic.config import SynthConfig

log = logging.getLogger(__name__)

DONE = "done.json"
_NOT_CONTENT = ("num_workers",)     # config fields that do not change what is generated
# the extra splits (split -> its count key); numbered in this order after the train/test clips
MULTI_SPLITS = {"test_multi": "num_multi_per_class", "train_multi": "num_multi_train_per_class",
                "test_offscreen": "num_offscreen_per_class"}
TEST_SPLITS = ("test_multi", "test_offscreen")     # the CSV lists these clips as "test" (ingested with the test set)


@dataclass(frozen=True)
class ClipJob:
    """One clip to make."""
    index: int
    video_id: str
    class_index: int
    split: str                      # "train" | "test" | "test_multi" | "train_multi" | "test_offscreen"
    keep_frame: bool                # return its middle frame for the contact sheet
    second: int = -1                # a duet's second sounding class (-1: none)


@dataclass
class ClipResult:
    """What a worker sends back: per frame the visible objects, and optionally one frame for the contact sheet."""
    job: ClipJob
    objects: list[list[tuple[int, bool, tuple[int, int, int, int], int]]]  # per frame: (cls, sounding, box, inst)
    sheet_frame: np.ndarray | None
    offscreen: str | None
    seconds: float


def resolve_backends(cfg: SynthConfig) -> dict[str, str]:
    """Which picture ("emoji"/"shapes") and audio ("fluidsynth"/"numpy") renderers this run uses; warns loudly
    on every fallback. ``backend: fluidsynth`` fails instead of falling back."""
    if cfg.backend == "numpy":
        log.warning("synthetic data: backend=numpy forced: coloured shapes and synthetic harmonic tones "
                    "(no emoji pictures, no FluidSynth instrument recordings)")
        return {"pictures": "shapes", "audio": "numpy"}
    specs = class_specs(cfg.classes)
    has_font = render.emoji_available(cfg.emoji_font, [s.glyph for s in specs])
    has_fluid = sound.fluidsynth_available(cfg.soundfont)
    if cfg.backend == "fluidsynth" and not (has_font and has_fluid):
        raise RuntimeError(f"backend=fluidsynth needs the emoji font {cfg.emoji_font} (ok={has_font}) and "
                           f"pyfluidsynth + soundfont {cfg.soundfont} (ok={has_fluid}); install fonts-noto-color-emoji,"
                           f" fluidsynth, fluid-soundfont-gm, or set backend=numpy")
    if not has_font:
        log.warning("synthetic data: emoji font %s missing or unusable: FALLING BACK to coloured shapes",
                    cfg.emoji_font)
    if not has_fluid:
        log.warning("synthetic data: FluidSynth or soundfont %s missing: FALLING BACK to numpy harmonic tones",
                    cfg.soundfont)
    return {"pictures": "emoji" if has_font else "shapes", "audio": "fluidsynth" if has_fluid else "numpy"}


def plan_jobs(cfg: SynthConfig) -> list[ClipJob]:
    """All clips, class by class (train clips then test clips). Contact-sheet clips: test clips first,
    round-robin over classes, then train clips."""
    jobs, per_class = [], cfg.num_train_per_class + cfg.num_test_per_class
    for c in range(len(cfg.classes)):
        for k in range(per_class):
            i = c * per_class + k
            jobs.append(ClipJob(i, f"syn{i:06d}", c, "train" if k < cfg.num_train_per_class else "test", False))
    order = sorted(jobs, key=lambda j: (j.split != "test", j.index % per_class, j.class_index))
    keep = {j.index for j in order[:cfg.test_sheet_clips]}
    return [ClipJob(j.index, j.video_id, j.class_index, j.split, j.index in keep) for j in jobs] + multi_jobs(cfg)


def multi_jobs(cfg: SynthConfig) -> list[ClipJob]:
    """The multi-source clips, numbered after every other clip (so the others do not change), test duets first, then
    training duets: per class c, ``num_multi_per_class`` (``num_multi_train_per_class``) duets of c with another
    class, the partners taken in turn; then the off-screen test clips (``num_offscreen_per_class`` per class c: c is
    heard, not seen)."""
    C, first = len(cfg.classes), len(cfg.classes) * (cfg.num_train_per_class + cfg.num_test_per_class)
    jobs = []
    for split, key in MULTI_SPLITS.items():
        for c in range(C):
            for m in range(getattr(cfg, key)):
                i = first + len(jobs)
                second = -1 if split == "test_offscreen" else (c + 1 + m % (C - 1)) % C
                jobs.append(ClipJob(i, f"syn{i:06d}", c, split, False, second))
    return jobs


def clip_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (scene, audio) generators for clip ``index``, from (seed, index) only."""
    scene_ss, audio_ss = np.random.SeedSequence([seed, index]).spawn(2)
    return np.random.default_rng(scene_ss), np.random.default_rng(audio_ss)


def build_scene(cfg: SynthConfig, pictures: str, class_index: int, rng: np.random.Generator,
                second: int = -1) -> render.Scene:
    """The clip's scene with the chosen picture backend ("emoji" or "shapes"); ``second`` >= 0: a duet."""
    sprites = [render.class_sprite(s, pictures, cfg.emoji_font) for s in class_specs(cfg.classes)]
    return render.plan_scene(cfg, sprites, class_index, rng, None if second < 0 else second)


def build_audio(cfg: SynthConfig, audio_backend: str, scene: render.Scene, rng: np.random.Generator,
                second: int = -1) -> tuple[np.ndarray, str | None]:
    """The clip's audio, float32 (num_samples,), and the off-screen class name (None when there is none).
    ``second`` >= 0: a duet, the second (visible) instrument mixed at ±``multi_level_db`` and no off-screen one."""
    specs = class_specs(cfg.classes)
    if second >= 0:
        level = float(rng.uniform(-cfg.multi_level_db, cfg.multi_level_db))
        snr_db = float(rng.uniform(cfg.snr_db_min, cfg.snr_db_max))
        return sound.clip_audio(specs[scene.class_index], (specs[second], level), snr_db, cfg.clip_seconds,
                                cfg.sample_rate, audio_backend, cfg.soundfont, rng), None
    visible = {o.class_index for o in scene.objects}
    hidden = [c for c in range(len(specs)) if c not in visible] or [c for c in range(len(specs))
                                                                     if c != scene.class_index]
    offscreen = None
    if hidden and rng.random() < cfg.p_offscreen:
        offscreen = (specs[int(rng.choice(hidden))], float(rng.uniform(cfg.offscreen_db_min, cfg.offscreen_db_max)))
    snr_db = float(rng.uniform(cfg.snr_db_min, cfg.snr_db_max))
    audio = sound.clip_audio(specs[scene.class_index], offscreen, snr_db, cfg.clip_seconds, cfg.sample_rate,
                             audio_backend, cfg.soundfont, rng)
    return audio, (offscreen[0].name if offscreen else None)


def make_clip(cfg: SynthConfig, backends: dict[str, str], job: ClipJob, videos_dir: Path) -> ClipResult:
    """Render one clip, write ``<videos_dir>/<video_id>_000000.mp4`` and return its per-frame annotations."""
    start = time.perf_counter()
    scene_rng, audio_rng = clip_rngs(cfg.seed, job.index)
    scene = build_scene(cfg, backends["pictures"], job.class_index, scene_rng, job.second)
    if job.split == "test_offscreen":           # the sounding instrument is heard, not seen: only the silent ones stay
        scene.objects = [o for o in scene.objects if not o.sounding]
    frames, per_frame = [], []
    for t in range(cfg.num_frames):
        frame, _masks, boxes = render.render_frame(scene, t)
        frames.append(frame)
        per_frame.append([(o.class_index, o.sounding, b, i) for i, (o, b) in enumerate(zip(scene.objects, boxes))
                          if b is not None])
    audio, offscreen = build_audio(cfg, backends["audio"], scene, audio_rng, job.second)
    out = path_under(videos_dir, f"{job.video_id}_000000.mp4", "synthetic clip")
    outputs.write_mp4(out, np.stack(frames), audio, cfg.fps, cfg.sample_rate, cfg.crf)
    sheet = frames[len(frames) // 2] if job.keep_frame else None
    return ClipResult(job, per_frame, sheet, offscreen, time.perf_counter() - start)


def _make_clip_packed(args: tuple) -> ClipResult:
    return make_clip(*args)


def _default_sigterm() -> None:
    """A forked worker inherits the parent's SIGTERM handler — in a Ray driver, Ray's, which prints a stack when the
    pool is closed (``Pool.__exit__`` terminates its workers); the default handler just ends the worker."""
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def worker_pool(processes: int):
    """A process pool (forked where the platform can) whose workers end on SIGTERM without the parent's handler."""
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    return ctx.Pool(processes, initializer=_default_sigterm)


def run_jobs(cfg: SynthConfig, backends: dict[str, str], jobs: list[ClipJob], videos_dir: Path) -> list[ClipResult]:
    """Make every clip, in a Pool of ``cfg.num_workers`` processes (0 = here); results in job order."""
    packed = [(cfg, backends, j, videos_dir) for j in jobs]
    bar = dict(total=len(jobs), desc="synthetic clips", unit="clip", mininterval=1.0)
    if cfg.num_workers == 0:
        return [make_clip(*p) for p in tqdm(packed, **bar)]
    with worker_pool(cfg.num_workers) as pool:
        return list(tqdm(pool.imap(_make_clip_packed, packed, chunksize=4), **bar))


def write_annotations(cfg: SynthConfig, root: Path, results: list[ClipResult]) -> dict[str, int]:
    """vggsound.csv, classes.json, gt_train.json, gt_test.json (and gt_<split>.json of each multi-source split: the
    CSV lists the test duets as "test" under their first class, as VGGSound has one label and two splits, and the
    training duets under split "train_multi"); returns annotation counts."""
    rows = [(r.job.video_id, cfg.classes[r.job.class_index], "test" if r.job.split in TEST_SPLITS else r.job.split)
            for r in results]
    write_atomic(root / "vggsound.csv", outputs.vggsound_csv(rows))
    write_json(root / "classes.json", list(cfg.classes))
    counts = {}
    for split in ("train", "test") + _multi_splits(cfg):
        coco = outputs.CocoBuilder(list(cfg.classes))
        for r in (r for r in results if r.job.split == split):
            for t, objects in enumerate(r.objects):
                coco.add_frame(r.job.index * cfg.num_frames + t, r.job.video_id, t, cfg.fps, cfg.frame_size, objects)
        write_json(root / f"gt_{split}.json", coco.to_dict())
        counts[f"{split}_images"] = len(coco.images)
        counts[f"{split}_annotations"] = len(coco.annotations)
        counts[f"{split}_sounding_annotations"] = sum(a["sounding"] for a in coco.annotations)
    return counts


def write_contact_sheet(cfg: SynthConfig, root: Path, results: list[ClipResult]) -> None:
    """contact_sheet.png: the kept middle frames with their boxes and class names."""
    items = []
    for r in (r for r in results if r.sheet_frame is not None):
        mid = r.objects[cfg.num_frames // 2]
        items.append((r.sheet_frame, [(box, cfg.classes[c], s) for c, s, box, _ in mid]))
    tmp = outputs.atomic_path(root / "contact_sheet.png")
    render.contact_sheet(items).save(tmp, format="PNG")
    tmp.replace(root / "contact_sheet.png")


def _multi_splits(cfg: SynthConfig) -> tuple[str, ...]:
    return tuple(split for split, key in MULTI_SPLITS.items() if getattr(cfg, key))


def _content_config(cfg: SynthConfig) -> dict:
    """The config that decides the content; a multi-source key is left out while it is 0 (so adding the keys did
    not change the record of a dataset without them)."""
    d = to_dict(cfg)
    off = [key for key in MULTI_SPLITS.values() if not getattr(cfg, key)]
    for k in _NOT_CONTENT + tuple(off) + (("multi_level_db",) if not _multi_splits(cfg) else ()):
        d.pop(k, None)
    return d


def is_complete(root: Path, cfg: SynthConfig, backends: dict[str, str]) -> bool:
    """True when ``root`` holds a finished dataset made with the same content config and backends; raises
    ``ArtifactError`` naming the files when such a dataset's recorded files are missing or changed."""
    marker = Path(root) / DONE
    if not marker.is_file():
        return False
    try:
        done = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if done.get("config") != _content_config(cfg) or done.get("backends") != backends:
        return False
    return read_done(root, "synthetic dataset") is not None


def _remove_stale_videos(videos_dir: Path, jobs: list[ClipJob]) -> None:
    wanted = {f"{j.video_id}_000000.mp4" for j in jobs}
    stale = [p for p in videos_dir.glob("syn*_000000.mp4") if p.name not in wanted]
    for p in stale:
        p.unlink()
    if stale:
        log.info("removed %d clips of an earlier, larger synthetic dataset from %s", len(stale), videos_dir)


def generate(cfg: SynthConfig, root: str | Path) -> dict:
    """Write the whole dataset under ``root`` (skipped when already complete); returns the generation report."""
    root = Path(root)
    backends = resolve_backends(cfg)
    if is_complete(root, cfg, backends):
        log.info("synthetic dataset at %s is complete with this config; skipping (delete %s to redo)", root, DONE)
        return json.loads((root / "generation_report.json").read_text())
    (root / DONE).unlink(missing_ok=True)
    videos_dir = root / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    for d in (root, videos_dir):
        sweep_stale_temps(d)            # temporaries of a killed run (logged)
    jobs = plan_jobs(cfg)
    _remove_stale_videos(videos_dir, jobs)
    for split in set(MULTI_SPLITS) - set(_multi_splits(cfg)):
        (root / f"gt_{split}.json").unlink(missing_ok=True)
    log.info("generating %d synthetic clips (%d classes, %s) into %s with %d workers",
             len(jobs), len(cfg.classes), backends, root, cfg.num_workers)
    start = time.perf_counter()
    results = run_jobs(cfg, backends, jobs, videos_dir)
    render_s = time.perf_counter() - start
    counts = write_annotations(cfg, root, results)
    write_contact_sheet(cfg, root, results)
    seconds = time.perf_counter() - start
    report = {"clips": len(results), "train_clips": sum(r.job.split == "train" for r in results),
              "test_clips": sum(r.job.split == "test" for r in results), "frames_per_clip": cfg.num_frames,
              **{f"{split}_clips": sum(r.job.split == split for r in results) for split in _multi_splits(cfg)},
              "objects": sum(len({f[3] for frame in r.objects for f in frame}) for r in results),
              "offscreen_clips": sum(r.offscreen is not None for r in results), **counts,
              "backends": backends, "num_workers": cfg.num_workers, "seconds": round(seconds, 3),
              "render_seconds": round(render_s, 3), "clips_per_s": round(len(results) / max(seconds, 1e-9), 2),
              "mean_clip_seconds_per_worker": round(float(np.mean([r.seconds for r in results])), 4)}
    write_json(root / "generation_report.json", report)
    files = [root / n for n in ("generation_report.json", "vggsound.csv", "classes.json", "gt_train.json",
                                 "gt_test.json", "contact_sheet.png")]
    files += [root / f"gt_{split}.json" for split in _multi_splits(cfg)]
    files += [videos_dir / f"{j.video_id}_000000.mp4" for j in jobs]        # the planned clips: never a temporary
    write_done(root, {"config": _content_config(cfg), "backends": backends},
               [f for f in files if f.is_file()])
    log.info("synthetic dataset done: %d clips in %.1f s (%.1f clips/s)", len(results), seconds,
             report["clips_per_s"])
    return report


def main(argv: list[str] | None = None) -> dict:
    """CLI: ``--config path.yaml --out dir [key=value ...]``; returns the generation report."""
    parser = argparse.ArgumentParser(description="Generate the synthetic VGGSound-shaped instruments benchmark.")
    parser.add_argument("--config", default=None, help="YAML with SynthConfig fields")
    parser.add_argument("--out", required=True, help="dataset root directory")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. num_train_per_class=3")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(SynthConfig, args.config, args.overrides)
    return generate(cfg, args.out)
