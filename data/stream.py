"""Shards -> training batches: a Ray Data pipeline for the trainers and a plain DataLoader for debugging/baselines.

Both paths decode whole shards in one Python call (:func:`read_shard_blocks`) into big numpy blocks
``{"frames": (n, H, W, 3) uint8, "audio": (n, S) int16, "index": (n,) int64, "label": (n,) int64, "clip": (n,)
int64, "video_id": (n,) str, "timestamp": (n,) float64, "file_name": (n,) str "<shard>#<key>"}`` (``clip``:
:func:`data.schema.clip_id` of the video id, shared by a clip's frames; the strings are what pseudo-annotation
records, so it reads each shard once) — per-row overhead is paid once per block. The consumer turns a block
into the decoded-batch format (docs/INTERFACES.md) with :class:`BatchCollate` (ImageNet normalisation + log-mel, in
torch, per batch). On the Ray path the read tasks compute the log-mel themselves (one torch thread each): their
blocks carry ``"logmel": (n, 1, n_mels, T) float32`` and ``"logmel_key"`` (:func:`logmel_key` of the audio settings)
in place of the raw audio, and the consumer only checks the key — the trainer's process does no audio work. A set
ingested with ``store_logmel`` holds each sample's log-mel (float16): a reader whose audio settings match reads it
in place of the FLAC (:func:`reading_spec`), so no reader computes a log-mel or decodes audio, and its blocks carry
the stored float16 values as they are: half the log-mel's bytes through the object store, widened to float32 by
:func:`to_device` on the model's device (exactly: every float16 is a float32) or by a ``normalise=True`` collate.

Trainer usage::

    ds = ray_dataset("shards/", "train", cfg, epoch=None)      # driver: TorchTrainer(datasets={"train": ds})
    it = ray.train.get_dataset_shard("train")                  # in train_func, once
    for epoch in range(epochs):
        for batch in iter_torch_batches(it, cfg, epoch):       # {"frames", "audio", "index", "label"} tensors
            ...

Shuffling: shard order and in-shard order are permuted with ``(seed, epoch)`` (or afresh on every execution with
``epoch=None``); the consumer adds a local shuffle buffer seeded with ``seed + epoch``.

Reproducible training streams: ``ray_dataset(..., epoch=e, part=(p, n))`` is part ``p`` of ``n`` of epoch ``e``'s
shard order (:func:`partition_shards`: shards dealt out to balance sample counts), read in that order
(``preserve_order``). One seed, one epoch and one part give the same batches in the same order on every run, which
``streaming_split`` (blocks go to whichever consumer asks first) cannot.
"""
from __future__ import annotations

import logging
import os
import random
import warnings
from pathlib import Path
from typing import Any, Iterator

from dataclasses import replace

import numpy as np
import torch

from avdet.audio import LogMel, logmel_key, num_frames
from avdet.config import AudioConfig
from data.config import StreamConfig
from data.health import DataHealth, SampleSpec
from data.ray_idle import IDLE_WAIT_KEY, install as install_idle_wait
from data.schema import clip_id
from data.shards import Manifest, iter_tar_groups, iter_shard_samples, read_manifest

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FRESH = "*"          # read-task seed meaning "shuffle this shard with fresh randomness"


def _shard_order(manifest: Manifest, split: str, cfg: StreamConfig, epoch: int) -> list[tuple[str, int]]:
    """[(absolute shard path, expected count)] in this epoch's order."""
    shards = [(str(manifest.shard_path(s)), s.count) for s in manifest.split_shards(split)]
    if not shards:
        raise ValueError(f"manifest {manifest.root}: no shards for split {split!r}")
    if cfg.shuffle:
        random.Random(f"{cfg.seed}/{epoch}").shuffle(shards)
    return shards


def _raw_in_order(path: str, seed: str | None) -> Iterator[tuple[str, list]]:
    """The shard's raw samples; all read first and permuted when ``seed`` is given (costs one shard of bytes)."""
    if seed is None:
        yield from iter_tar_groups(path)
        return
    groups = list(iter_tar_groups(path))
    random.Random(seed).shuffle(groups)
    yield from groups


def read_shard_blocks(path: str, classes: list[str], spec: SampleSpec | None, block_rows: int | None,
                      shuffle_seed: str | None = None, max_bad_fraction: float = 1.0,
                      expected_count: int | None = None, block_bytes: int | None = None
                      ) -> Iterator[dict[str, np.ndarray]]:
    """One shard -> numpy blocks (module docstring), each closed at ``block_rows`` samples or as soon as its
    decoded arrays reach ``block_bytes`` (None: no limit). Unusable samples are skipped and counted; raises
    DataHealthError when more than ``max_bad_fraction`` of this shard was unusable."""
    ids = {c: i for i, c in enumerate(classes)}
    health = DataHealth()
    buf: list[dict[str, Any]] = []
    size = 0
    raw = _raw_in_order(path, shuffle_seed) if shuffle_seed is not None else None
    mel_key = spec.mel[0] if spec is not None and spec.mel is not None else None
    for s in iter_shard_samples(path, health, spec, expected_count, raw=raw):
        buf.append(s)
        size += sum(v.nbytes for v in s.values() if isinstance(v, np.ndarray))
        if len(buf) == block_rows or (block_bytes is not None and size >= block_bytes):
            yield _stack(buf, ids, mel_key)
            buf, size = [], 0
    if buf:
        yield _stack(buf, ids, mel_key)
    if health.bad_total:
        log.warning("shard %s: %s", Path(path).name, health.summary())
    health.check(max_bad_fraction, Path(path).name)


def _stack(samples: list[dict[str, Any]], ids: dict[str, int], mel_key: int | None = None) -> dict[str, np.ndarray]:
    """Samples -> one block; with ``mel_key`` (samples read with a ``spec.mel``) the stored float16 log-mel as
    ``logmel``."""
    sound = ({"audio": np.stack([s["audio"] for s in samples])} if mel_key is None else
             {"logmel": np.stack([s["mel"] for s in samples])[:, None],
              "logmel_key": np.full(len(samples), mel_key, np.int64)})
    return {"frames": np.stack([s["frame"] for s in samples]), **sound,
            "index": np.array([s["meta"]["index"] for s in samples], np.int64),
            "label": np.array([ids.get(s["meta"].get("label"), -1) for s in samples], np.int64),
            "clip": np.array([clip_id(str(s["meta"]["video_id"])) for s in samples], np.int64),
            "video_id": np.array([str(s["meta"]["video_id"]) for s in samples]),
            "timestamp": np.array([float(s["meta"].get("timestamp", -1.0)) for s in samples], np.float64),
            "file_name": np.array([f'{s["shard"]}#{s["key"]}' for s in samples])}


def reading_spec(manifest: Manifest, audio: AudioConfig) -> SampleSpec | None:
    """The manifest's sample spec for a reader with these audio settings: with ``mel`` set when the set stores
    the log-mel of exactly these settings (ingest ``store_logmel``), so the reader reads it instead of the audio."""
    spec = manifest.spec()
    key = logmel_key(audio)
    if spec is None or not manifest.config.get("store_logmel") or manifest.config.get("logmel_key") != key:
        return spec
    return replace(spec, mel=(key, audio.n_mels, num_frames(audio)))


def add_logmel(block: dict[str, np.ndarray], audio: AudioConfig, logmel: LogMel | None = None) -> dict[str, np.ndarray]:
    """``block`` with its raw ``audio`` replaced by ``logmel`` (n, 1, n_mels, T) float32 and ``logmel_key`` (a block
    read from a stored log-mel already has them)."""
    if "logmel" in block:
        return block
    logmel = logmel or LogMel(audio)
    wave = torch.from_numpy(np.asarray(block.pop("audio"), np.float32)) / 32768.0
    with torch.no_grad():
        block["logmel"] = logmel(wave).numpy()
    block["logmel_key"] = np.full(len(block["index"]), logmel_key(audio), np.int64)
    return block


class BatchCollate:
    """numpy block ``{"frames": (B,H,W,3) uint8, "audio": (B,S) int16, "index", "label"}`` -> decoded batch
    ``{"frames": (B,3,H,W) float32 ImageNet-normalised, "audio": (B,1,n_mels,T) float32 log-mel, "index": (B,)
    int64, "label": (B,) int64, "clip": (B,) int64}``. Usable as ``collate_fn`` of ``iter_torch_batches`` and of a
    DataLoader. ``normalise=False`` leaves the device's work to :func:`to_device`: frames (B,3,H,W) uint8, and a
    stored log-mel (float16 in the block) as float16."""

    def __init__(self, audio: AudioConfig, normalise: bool = True):
        self.audio, self.normalise = audio, normalise
        self._logmel: LogMel | None = None

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        if self._logmel is None:
            self._logmel = LogMel(self.audio)
        frames = _shared_tensor(np.require(block["frames"], requirements=["C"])).permute(0, 3, 1, 2)
        # normalise=False: a (B, 3, H, W) view of the block's (B, H, W, 3) frames, no copy here (the consumer's
        # thread): to_device's normalisation writes them contiguous, on the model's device
        frames = normalise_frames(frames) if self.normalise else frames
        if "logmel" in block:                                  # computed by the read task (the Ray path)
            if not bool(np.all(np.asarray(block["logmel_key"]) == logmel_key(self.audio))):
                raise ValueError("BatchCollate: the block's log-mel was computed with other audio settings than "
                                 f"this consumer's ({self.audio}); build the stream with the consumer's audio config")
            mel = np.asarray(block["logmel"])
            if mel.dtype == np.float16:                        # stored at ingest: to_device widens it
                audio = _shared_tensor(np.require(mel, requirements=["C"]))
                audio = audio.float() if self.normalise else audio
            else:
                audio = torch.from_numpy(np.require(mel, np.float32, ["C", "W"]))
        else:
            wave = torch.from_numpy(np.asarray(block["audio"], np.float32)) / 32768.0
            with torch.no_grad():
                audio = self._logmel(wave)
        out = {"frames": frames, "audio": audio,
               "index": torch.from_numpy(np.array(block["index"], np.int64)),
               "label": torch.from_numpy(np.array(block["label"], np.int64)),
               "clip": torch.from_numpy(np.array(block["clip"], np.int64))}
        if "proposals" in block:                               # a proposal set joined by the read task
            out["proposals"] = torch.from_numpy(np.require(block["proposals"], np.float32, ["C", "W"]))
            out["proposal_count"] = torch.from_numpy(np.array(block["proposal_count"], np.int64))
        return out


def _shared_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor on ``array``'s memory even when it is read-only (a Ray block's frames live in the object store):
    for frames that are only read, by :func:`normalise_frames`, never written in place."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def normalise_frames(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 ImageNet-normalised, on the frames' device."""
    mean = torch.tensor(IMAGENET_MEAN, device=frames.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=frames.device).view(1, 3, 1, 1) * 255.0
    return ((frames.float() - mean) / std).contiguous()


def to_device(batch: dict[str, torch.Tensor], device: torch.device,
              keys: tuple[str, ...] = ("frames", "audio", "clip", "label", "proposals", "proposal_count")
              ) -> dict[str, torch.Tensor]:
    """The decoded batch with ``keys`` (the model's inputs and the loss's per-sample ids) on ``device``, its frames
    normalised there when they arrive as uint8 (a quarter of the bytes to move: streams built with
    ``normalise=False``) and a float16 log-mel widened to float32 there; ``index`` stays on the host, where label
    tables look it up."""
    if torch.device(device).type != "cpu":
        batch = {k: v.to(device, non_blocking=True) if k in keys and torch.is_tensor(v) else v
                 for k, v in batch.items()}
    if batch["frames"].dtype == torch.uint8:
        batch = {**batch, "frames": normalise_frames(batch["frames"])}
    if "audio" in batch and batch["audio"].dtype == torch.float16:
        batch = {**batch, "audio": batch["audio"].float()}
    return batch


# --------------------------------------------------------------------------------------------------------------
# Ray Data path


def _read_shards_udf(batch: dict[str, np.ndarray], classes: list[str], spec: SampleSpec | None,
                     block_rows: int | None, block_bytes: int, max_bad_fraction: float,
                     audio: AudioConfig | None = None) -> Iterator[dict[str, np.ndarray]]:
    """map_batches UDF: a batch of shard rows ``{"path", "count", "seed", "sidecar", "sidecar_sha"}`` -> numpy
    sample blocks; with ``audio`` the blocks carry the log-mel instead of the raw audio (:func:`add_logmel`, one
    torch thread); with a ``sidecar`` (a proposal set's file, ``""`` for none) they carry the shard's proposals.

    Blocks close at ``block_bytes`` = Ray's target block size unless ``block_rows`` is set: Ray merges a task's
    smaller outputs into one block of several Arrow chunks, and the consumer's batcher then copies the whole block
    to combine them before slicing its first batch (``transform_pyarrow.try_combine_chunked_columns``). One output
    per Ray block keeps every batch a zero-copy slice, so the blocks of the batch's shards are joined up to
    ``block_bytes`` here (:func:`coalesce_blocks`)."""
    logmel = None
    if audio is not None:
        torch.set_num_threads(1)
        logmel = LogMel(audio)

    def blocks() -> Iterator[dict[str, np.ndarray]]:
        for path, count, seed, sidecar, sha in zip(batch["path"], batch["count"], batch["seed"], batch["sidecar"],
                                                   batch["sidecar_sha"]):
            seed = os.urandom(8).hex() if seed == FRESH else (str(seed) or None)
            for block in _blocks(str(path), classes, spec, block_rows, seed, max_bad_fraction, int(count),
                                 (str(sidecar), str(sha)) if str(sidecar) else None, block_bytes):
                yield block if logmel is None else add_logmel(block, audio, logmel)
    yield from blocks() if block_rows is not None else coalesce_blocks(blocks(), block_bytes)


def coalesce_blocks(blocks: Iterator[dict[str, np.ndarray]], block_bytes: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive ``blocks`` (a read task's shards, in order) joined into one block each while it stays within
    ``block_bytes`` and their columns' row shapes agree: one copy here, in the read task, where Ray would otherwise
    merge them into a block of several Arrow chunks and its consumer would copy them together (see
    :func:`_read_shards_udf`)."""
    buf: list[dict[str, np.ndarray]] = []
    size = 0
    for block in blocks:
        n = sum(v.nbytes for v in block.values())
        if buf and (size + n > block_bytes or not _joinable(buf[0], block)):
            yield _concat_blocks(buf)
            buf, size = [], 0
        buf.append(block)
        size += n
    if buf:
        yield _concat_blocks(buf)


def _joinable(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Same columns of the same row shapes (a proposal set's (n, P, 4) may differ in P from shard to shard)."""
    return a.keys() == b.keys() and all(a[k].shape[1:] == b[k].shape[1:] and a[k].dtype.kind == b[k].dtype.kind
                                        for k in a)


def _concat_blocks(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return blocks[0] if len(blocks) == 1 else {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def _blocks(path: str, classes: list[str], spec: SampleSpec | None, block_rows: int | None, seed: str | None,
            max_bad_fraction: float, count: int, sidecar: tuple[str, str] | None,
            block_bytes: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """:func:`read_shard_blocks`, with the shard's proposals joined when ``sidecar`` = (path, sha256) is given."""
    from data.proposals import join_block, read_sidecar
    proposals = read_sidecar(*sidecar) if sidecar is not None else None
    for block in read_shard_blocks(path, classes, spec, block_rows, seed, max_bad_fraction, count, block_bytes):
        yield block if proposals is None else join_block(block, proposals, Path(path).name)


def _sidecars(manifest: Manifest, split: str, cfg: StreamConfig) -> dict[str, tuple[str, str]]:
    """{shard path: (sidecar, sha256)} of ``cfg.proposals`` (checked: every shard has a current one), or {}."""
    if not cfg.proposals:
        return {}
    from data.proposals import stream_sidecars
    return stream_sidecars(manifest, split, cfg.proposals)


def partition_shards(shards: list[tuple[str, int]], parts: int) -> list[list[tuple[str, int]]]:
    """Deal ``shards`` [(path, count)] out to ``parts`` consumers, in order, each to the one with the fewest samples
    so far (ties: the lowest part): deterministic, and the parts' sample counts differ by at most one shard's."""
    if parts < 1:
        raise ValueError(f"partition_shards: parts must be >= 1, got {parts}")
    out: list[list[tuple[str, int]]] = [[] for _ in range(parts)]
    load = [0] * parts
    for shard in shards:
        p = min(range(parts), key=lambda i: (load[i], i))
        out[p].append(shard)
        load[p] += shard[1]
    return out


def ray_dataset(manifest: Manifest | str | Path, split: str, cfg: StreamConfig, epoch: int | None = 0,
                read_num_cpus: float = 0.5, part: tuple[int, int] | None = None):
    """``ray.data.Dataset`` of numpy sample blocks of ``split`` (one read task per ``cfg.shards_per_task`` shards,
    ``cfg.read_concurrency`` at a time). Hand it to a TorchTrainer / ``streaming_split`` and iterate it with
    :func:`iter_torch_batches`.

    ``epoch=k`` fixes the shard and in-shard order to ``(cfg.seed, k)`` (reproducible; build one per epoch);
    ``epoch=None`` reshuffles both afresh on every execution, i.e. every epoch of a long-lived Ray Train dataset.
    ``part=(p, n)`` (with an ``epoch``): only part ``p`` of :func:`partition_shards` of that order, blocks delivered
    in order, so the stream is a function of ``(seed, epoch, p, n)`` alone.
    ``read_num_cpus`` is the CPU reservation per read task (< 1 so reads fit beside the train workers).
    ``cfg.op_reservation`` is this dataset's Ray Data ``op_resource_reservation_enabled``, ``cfg.idle_wait_s`` its
    scheduling loop's idle wait (:mod:`data.ray_idle`; see :class:`data.config.StreamConfig`)."""
    import ray

    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    fresh = cfg.shuffle and epoch is None
    if part is not None and epoch is None:
        raise ValueError("ray_dataset: part= needs an epoch (a reproducible order to partition)")
    order = _shard_order(m, split, cfg, 0 if epoch is None else epoch)
    if part is not None:
        order = partition_shards(order, part[1])[part[0]]
        if not order:
            raise ValueError(f"ray_dataset: part {part[0]} of {part[1]} of split {split!r} has no shards "
                             f"({len(m.split_shards(split))} shards in all): use fewer workers or smaller shards")
    sidecars = _sidecars(m, split, cfg)
    items = [{"path": p, "count": c,
              "seed": FRESH if fresh else f"{cfg.seed}/{epoch}/{Path(p).name}" if cfg.shuffle else "",
              "sidecar": sidecars.get(p, ("", ""))[0], "sidecar_sha": sidecars.get(p, ("", ""))[1]}
             for p, c in order]
    tasks = -(-len(items) // cfg.shards_per_task)          # one input block, one read task per shards_per_task
    ds = ray.data.from_items(items, override_num_blocks=tasks)
    if part is not None:
        ds.context.execution_options.preserve_order = True
    ds.context.op_resource_reservation_enabled = cfg.op_reservation
    ds.context.set_config(IDLE_WAIT_KEY, cfg.idle_wait_s)
    install_idle_wait()
    if fresh:
        ds = ds.randomize_block_order()
    concurrency = cfg.read_concurrency or auto_read_concurrency(read_num_cpus, tasks)
    return ds.map_batches(
        _read_shards_udf, batch_size=cfg.shards_per_task, fn_kwargs={
            "classes": m.classes, "spec": reading_spec(m, cfg.audio), "block_rows": cfg.shard_block_rows or None,
            "block_bytes": ray_block_bytes(ds.context),
            "max_bad_fraction": cfg.max_bad_fraction, "audio": cfg.audio if cfg.logmel_in_reader else None},
        compute=ray.data.TaskPoolStrategy(size=concurrency), num_cpus=read_num_cpus)


def ray_block_bytes(context) -> int:
    """The bytes at which a read task closes a block: the Ray Data context's target block size (128 MiB unless
    set)."""
    return int(getattr(context, "target_max_block_size", None) or 128 * 2**20)


def auto_read_concurrency(read_num_cpus: float, shards: int) -> int:
    """``stream.read_concurrency: 0``: as many read tasks as the cluster's CPUs not held by anyone now (the trainers'
    reservations are taken when their streams are built) fit at ``read_num_cpus`` each, at least 1 and at most one
    per shard."""
    import ray
    free = ray.available_resources().get("CPU", 0.0)
    return max(1, min(shards, int(free // read_num_cpus)))


def iter_torch_batches(source, cfg: StreamConfig, epoch: int = 0,
                       normalise: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Decoded batches from a ``ray.data.Dataset`` or ``DataIterator`` (e.g. ``ray.train.get_dataset_shard``);
    ``normalise=False``: frames stay (B, 3, H, W) uint8 and a stored log-mel float16, for :func:`to_device` to
    normalise and widen on the model's device (they are views of the object store's read-only block: read them, never
    write into them)."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class _RayCollate(BatchCollate, NumpyBatchCollateFn):
        """BatchCollate marked as a numpy collate for Ray (a plain function is deprecated since Ray 2.47)."""

    buffer = cfg.shuffle_buffer if cfg.shuffle and cfg.shuffle_buffer > 0 else None
    install_idle_wait()                         # this process runs the execution's scheduling loop
    return source.iter_torch_batches(
        batch_size=cfg.batch_size, collate_fn=_RayCollate(cfg.audio, normalise), prefetch_batches=cfg.prefetch_batches,
        local_shuffle_buffer_size=buffer, local_shuffle_seed=cfg.seed + epoch if buffer else None)


def part_batches(manifest: Manifest | str | Path, split: str, cfg: StreamConfig, epoch: int,
                 part: tuple[int, int] | None = None, normalise: bool = True, read_num_cpus: float = 0.5
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """Decoded batches of part ``part=(p, n)`` (None: the whole epoch) of ``epoch`` (:func:`ray_dataset`), read as
    ``cfg.substreams`` executions: sub-parts ``p + n·j`` of ``n·substreams`` (so ``substreams: 1`` is exactly
    ``iter_torch_batches(ray_dataset(..., part=part))``), each with ``read_concurrency // (sub-parts read)`` read
    tasks (at least 1) and a thread filling a queue of batches; the batches are taken from the sub-parts in strict turn (one that has ended
    drops out), so the order is a function of ``(seed, epoch, part, substreams)`` alone. Sub-parts without shards (a
    split of fewer shards than ranks × substreams) are left out. An error in any sub-part is raised here; stopping
    early stops the threads."""
    k = cfg.substreams
    if k == 1:
        yield from iter_torch_batches(ray_dataset(manifest, split, cfg, epoch=epoch, part=part,
                                                  read_num_cpus=read_num_cpus), cfg, epoch, normalise)
        return
    import queue
    import threading

    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    total = cfg.read_concurrency or auto_read_concurrency(read_num_cpus, len(m.split_shards(split)))
    p, n = part or (0, 1)
    dealt = partition_shards(_shard_order(m, split, cfg, epoch), n * k)
    subparts = [p + n * j for j in range(k) if dealt[p + n * j]]   # fewer shards than n·k: the empty ones drop out
    if not subparts:
        raise ValueError(f"part_batches: part {p} of {n} of split {split!r} has no shards "
                         f"({len(m.split_shards(split))} shards in all): use fewer workers or smaller shards")
    sub = replace(cfg, read_concurrency=max(1, total // len(subparts)), substreams=1)
    datasets = [ray_dataset(m, split, sub, epoch=epoch, part=(q, n * k), read_num_cpus=read_num_cpus)
                for q in subparts]
    k = len(datasets)
    queues = [queue.Queue(max(2, cfg.prefetch_batches)) for _ in range(k)]
    stop = threading.Event()
    end = object()

    def put(j: int, item: Any) -> bool:
        """Queue ``item`` for the consumer unless it stopped; False once it has."""
        while not stop.is_set():
            try:
                queues[j].put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill(j: int) -> None:
        try:
            for batch in iter_torch_batches(datasets[j], sub, epoch, normalise):
                if not put(j, batch):
                    return
        except BaseException as e:                    # handed to the consumer, raised there
            put(j, e)
            return
        put(j, end)

    threads = [threading.Thread(target=fill, args=(j,), name=f"substream-{p}.{j}", daemon=True) for j in range(k)]
    for t in threads:
        t.start()
    try:
        live = list(range(k))
        while live:
            for j in list(live):
                item = queues[j].get()
                if item is end:
                    live.remove(j)
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10.0)


# --------------------------------------------------------------------------------------------------------------
# plain path: torch DataLoader over the same shards


class ShardIterable(torch.utils.data.IterableDataset):
    """Yields decoded batches of ``cfg.batch_size`` (the last of each shard may be smaller); DataLoader workers
    take shards ``worker_id::num_workers`` of this epoch's order."""

    def __init__(self, manifest: Manifest | str | Path, split: str, cfg: StreamConfig, epoch: int = 0,
                 normalise: bool = True):
        m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        self.shards, self.classes, self.spec = _shard_order(m, split, cfg, epoch), m.classes, reading_spec(m, cfg.audio)
        self.cfg, self.epoch, self.sidecars, self.normalise = cfg, epoch, _sidecars(m, split, cfg), normalise

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        collate = BatchCollate(self.cfg.audio, self.normalise)
        for path, count in self.shards[wid::nw]:
            seed = f"{self.cfg.seed}/{self.epoch}/{Path(path).name}" if self.cfg.shuffle else None
            for block in _blocks(path, self.classes, self.spec, self.cfg.batch_size, seed,
                                 self.cfg.max_bad_fraction, count, self.sidecars.get(path)):
                yield collate(block)


def plain_loader(manifest: Manifest | str | Path, split: str, cfg: StreamConfig,
                 epoch: int = 0, normalise: bool = True) -> torch.utils.data.DataLoader:
    """Single-machine ``DataLoader`` (``cfg.num_workers`` processes) of decoded batches; no Ray. ``normalise=False``:
    frames stay (B, 3, H, W) uint8, as :func:`iter_torch_batches` gives them."""
    ds = ShardIterable(manifest, split, cfg, epoch, normalise)
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.num_workers,
                                       persistent_workers=False, prefetch_factor=cfg.prefetch_batches
                                       if cfg.num_workers > 0 else None)
