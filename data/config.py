"""Configs of the data layer: video ingest (videos -> shards) and streaming (shards -> training batches).

Both compose :class:`avdet.config.AudioConfig` so the audio window written by ingest and the log-mel computed by the
stream come from one definition. Load them with ``avdet.config.load_config(IngestConfig, path, overrides)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from avdet.config import AudioConfig, require


@dataclass
class IngestConfig:
    """Folder of clips + VGGSound CSV -> WebDataset shards (docs/INTERFACES.md).

    Sample indices: CSV rows are de-duplicated and sorted by ``(youtube_id, start_seconds)``; row ``r`` owns the index
    range ``[r * max_frames_per_video, (r + 1) * max_frames_per_video)``, so an index depends only on the CSV, never on
    which worker decoded what. Broken videos and short clips leave holes. Rows of one split are cut, in that order,
    into groups of ``videos_per_shard``; group ``g`` of split ``s`` becomes shard ``s-<g:06d>.tar``.
    """
    videos_dir: str = ""
    csv: str = ""
    out_dir: str = ""
    fps: float = 1.0                    # frames sampled per second of video
    frame_size: int = 128               # frames are resized (no crop) to frame_size x frame_size
    max_frames_per_video: int = 16      # index stride per CSV row; frames beyond it are dropped
    videos_per_shard: int = 32          # one shard (and one Ray task) per group of this many CSV rows
    max_pixels: int = 3840 * 2160       # larger videos are rejected as "too_large"
    max_duration_s: float = 600.0       # longer videos (container/stream duration, or decoded audio) are "too_long"
    jpeg_quality: int = 90
    concurrency: int = 2                # parallel Ray tasks (each writes one shard)
    use_ray: bool = True                # False: serial in-process ingest (small jobs, debugging)
    ray_address: str = "local"          # "local" starts Ray on 127.0.0.1; "auto" joins a running cluster
    store_logmel: bool = False          # also store each sample's log-mel (float16, ``audio``'s settings): readers
    #                                     with those settings read it instead of decoding the FLAC (manifest v2); a
    #                                     rerun that changes it rewrites finished shards from their own audio
    audio: AudioConfig = field(default_factory=AudioConfig)

    def check(self) -> None:
        require(self.fps > 0, "fps", "must be > 0")
        require(self.frame_size >= 8, "frame_size", "must be >= 8")
        require(self.max_frames_per_video >= 1, "max_frames_per_video", "must be >= 1")
        require(self.videos_per_shard >= 1, "videos_per_shard", "must be >= 1")
        require(self.max_pixels >= 1, "max_pixels", "must be >= 1")
        require(self.max_duration_s > 0, "max_duration_s", "must be > 0 (seconds)")
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be in [1, 100]")
        require(self.concurrency >= 1, "concurrency", "must be >= 1")


@dataclass
class StreamConfig:
    """Shards -> batches of the decoded-batch format (docs/INTERFACES.md).

    ``audio`` must match the shards' audio window (``window_s`` x ``sample_rate``); the log-mel settings are used by
    the consumer-side collate. ``shard_block_rows`` caps the samples of one numpy block of a Ray read task (0: the
    block closes at Ray's target block size, so each Ray block is one Arrow chunk and every batch a zero-copy slice;
    smaller blocks are merged by Ray and cost the consumer a copy of each block). ``shards_per_task`` is how many
    shards one Ray read task reads in turn: Ray Data (2.60) notices that a task has ended only at the next output of
    another task, so a task holds its concurrency slot for about one more shard's time after it ends, and with
    ``read_concurrency: 2`` one task ran at a time. Two shards per task halve that loss (+7 to +10 % on 32k-sample
    epochs here) but change the local shuffle's block boundaries, hence the stream order of a seed; at the read concurrency
    of a cluster the loss is one slot of many (docs/INVESTIGATIONS.md). ``substreams`` reads a rank's part of an epoch
    as that many Ray Data executions (each a sub-part of its shards, ``read_concurrency // substreams`` read tasks,
    at least 1), whose batches the trainer takes in strict turn (:func:`data.stream.part_batches`): the same batches
    on every run, in another order than with 1 (the demo keeps 1, the order its seed tables were measured with).
    One execution of 2 read tasks kept 1.42 of 2 cores busy, two of 1 kept 1.9 and read ×1.4 faster
    (docs/INVESTIGATIONS.md, "The read path's own cost"). ``idle_wait_s``: after a scheduling step that changed
    nothing, Ray Data's loop (a thread of the trainer's process) waits up to this long for the consumer instead of
    going round at once (:mod:`data.ray_idle`; 0: Ray's loop, which spins while its reads are ahead). With Ray's loop
    the faster reading took a trainer's CPU: 2 epochs of the demo's stage 1 on 2 cores took 206–210 s with 2
    substreams against 152–153 s with 1; with the wait, 152–165 s against 148–151 s (docs/INVESTIGATIONS.md, "Ray
    Data's idle scheduling loop"). ``op_reservation`` is Ray Data's ``op_resource_reservation_enabled`` for the
    stream's datasets (on: Ray's default). On, Ray Data (2.60) holds an execution's read operator to one 0.5-CPU task
    whenever a few of its blocks wait for the consumer ("backpressured: tasks(ResourceBudget)"); off, one execution
    read ×1.1–1.4 faster (the same batches), and the demo's stage 1 took 162 s with the idle wait (245–274 s
    without) against 148–151 s on.
    """
    batch_size: int = 64
    shuffle: bool = True
    seed: int = 0
    shuffle_buffer: int = 512           # rows of the consumer-side local shuffle buffer (0 = off)
    shard_block_rows: int = 0           # max rows per numpy block of a Ray read task; 0 = Ray's target block size
    read_concurrency: int = 2           # parallel Ray read tasks (each reads whole shards); 0 = the CPUs free now
    shards_per_task: int = 1            # shards one Ray read task reads in turn (see above)
    substreams: int = 2                 # Ray executions a rank's part is read as, batches taken in turn (see above)
    num_workers: int = 2                # DataLoader workers of the plain (non-Ray) reader
    prefetch_batches: int = 2
    max_bad_fraction: float = 0.01      # raise when more than this fraction of samples was unreadable
    op_reservation: bool = True         # Ray Data's per-operator resource reservation (see above)
    idle_wait_s: float = 0.05           # Ray path: how long an idle scheduling loop waits for the consumer (see above)
    logmel_in_reader: bool = True       # Ray path: the read tasks compute the log-mel (blocks carry it, not raw audio)
    proposals: str = ""                 # a proposal set beside the shards (data/proposals.py) to join; "" = none
    audio: AudioConfig = field(default_factory=AudioConfig)

    def check(self) -> None:
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.shuffle_buffer >= 0, "shuffle_buffer", "must be >= 0")
        require(self.shard_block_rows >= 0, "shard_block_rows", "must be >= 0 (0: Ray's target block size)")
        require(self.read_concurrency >= 0, "read_concurrency", "must be >= 0 (0 = derived from the free CPUs)")
        require(self.shards_per_task >= 1, "shards_per_task", "must be >= 1")
        require(self.substreams >= 1, "substreams", "must be >= 1")
        require(0 <= self.idle_wait_s <= 0.1, "idle_wait_s", "must be in [0, 0.1] (0: Ray's loop, which spins while "
                "idle; above Ray's own 0.1 s wait for running tasks it would delay their completions)")
        require(self.num_workers >= 0, "num_workers", "must be >= 0")
        require(self.seed >= 0, "seed", "must be >= 0")
        require(self.prefetch_batches >= 0, "prefetch_batches", "must be >= 0 (0 = no prefetching)")
        require(0.0 <= self.max_bad_fraction <= 1.0, "max_bad_fraction", "must be in [0, 1]")
