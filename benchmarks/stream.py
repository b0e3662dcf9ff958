"""Streaming throughput: raw decode bound vs plain webdataset/DataLoader vs our plain loader vs the Ray Data path.

    python -m benchmarks.stream                 # 8192 samples (128x128 JPEG + 1 s FLAC), writes out/stream.json
    python -m benchmarks.stream --tiny          # seconds-long smoke run

Every figure is samples/s of decoded batches (frames normalised, log-mel computed) reaching one consumer, timed over
a full epoch after a warm-up epoch. Ray runs on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from avdet.config import AudioConfig, to_dict
from benchmarks.common import append_results_row, write_result
from data.config import StreamConfig
from data.schema import SampleMeta, encode_sample
from data.shards import ShardWriter, read_manifest, write_manifest
from data.stream import BatchCollate, _stack, iter_torch_batches, plain_loader, ray_dataset

log = logging.getLogger("benchmarks.stream")


def make_shards(out: Path, n: int, per_shard: int, frame_size: int = 128, seed: int = 0) -> Path:
    """Synthetic shards: smooth random-ish RGB frames and 1 s tones+noise, ``per_shard`` samples each."""
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
        return encode_sample(meta, img, wav.astype(np.float32), audio.sample_rate)

    for no, start in enumerate(range(0, n, per_shard)):
        infos.append(writer.write("train", no, (sample(i) for i in range(start, min(n, start + per_shard)))))
    cfg = {"frame_size": frame_size, "audio": to_dict(audio), "synthetic": True}
    write_manifest(out, infos, [f"class{k}" for k in range(7)], cfg)
    return out


def _time_epoch(make_iter, n_expected: int) -> float:
    """samples/s of one epoch after one warm-up epoch; checks the sample count."""
    for _ in make_iter():
        pass
    t0, n = time.perf_counter(), 0
    for batch in make_iter():
        n += len(batch["index"])
    dt = time.perf_counter() - t0
    if n != n_expected:
        raise RuntimeError(f"epoch yielded {n} samples, expected {n_expected}")
    return n / dt


def train_count(manifest) -> int:
    """Samples of the train split: what every arm streams (a shard folder may also hold a test split)."""
    return sum(s.count for s in read_manifest(manifest).split_shards("train"))


def decode_bound(manifest, cfg: StreamConfig) -> float:
    """Single process, one thread: tar read + JPEG + FLAC decode + stack + normalise + log-mel, tight loop."""
    from data.health import DataHealth
    from data.shards import iter_shard_samples
    m = read_manifest(manifest)
    ids = {c: i for i, c in enumerate(m.classes)}
    collate = BatchCollate(cfg.audio)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def it():
        for s in m.split_shards("train"):
            buf = []
            for x in iter_shard_samples(m.shard_path(s), DataHealth(), m.spec()):
                buf.append(x)
                if len(buf) == cfg.batch_size:
                    yield collate(_stack(buf, ids))
                    buf = []
            if buf:
                yield collate(_stack(buf, ids))
    try:
        return _time_epoch(it, train_count(manifest))
    finally:
        torch.set_num_threads(threads)


def webdataset_plain(manifest, cfg: StreamConfig, workers: int) -> float:
    """The usual baseline: ``webdataset.WebDataset`` + own whitelisted decode + ``DataLoader(num_workers)``."""
    import webdataset as wds

    from data.schema import decode_audio, decode_image, decode_json
    m = read_manifest(manifest)
    urls = [str(m.shard_path(s)) for s in m.split_shards("train")]
    ids = {c: i for i, c in enumerate(m.classes)}
    collate = BatchCollate(cfg.audio)

    def decode(s):
        meta = decode_json(s["json"])
        return {"frame": decode_image(s["jpg"]), "audio": decode_audio(s["flac"]), "meta": meta}

    def make():
        ds = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=wds.split_by_worker,
                             empty_check=False)
              .map(decode).batched(cfg.batch_size, collation_fn=lambda b: collate(_stack(b, ids))))
        return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                           prefetch_factor=2 if workers else None)
    return _time_epoch(make, train_count(manifest))


def ours_plain(manifest, cfg: StreamConfig, workers: int) -> float:
    c = StreamConfig(**{**cfg.__dict__, "num_workers": workers})
    return _time_epoch(lambda: plain_loader(manifest, "train", c), train_count(manifest))


def ray_path(manifest, cfg: StreamConfig, concurrency: int, consumers: int) -> float:
    """Ray Data read tasks (``concurrency``) feeding ``consumers`` iterators (threads on the driver, like train
    workers each iterating their ``streaming_split`` shard); figure is the total samples/s."""
    c = StreamConfig(**{**cfg.__dict__, "read_concurrency": concurrency})
    n = train_count(manifest)
    if consumers == 1:
        return _time_epoch(lambda: iter_torch_batches(ray_dataset(manifest, "train", c), c), n)
    rates = []
    for _epoch in range(2):           # first epoch warms up
        its = ray_dataset(manifest, "train", c).streaming_split(consumers, equal=False)
        counts = [0] * consumers

        def consume(k):
            for b in iter_torch_batches(its[k], c):
                counts[k] += len(b["index"])
        threads = [threading.Thread(target=consume, args=(k,)) for k in range(consumers)]
        t0 = time.perf_counter()
        [t.start() for t in threads]
        [t.join() for t in threads]
        rates.append(sum(counts) / (time.perf_counter() - t0))
        if sum(counts) != n:
            raise RuntimeError(f"streaming_split epoch yielded {sum(counts)} samples, expected {n}")
    return rates[-1]


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--per-shard", type=int, default=512)
    p.add_argument("--shards", help="existing shard dir with manifest.json (default: make synthetic ones)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tiny", action="store_true", help="512 samples, seconds-long smoke run")
    p.add_argument("--out", help="JSON output path (default benchmarks/out/stream.json)")
    p.add_argument("--no-results-row", action="store_true", help="do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def _run_all(manifest: Path, cfg: StreamConfig) -> dict:
    from distributed.cluster.ray_local import start_local_ray
    import ray
    fig = {"decode_bound_1core": decode_bound(manifest, cfg)}
    log.info("decode bound: %.0f samples/s", fig["decode_bound_1core"])
    for w in (1, 2):
        fig[f"webdataset_dataloader_w{w}"] = webdataset_plain(manifest, cfg, w)
        fig[f"ours_plain_dataloader_w{w}"] = ours_plain(manifest, cfg, w)
        log.info("workers=%d: webdataset %.0f/s, ours plain %.0f/s", w, fig[f"webdataset_dataloader_w{w}"],
                 fig[f"ours_plain_dataloader_w{w}"])
    start_local_ray(num_cpus=2, object_store_memory=2 * 2**30)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        for conc, cons in ((1, 1), (2, 1), (2, 2)):
            fig[f"ray_c{conc}_consumers{cons}"] = ray_path(manifest, cfg, conc, cons)
            log.info("ray concurrency=%d consumers=%d: %.0f/s", conc, cons, fig[f"ray_c{conc}_consumers{cons}"])
    finally:
        ray.shutdown()
    return fig


def main(argv: list[str] | None = None) -> dict:
    argv = list(argv or [])
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.tiny:
        args.samples, args.per_shard = 512, 128
    cfg = StreamConfig(batch_size=args.batch_size, shuffle=False, shuffle_buffer=0, read_concurrency=2)
    with tempfile.TemporaryDirectory(prefix="avdet-bench-") as tmp:
        manifest = Path(args.shards) if args.shards else make_shards(Path(tmp), args.samples, args.per_shard)
        n = train_count(manifest)
        load_start = os.getloadavg()
        fig = _run_all(manifest, cfg)
        fig["loadavg_1m_start_end"] = [load_start[0], os.getloadavg()[0]]   # other processes share these cores
    base = fig["webdataset_dataloader_w2"]
    best_ray = max(v for k, v in fig.items() if k.startswith("ray_"))
    cores = os.cpu_count() or 1
    fig.update({"samples": n, "batch_size": args.batch_size,
                "ratio_ray_c2_over_webdataset_w2": fig["ray_c2_consumers1"] / base,
                "ratio_best_ray_over_webdataset_w2": best_ray / base,
                "ratio_ray_c2_over_decode_bound_x_cores": fig["ray_c2_consumers1"] / (fig["decode_bound_1core"] * cores)})
    path = write_result("stream", fig, argv, args.out)
    summary = (f"{n} samples: decode-bound {fig['decode_bound_1core']:.0f}/s/core; webdataset+DL w2 {base:.0f}/s; "
               f"ours plain w2 {fig['ours_plain_dataloader_w2']:.0f}/s; ray c2 {fig['ray_c2_consumers1']:.0f}/s "
               f"(x{fig['ratio_ray_c2_over_webdataset_w2']:.2f} of webdataset, "
               f"x{fig['ratio_ray_c2_over_decode_bound_x_cores']:.2f} of decode-bound x {cores} cores); "
               f"load avg {fig['loadavg_1m_start_end'][0]:.1f}->{fig['loadavg_1m_start_end'][1]:.1f}")
    if not args.no_results_row:
        append_results_row("stream", summary, argv)
    log.info("%s -> %s", summary, path)
    return fig


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
