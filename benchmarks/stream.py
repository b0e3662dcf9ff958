"""Streaming throughput: the decode bounds vs plain webdataset/DataLoader vs our plain loader vs the Ray Data path.

    python -m benchmarks.stream                 # 8192 samples (128x128 JPEG + 1 s FLAC + its stored log-mel)
    python -m benchmarks.stream --no-stored-logmel   # the same without the stored log-mel (readers compute it)
    python -m benchmarks.stream --tiny          # seconds-long smoke run
    python -m benchmarks.stream --shards DIR    # an existing shard folder (its train split)

Every figure is samples/s reaching one consumer (two for ``ray_c<cores>_2ranks``: two ranks, each streaming its
part, as stage 1's workers do), one full epoch per timing. Every arm delivers what the trainers
consume: (B, 3, H, W) uint8 frames (normalised on the model's device, ``to_device``) and the log-mel;
``--float-frames`` has every arm normalise the frames to float32 instead, as every row before 2026-12-03 22:00 did.
The arms run interleaved: ``--rounds`` rounds, each timing every arm once in turn, each round from another arm
(after one warm-up epoch per arm), so load from other processes hits every arm alike; the figure is the median over
rounds (all rounds are kept), with the machine's busy cores during each epoch beside it. Every multi-process arm
uses as many workers as the machine has cores. Two bounds, one thread each, × cores:

* ``physical_decode_1core``: what the shards store and a reader reads, decoded: tar read + JPEG + the stored
  log-mel (float16; ``ingest.store_logmel``, the default shards here), or + FLAC for shards without it;
* ``decode_collate_1core``: the same + stacking (+ frame normalisation with ``--float-frames``, + the log-mel for
  shards without it) — the per-sample work every loader arm does.

``ray_c<cores>_substreams<k>``: the Ray path as a trainer's rank reads it (:func:`data.stream.part_batches`) with
``stream.substreams: k`` (k Ray executions taken in turn), for the default k (2: the arm the goals are judged on) and
the other one of 1 and 2 (its ratios are goal entries of their own, ``stream_substreams<k>_*``). The other Ray arms
vary the default path in one setting:
``ray_c<cores>_2ranks``: two consumers, each its rank's part (``part_batches(part=(k, 2))``), half the read tasks each.
``ray_c<cores>_2shards_per_task``: ``stream.shards_per_task: 2`` (the default reads one).
``ray_c<cores>_no_op_reservation``: ``stream.op_reservation: false`` (Ray Data's per-operator reservation off).
``ray_c<cores>_no_idle_wait``: ``stream.idle_wait_s: 0`` (Ray Data's scheduling loop as Ray has it:
:mod:`data.ray_idle`).
``ray_1read_task``: one read task (``read_concurrency: 1``, ``substreams: 1``), so the consumer and Ray's own
processes run beside it on the other core(s): the path per read core, against ``physical_decode_1core`` (a figure
of the summary, not a goal: the issue's goal charges every core, the consumer's included).
``ray_auto_concurrency``: ``stream.read_concurrency: 0`` (as many half-CPU read tasks as the free CPUs fit: 2 per
core).
``ray_c<cores>_threaded_metadata``: Ray Data's default metadata fetch (a background thread) instead of ours
(inline: ``distributed.cluster.ray_local.RAY_DATA_ENV``).
Ray runs on 127.0.0.1 only. With ``--goals`` (what ``make bench`` passes) the issue's goals are written to
``benchmarks/GOALS.json``.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from avdet.config import AudioConfig, to_dict
from benchmarks.common import BusyCores, append_results_row, record_goals, write_result
from data.config import StreamConfig
from data.schema import SampleMeta, encode_sample
from data.shards import ShardWriter, read_manifest, write_manifest
from data.stream import BatchCollate, _stack, part_batches, plain_loader, reading_spec

log = logging.getLogger("benchmarks.stream")


def make_shards(out: Path, n: int, per_shard: int, frame_size: int = 128, seed: int = 0,
                store_logmel: bool = False) -> Path:
    """Synthetic shards: smooth random-ish RGB frames and 1 s tones+noise, ``per_shard`` samples each; with
    ``store_logmel`` also each sample's log-mel, as ``ingest.store_logmel`` stores it."""
    from avdet.audio import log_mel, logmel_key
    from data.schema import encode_mel, to_pcm16
    rng = np.random.default_rng(seed)
    audio = AudioConfig()
    writer, infos = ShardWriter(out), []
    yy, xx = np.mgrid[0:frame_size, 0:frame_size] / frame_size
    t = np.arange(audio.num_samples) / audio.sample_rate

    def sample(i: int) -> dict:
        f = rng.uniform(1, 6, 3)
        img = np.stack([np.sin(2 * np.pi * (f[c] * xx + f[(c + 1) % 3] * yy) + i) for c in range(3)], -1)
        img = np.clip((img * 0.4 + 0.5 + rng.normal(0, 0.05, img.shape)) * 255, 0, 255).astype(np.uint8)
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + rng.normal(0, 0.02, t.shape)
        meta = SampleMeta(i, f"vid{i // 10:06d}", (i % 10) * 1.0, f"class{i % 7}", "train", 320, 240)
        pcm = to_pcm16(wav.astype(np.float32))
        mel = encode_mel(log_mel(pcm / 32768.0, audio)[0], logmel_key(audio)) if store_logmel else None
        return encode_sample(meta, img, pcm, audio.sample_rate, mel=mel)

    for no, start in enumerate(range(0, n, per_shard)):
        infos.append(writer.write("train", no, (sample(i) for i in range(start, min(n, start + per_shard)))))
    cfg = {"frame_size": frame_size, "audio": to_dict(audio), "synthetic": True}
    if store_logmel:
        cfg.update(store_logmel=True, logmel_key=logmel_key(audio))
    write_manifest(out, infos, [f"class{k}" for k in range(7)], cfg)
    return out


def train_count(manifest) -> int:
    """Samples of the train split: what every arm streams (a shard folder may also hold a test split)."""
    return sum(s.count for s in read_manifest(manifest).split_shards("train"))


def decode_bound(manifest, cfg: StreamConfig, collated: bool = True, normalise: bool = False
                 ) -> Callable[[], Iterator]:
    """One process, one thread, tight loop over the train split: tar read + JPEG + the stored log-mel (or FLAC)
    decode, and with ``collated`` the loaders' per-sample work too (stack, normalise, and the log-mel when it is not
    stored). Returns the epoch's iterator factory."""
    from data.health import DataHealth
    from data.shards import iter_shard_samples
    m = read_manifest(manifest)
    ids = {c: i for i, c in enumerate(m.classes)}
    collate = BatchCollate(cfg.audio, normalise)
    spec = reading_spec(m, cfg.audio)
    mel_key = spec.mel[0] if spec is not None and spec.mel is not None else None

    def it():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for s in m.split_shards("train"):
                buf = []
                for x in iter_shard_samples(m.shard_path(s), DataHealth(), spec):
                    buf.append(x)
                    if len(buf) == cfg.batch_size:
                        yield collate(_stack(buf, ids, mel_key)) if collated else {"index": buf}
                        buf = []
                if buf:
                    yield collate(_stack(buf, ids, mel_key)) if collated else {"index": buf}
        finally:
            torch.set_num_threads(threads)
    return it


def webdataset_plain(manifest, cfg: StreamConfig, workers: int, normalise: bool = False) -> Callable[[], Iterator]:
    """The usual baseline: ``webdataset.WebDataset`` + own whitelisted decode (the stored log-mel in place of the
    FLAC where our reader reads it) + ``DataLoader(num_workers)``, each worker one torch thread."""
    import webdataset as wds

    from data.schema import decode_audio, decode_image, decode_json, decode_mel
    m = read_manifest(manifest)
    urls = [str(m.shard_path(s)) for s in m.split_shards("train")]
    ids = {c: i for i, c in enumerate(m.classes)}
    collate = BatchCollate(cfg.audio, normalise)
    spec = reading_spec(m, cfg.audio)
    mel_key = spec.mel[0] if spec is not None and spec.mel is not None else None

    def decode(s):
        meta = decode_json(s["json"])
        sound = {"mel": decode_mel(s["mel"]).values} if mel_key is not None else {"audio": decode_audio(s["flac"])}
        return {"frame": decode_image(s["jpg"]), **sound, "meta": meta, "key": s["__key__"],
                "shard": Path(s["__url__"]).name}

    def make():
        ds = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=wds.split_by_worker,
                             empty_check=False)
              .map(decode).batched(cfg.batch_size, collation_fn=lambda b: collate(_stack(b, ids, mel_key))))
        return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                           prefetch_factor=2 if workers else None,
                                           worker_init_fn=lambda _: torch.set_num_threads(1))
    return make


def ours_plain(manifest, cfg: StreamConfig, workers: int, normalise: bool = False) -> Callable[[], Iterator]:
    c = StreamConfig(**{**cfg.__dict__, "num_workers": workers})
    return lambda: plain_loader(manifest, "train", c, normalise=normalise)


def ray_path(manifest, cfg: StreamConfig, concurrency: int, ranks: int,
             normalise: bool = False) -> Callable[[], int]:
    """The trainers' Ray path: ``ranks`` consumers (threads on the driver), each iterating its rank's part of the epoch
    with :func:`data.stream.part_batches` (``cfg.substreams`` executions taken in turn), ``concurrency // ranks`` read
    tasks each (``concurrency`` 0: derived from the free CPUs). Returns a function that runs one epoch and returns the
    samples it delivered."""
    c = replace(cfg, read_concurrency=concurrency if ranks == 1 else max(1, concurrency // ranks))

    def consume(part: tuple[int, int] | None, counts: list[int], k: int) -> None:
        counts[k] = sum(len(b["index"]) for b in part_batches(manifest, "train", c, 0, part, normalise))

    def epoch() -> int:
        counts = [0] * ranks
        if ranks == 1:
            consume(None, counts, 0)
            return counts[0]
        threads = [threading.Thread(target=consume, args=((k, ranks), counts, k)) for k in range(ranks)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return sum(counts)
    return epoch


def ray_default_metadata_fetch(epoch: Callable[[], int]) -> Callable[[], int]:
    """``epoch`` (a driver-side Ray path) with Ray Data's default, the block metadata fetched on a background thread,
    instead of inline (``distributed.cluster.ray_local.RAY_DATA_ENV``); the executor reads the choice when it
    starts, so one process can interleave both."""
    def run() -> int:
        from ray.data._internal.execution import metadata_fetcher as mf
        saved, mf._PREFETCH_ON_THREAD = mf._PREFETCH_ON_THREAD, True
        try:
            return epoch()
        finally:
            mf._PREFETCH_ON_THREAD = saved
    return run


def _counting(make_iter: Callable[[], Iterator]) -> Callable[[], int]:
    return lambda: sum(len(b["index"]) for b in make_iter())


def interleaved_epochs(arms: dict[str, Callable[[], int]], n_expected: int, rounds: int,
                       busy: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """samples/s of every arm per round: one untimed epoch per arm, then ``rounds`` rounds that time each arm's
    epoch in turn, round ``r`` starting ``r · max(1, arms // rounds)`` arms further on (so no arm always follows the
    same one: an arm after the DataLoader arms also pays for their workers' exit). Each epoch must deliver
    ``n_expected`` samples. ``busy``, if given, gets the machine's busy cores during each timed epoch
    (:class:`benchmarks.common.BusyCores`)."""
    for name, epoch in arms.items():
        epoch()
    rates: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(rounds):
        shift = r * max(1, len(names) // rounds) % len(names)
        for name in names[shift:] + names[:shift]:
            epoch = arms[name]
            t0 = time.perf_counter()
            with BusyCores() as cores:
                n = epoch()
            dt = time.perf_counter() - t0
            if n != n_expected:
                raise RuntimeError(f"{name}: an epoch yielded {n} samples, expected {n_expected}")
            rates[name].append(n / dt)
            if busy is not None:
                busy.setdefault(name, []).append(cores.cores)
            log.info("round %d %s: %.0f samples/s, %.2f cores busy", r, name, rates[name][-1], cores.cores)
    return rates


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--per-shard", type=int, default=512)
    p.add_argument("--shards", help="existing shard dir with manifest.json (default: make synthetic ones)")
    p.add_argument("--no-stored-logmel", action="store_true",
                   help="synthetic shards without the stored log-mel (every reader computes it from the FLAC)")
    p.add_argument("--float-frames", action="store_true",
                   help="every arm normalises the frames to float32 (the rows before 2026-12-03 22:00)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--tiny", action="store_true", help="512 samples, 1 round: a seconds-long smoke run")
    p.add_argument("--goals", action="store_true", help="write the goals to benchmarks/GOALS.json (make bench)")
    p.add_argument("--out", help="JSON output path (default benchmarks/out/stream.json)")
    p.add_argument("--no-results-row", action="store_true", help="do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


BASELINE_2026_12_01 = 1078.0    # the Ray path re-run idle on 2026-12-01 (issue 19): the "2x today" goal's base


def default_arm(cores: int) -> str:
    """The name of the Ray arm with the default settings, which the goals are judged on."""
    return f"ray_c{cores}_substreams{StreamConfig().substreams}"


def other_substreams() -> int:
    """The ``stream.substreams`` of the benchmark's second substreams arm: 2 with the default 1, else 1."""
    return 2 if StreamConfig().substreams == 1 else 1


def _arms(manifest: Path, cfg: StreamConfig, cores: int, normalise: bool) -> dict[str, Callable[[], int]]:
    other = other_substreams()
    return {"physical_decode_1core": _counting(decode_bound(manifest, cfg, collated=False)),
            "decode_collate_1core": _counting(decode_bound(manifest, cfg, normalise=normalise)),
            f"webdataset_dataloader_w{cores}": _counting(webdataset_plain(manifest, cfg, cores, normalise)),
            f"ours_plain_dataloader_w{cores}": _counting(ours_plain(manifest, cfg, cores, normalise)),
            default_arm(cores): ray_path(manifest, cfg, cores, 1, normalise),
            f"ray_c{cores}_substreams{other}": ray_path(manifest, replace(cfg, substreams=other), cores, 1, normalise),
            f"ray_c{cores}_2ranks": ray_path(manifest, cfg, cores, 2, normalise),
            f"ray_c{cores}_2shards_per_task": ray_path(manifest, replace(cfg, shards_per_task=2), cores, 1, normalise),
            f"ray_c{cores}_no_op_reservation": ray_path(manifest, replace(cfg, op_reservation=False), cores, 1, normalise),
            f"ray_c{cores}_no_idle_wait": ray_path(manifest, replace(cfg, idle_wait_s=0.0), cores, 1, normalise),
            f"ray_c{cores}_threaded_metadata": ray_default_metadata_fetch(ray_path(manifest, cfg, cores, 1, normalise)),
            "ray_1read_task": ray_path(manifest, replace(cfg, substreams=1), 1, 1, normalise),
            "ray_auto_concurrency": ray_path(manifest, cfg, 0, 1, normalise)}


def goals(fig: dict, cores: int) -> list[dict]:
    """The issue's streaming goals from the figures (medians), for the default stream (:func:`default_arm`); the
    plain reader is the faster of webdataset's and ours (the same reader as the Ray path's tasks, in DataLoader
    workers). With the other substreams arm in ``fig``, its two ratios are entries of their own (a setting, not the
    default the goals are judged on)."""
    ray = fig[default_arm(cores)]
    plain = max(fig[f"webdataset_dataloader_w{cores}"], fig[f"ours_plain_dataloader_w{cores}"])
    bound = fig["physical_decode_1core"] * cores
    rows = [("stream_ray_vs_plain_reader", ray / plain, 1.0),
            ("stream_vs_physical_decode_bound", ray / bound, 0.8),
            ("stream_vs_2026_12_01", ray / BASELINE_2026_12_01, 2.0)]
    other = other_substreams()
    sub = fig.get(f"ray_c{cores}_substreams{other}")
    if sub is not None:
        rows += [(f"stream_substreams{other}_ray_vs_plain_reader", sub / plain, 1.0),
                 (f"stream_substreams{other}_vs_physical_decode_bound", sub / bound, 0.8)]
    return [{"goal": g, "measured": round(m, 3), "target": f">= {t}", "met": bool(m >= t)} for g, m, t in rows]


def main(argv: list[str] | None = None) -> dict:
    import statistics

    from distributed.cluster.ray_local import start_local_ray
    import ray
    argv = list(argv or [])
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.tiny:
        args.samples, args.per_shard, args.rounds = 512, 128, 1
    cores = os.cpu_count() or 1
    cfg = StreamConfig(batch_size=args.batch_size, shuffle=False, shuffle_buffer=0, read_concurrency=cores)
    with tempfile.TemporaryDirectory(prefix="avdet-bench-") as tmp:
        manifest = Path(args.shards) if args.shards else make_shards(Path(tmp), args.samples, args.per_shard,
                                                                     store_logmel=not args.no_stored_logmel)
        spec = reading_spec(read_manifest(manifest), cfg.audio)
        stored = spec is not None and spec.mel is not None
        n = train_count(manifest)
        load_start = os.getloadavg()
        start_local_ray(num_cpus=cores, object_store_memory=2 * 2**30)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            busy: dict[str, list[float]] = {}
            rounds = interleaved_epochs(_arms(manifest, cfg, cores, args.float_frames), n, args.rounds, busy)
        finally:
            ray.shutdown()
    fig = {name: statistics.median(r) for name, r in rounds.items()}
    fig.update({"rounds": rounds, "busy_cores": busy, "cores": cores, "samples": n, "batch_size": args.batch_size,
                "stored_logmel": stored, "frames": "float32" if args.float_frames else "uint8",
                "loadavg_1m_start_end": [load_start[0], os.getloadavg()[0]], "goals": goals(fig, cores)})
    plains = [f"webdataset_dataloader_w{cores}", f"ours_plain_dataloader_w{cores}"]
    path = write_result("stream", fig, argv, args.out)
    g = {r["goal"]: r for r in fig["goals"]}
    ray, k, other = default_arm(cores), StreamConfig().substreams, other_substreams()
    summary = (f"{n} samples ({'JPEG + stored log-mel' if stored else 'JPEG + FLAC, log-mel computed'}; "
               f"{fig['frames']} frames delivered; tar walk: data.tarread), "
               f"{args.rounds} interleaved rounds, {cores} cores: physical decode "
               f"{fig['physical_decode_1core']:.0f}/s/core, with collate {fig['decode_collate_1core']:.0f}/s/core; "
               f"webdataset+DL w{cores} {fig[f'webdataset_dataloader_w{cores}']:.0f}/s; ours plain "
               f"{fig[f'ours_plain_dataloader_w{cores}']:.0f}/s; ray c{cores} default ({k} substream(s)) "
               f"{fig[ray]:.0f}/s, {other} substreams {fig[f'ray_c{cores}_substreams{other}']:.0f}/s, "
               f"2 ranks' parts {fig[f'ray_c{cores}_2ranks']:.0f}/s, 2 shards per task "
               f"{fig[f'ray_c{cores}_2shards_per_task']:.0f}/s, op reservation off "
               f"{fig[f'ray_c{cores}_no_op_reservation']:.0f}/s, Ray's spinning scheduling loop "
               f"{fig[f'ray_c{cores}_no_idle_wait']:.0f}/s, Ray Data's threaded metadata fetch "
               f"{fig[f'ray_c{cores}_threaded_metadata']:.0f}/s, read concurrency derived from the free CPUs "
               f"{fig['ray_auto_concurrency']:.0f}/s, one read task {fig['ray_1read_task']:.0f}/s (x"
               f"{fig['ray_1read_task'] / fig['physical_decode_1core']:.2f} of one core's decode, "
               f"{statistics.median(busy['ray_1read_task']):.2f} cores busy); ray/plain "
               f"x{g['stream_ray_vs_plain_reader']['measured']:.2f}, of physical decode x cores "
               f"x{g['stream_vs_physical_decode_bound']['measured']:.2f}; cores busy (median): ray default "
               f"{statistics.median(busy[ray]):.2f}, {other} substreams "
               f"{statistics.median(busy[f'ray_c{cores}_substreams{other}']):.2f}, 2 ranks "
               f"{statistics.median(busy[f'ray_c{cores}_2ranks']):.2f}, faster plain "
               f"{statistics.median(busy[max(plains, key=fig.get)]):.2f}; load avg "
               f"{fig['loadavg_1m_start_end'][0]:.1f}->{fig['loadavg_1m_start_end'][1]:.1f}")
    if not args.no_results_row:
        append_results_row("stream", summary, argv)
    if args.goals:
        record_goals(fig["goals"])
    log.info("%s -> %s", summary, path)
    return fig


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
