"""Ingest: a folder of clips + a VGGSound CSV -> WebDataset shards + manifest + ingest_report.json.

Runs as a Ray Data job (:func:`ingest`): the CSV is cut into fixed groups of videos (:func:`plan_groups`), each group
becomes one shard written by one Ray task, so the shards do not depend on scheduling and a rerun skips every group
whose shard is already finished. :func:`ingest_local` does the same serially in-process (tests, tiny jobs).
Unusable videos are skipped and listed with their reason in ``ingest_report.json``.
"""
from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from avdet.config import to_dict
from avdet.fileio import UnsafePathError, safe_name
from data.config import IngestConfig
from data.schema import AUDIO_EXT, MEL_EXT, DecodeError, SampleMeta, decode_audio, encode_mel, encode_sample, to_pcm16
from data.shards import (ShardInfo, ShardWriter, iter_tar_groups, read_manifest, sweep_stale_temps, write_atomic,
                         write_manifest)
from data.video import VideoError, audio_window, decode_clip, find_video

log = logging.getLogger(__name__)

REPORT_NAME = "ingest_report.json"


@dataclass
class CsvRow:
    youtube_id: str
    start: int
    label: str | None
    split: str


def read_csv(path: str | Path) -> tuple[list[CsvRow], list[dict]]:
    """(rows sorted by (youtube_id, start), de-duplicated; rejected lines as report records)."""
    rows: dict[tuple[str, int], CsvRow] = {}
    rejected = []
    with open(path, newline="") as f:
        for lineno, rec in enumerate(csv.reader(f), start=1):
            if not rec or all(not c.strip() for c in rec):
                continue
            try:
                yid, start, label, split = (c.strip() for c in rec)
                row = CsvRow(yid, int(float(start)), label or None, split)
            except ValueError:
                rejected.append({"line": lineno, "reason": "bad_csv_row", "detail": f"{rec!r}"})
                continue
            try:                    # both become parts of file names (shards, video lookup)
                safe_name(row.youtube_id, f"CSV {path} line {lineno}: youtube_id")
                safe_name(row.split, f"CSV {path} line {lineno}: split")
            except UnsafePathError as e:
                log.warning("%s; row skipped", e)
                rejected.append({"line": lineno, "youtube_id": yid, "start": row.start, "reason": "unsafe_name",
                                 "detail": str(e)})
                continue
            if (row.youtube_id, row.start) in rows:
                rejected.append({"line": lineno, "youtube_id": yid, "start": row.start, "reason": "duplicate_row",
                                 "detail": "same (youtube_id, start_seconds) listed earlier; kept the first"})
                continue
            rows[(row.youtube_id, row.start)] = row
    return [rows[k] for k in sorted(rows)], rejected


def plan_groups(rows: list[CsvRow], videos_per_shard: int) -> list[dict]:
    """Groups of ``videos_per_shard`` rows per split; each row keeps its global row number (its sample indices).

    Rows are shuffled within a split by a fixed, split-named seed before grouping: a VGGSound CSV is sorted by id and
    often by class, and shards of one class each make every streamed batch (and every contrastive negative) come from
    a handful of classes, which starves the contrastive loss. The plan is still a pure function of the CSV, so
    re-running ingest finds the same shard names and skips finished ones.
    """
    by_split: dict[str, list] = {}
    for r, row in enumerate(rows):
        by_split.setdefault(row.split, []).append({"row": r, **row.__dict__})
    groups = []
    for split in sorted(by_split):
        items = by_split[split]
        random.Random(f"shards/{split}").shuffle(items)
        for g in range(0, len(items), videos_per_shard):
            groups.append({"split": split, "shard_no": g // videos_per_shard,
                           "rows": items[g:g + videos_per_shard]})
    return groups


def _video_samples(row: dict, cfg: IngestConfig) -> list[dict[str, Any]]:
    """Encoded samples of one CSV row (raises VideoError)."""
    path = find_video(cfg.videos_dir, row["youtube_id"], row["start"])
    clip = decode_clip(path, cfg.fps, cfg.frame_size, cfg.audio.sample_rate, cfg.max_pixels,
                       cfg.max_frames_per_video, cfg.max_duration_s)
    base = row["row"] * cfg.max_frames_per_video
    waves = [to_pcm16(audio_window(clip, t, cfg.audio.sample_rate, cfg.audio.num_samples)) for t, _ in clip.frames]
    mels = _stored_mels(waves, cfg) if cfg.store_logmel and waves else [None] * len(waves)
    out = []
    for k, ((t, img), wav, mel) in enumerate(zip(clip.frames, waves, mels)):
        meta = SampleMeta(index=base + k, video_id=row["youtube_id"], timestamp=round(t, 6), label=row["label"],
                          split=row["split"], orig_width=clip.orig_width, orig_height=clip.orig_height)
        out.append(encode_sample(meta, img, wav, cfg.audio.sample_rate, cfg.jpeg_quality, mel))
    return out


def _restore_mels(writer: ShardWriter, group: dict, done: tuple, cfg: IngestConfig) -> dict:
    """A finished shard stored with other log-mel settings (or with / without them) than this ingest's: rewritten
    from its own samples — the ``mel`` entries dropped and, with ``store_logmel``, recomputed from each sample's
    stored FLAC — so no video is decoded again and nothing the first ingest kept is lost. (Its sha256 changes: a
    proposal set computed on it is recomputed by the next proposal job.)"""
    info, extra = done
    mel_key = _logmel_key(cfg)
    log.info("shard %s: stored log-mel settings %s, this ingest's %s; rewriting its mel entries from its own audio",
             info.path, extra.get("logmel_key"), mel_key)
    samples = [{"__key__": key, **{e: b for e, b in entries if e != MEL_EXT and b is not None}}
               for key, entries in iter_tar_groups(Path(cfg.out_dir) / info.path)]
    if mel_key is not None:
        waves = []
        for s in samples:                   # a sample whose FLAC does not decode keeps no mel (readers skip it)
            try:
                waves.append(decode_audio(s[AUDIO_EXT]))
            except (DecodeError, KeyError):
                waves.append(None)
        ok = [i for i, w in enumerate(waves) if w is not None and w.shape == (cfg.audio.num_samples,)]
        for i, mel in zip(ok, _stored_mels([waves[i] for i in ok], cfg) if ok else []):
            samples[i][MEL_EXT] = mel
    extra = {k: v for k, v in extra.items() if k != "logmel_key"}
    extra.update({"logmel_key": mel_key} if mel_key is not None else {})
    new = writer.write(group["split"], group["shard_no"], samples, extra=extra, replace=True)
    return {"shard": new.__dict__, "extra": extra, "skipped": False}


def _withdraw_stale_mel_promise(cfg: IngestConfig) -> None:
    """Before shards are rewritten with other log-mel settings, the set's manifest stops promising the old ones
    (readers then decode the FLAC, which every shard keeps), so a stream reading it meanwhile, or after an
    interrupted rerun, never asks a rewritten shard for entries it lacks. The final manifest is written at the end."""
    path = Path(cfg.out_dir) / "manifest.json"
    try:
        m = read_manifest(path)
    except (OSError, ValueError, KeyError, TypeError):   # none, or unreadable: the final manifest replaces it
        return
    if m.config.get("store_logmel") and m.config.get("logmel_key") != _logmel_key(cfg):
        config = {k: v for k, v in m.config.items() if k not in ("store_logmel", "logmel_key")}
        write_manifest(cfg.out_dir, m.shards, m.classes, config)
        log.info("ingest: %s no longer promises stored log-mel (settings %s) while shards are rewritten", path,
                 m.config.get("logmel_key"))


def _logmel_key(cfg: IngestConfig) -> int | None:
    """The settings key of the log-mel this ingest stores (None: it stores none); a finished shard is kept only if
    it was written with the same."""
    if not cfg.store_logmel:
        return None
    from avdet.audio import logmel_key
    return logmel_key(cfg.audio)


def _stored_mels(waves: list, cfg: IngestConfig) -> list[bytes]:
    """The ``mel`` entries of one clip's windows: the log-mel a reader would compute from the stored 16-bit audio
    (:class:`avdet.audio.LogMel`), float16."""
    import numpy as np
    import torch

    from avdet.audio import LogMel, logmel_key
    with torch.no_grad():
        mels = LogMel(cfg.audio)(torch.from_numpy(np.stack(waves).astype(np.float32)) / 32768.0)[:, 0].numpy()
    return [encode_mel(m, logmel_key(cfg.audio)) for m in mels]


def process_group(group: dict, cfg: IngestConfig) -> dict:
    """Decode the group's videos and write its shard (skipped if finished). Returns the shard's sidecar record:
    ``{"shard": ShardInfo dict, "extra": {"rejected": [...], "videos_ok": n}, "skipped": bool}``."""
    writer = ShardWriter(cfg.out_dir)
    name = writer.shard_name(group["split"], group["shard_no"])
    done = writer.finished(name)
    mel_key = _logmel_key(cfg)
    if done is not None and done[1].get("logmel_key") == mel_key:
        return {"shard": done[0].__dict__, "extra": done[1], "skipped": True}
    if done is not None:
        return _restore_mels(writer, group, done, cfg)
    samples, rejected, ok = [], [], 0
    for row in group["rows"]:
        try:
            samples.extend(_video_samples(row, cfg))
            ok += 1
        except VideoError as e:
            rejected.append({"youtube_id": row["youtube_id"], "start": row["start"], "row": row["row"],
                             "reason": e.reason, "detail": e.detail})
        except Exception as e:  # a decoder bug must not lose the whole group
            rejected.append({"youtube_id": row["youtube_id"], "start": row["start"], "row": row["row"],
                             "reason": "internal_error", "detail": f"{type(e).__name__}: {e}"})
    extra = {"rejected": rejected, "videos_ok": ok, **({"logmel_key": mel_key} if mel_key is not None else {})}
    info = writer.write(group["split"], group["shard_no"], samples, extra=extra)
    for rec in rejected:
        log.info("shard %s: video %s (row %d) %s: %s; skipped", name, rec["youtube_id"], rec["row"],
                 rec["reason"], rec["detail"])
    return {"shard": info.__dict__, "extra": extra, "skipped": False}


def _ray_process(item: dict, cfg: IngestConfig) -> dict:
    """Ray task body: one group in (as JSON), its sidecar record out (as JSON; rows stay plain strings)."""
    return {"result": json.dumps(process_group(json.loads(item["group"]), cfg))}


def _finish(cfg: IngestConfig, results: list[dict], csv_rejects: list[dict], classes: list[str]) -> dict:
    """Write manifest.json and ingest_report.json from the groups' records; returns the report."""
    infos = [ShardInfo(**r["shard"]) for r in results]
    config = {**to_dict(cfg), "index_stride": cfg.max_frames_per_video}
    if cfg.store_logmel:                  # what a reader compares with its own settings (data.stream.reading_spec)
        config["logmel_key"] = _logmel_key(cfg)
    write_manifest(cfg.out_dir, [i for i in infos if i.count > 0], classes, config)
    rejected = csv_rejects + sorted((x for r in results for x in r["extra"].get("rejected", [])),
                                    key=lambda x: x["row"])
    report = {"videos_total": sum(r["extra"].get("videos_ok", 0) for r in results)
              + sum(len(r["extra"].get("rejected", [])) for r in results),
              "videos_ok": sum(r["extra"].get("videos_ok", 0) for r in results),
              "samples": sum(i.count for i in infos), "shards": len([i for i in infos if i.count > 0]),
              "groups_skipped_as_done": sum(bool(r.get("skipped")) for r in results),
              "rejected": rejected}
    write_atomic(Path(cfg.out_dir) / REPORT_NAME, json.dumps(report, indent=1).encode())
    log.info("ingest: %d of %d videos ok, %d samples in %d shards, %d rejected (see %s)", report["videos_ok"],
             report["videos_total"], report["samples"], report["shards"], len(rejected), REPORT_NAME)
    return report


def _plan(cfg: IngestConfig) -> tuple[list[dict], list[dict], list[str]]:
    if not cfg.csv or not cfg.out_dir:
        raise ValueError("ingest needs csv and out_dir (e.g. csv=/data/vggsound.csv out_dir=/data/shards)")
    rows, csv_rejects = read_csv(cfg.csv)
    classes = sorted({r.label for r in rows if r.label is not None})
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(Path(cfg.out_dir))
    _withdraw_stale_mel_promise(cfg)
    return plan_groups(rows, cfg.videos_per_shard), csv_rejects, classes


def ingest_local(cfg: IngestConfig) -> dict:
    """Serial in-process ingest (no Ray); same shards and report as :func:`ingest`."""
    groups, csv_rejects, classes = _plan(cfg)
    results = [process_group(g, cfg) for g in tqdm(groups, desc="ingest groups", unit="shard")]
    return _finish(cfg, results, csv_rejects, classes)


def ingest(cfg: IngestConfig) -> dict:
    """Ray Data ingest: one task per group/shard, ``cfg.concurrency`` at a time, on the Ray this process is already
    connected to (the caller connects: ``distributed.cluster.ray_local.connect_ray``; data/ starts no cluster).
    Returns the ingest report (also in ingest_report.json)."""
    if not cfg.use_ray:
        return ingest_local(cfg)
    import ray

    if not ray.is_initialized():
        raise RuntimeError("ingest: use_ray=true needs a connected Ray (distributed.cluster.ray_local.connect_ray "
                           "before ingest(), as jobs/ingest.py does), or use_ray=false")
    groups, csv_rejects, classes = _plan(cfg)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results: list[dict] = []
    if groups:
        items = [{"group": json.dumps(g)} for g in groups]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map(_ray_process, fn_kwargs={"cfg": cfg},
                    compute=ray.data.TaskPoolStrategy(size=cfg.concurrency), num_cpus=1)
        for row in tqdm(ds.iter_rows(), total=len(groups), desc="ingest groups", unit="shard"):
            results.append(json.loads(row["result"]))
    return _finish(cfg, results, csv_rejects, classes)
