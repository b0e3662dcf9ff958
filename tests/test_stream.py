"""data.stream: Ray Data on 127.0.0.1 and the plain DataLoader yield every sample once, in the decoded-batch format."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch
from tests.shardkit import write_dataset

from avdet.config import AudioConfig
from data.config import StreamConfig
from data.schema import clip_id
from data.stream import (IMAGENET_MEAN, IMAGENET_STD, iter_torch_batches, part_batches, partition_shards,
                         plain_loader, ray_dataset)

COUNTS = [40, 30, 25, 33]
N = sum(COUNTS)
AUDIO = AudioConfig(window_s=0.1)          # 1600 samples -> T = 11 log-mel frames


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_dataset(out, COUNTS)
    return out


def _cfg(**kw):
    return StreamConfig(**{"batch_size": 16, "shard_block_rows": 10, "shuffle_buffer": 32, "audio": AUDIO, **kw})


def _check_batch(b):
    B = len(b["index"])
    assert 1 <= B <= 16
    assert b["frames"].dtype == torch.float32 and b["frames"].shape == (B, 3, 16, 16)
    assert b["audio"].dtype == torch.float32 and b["audio"].shape == (B, 1, 64, 11)
    assert b["index"].dtype == torch.int64 and b["label"].dtype == torch.int64
    idx = b["index"].numpy()
    assert np.array_equal(b["label"].numpy(), idx % 2)                   # sample j has class CLASSES[j % 2]
    v = ((idx * 37) % 256).astype(np.float32) / 255.0                    # shardkit frames are constant
    want = (v[:, None] - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    got = b["frames"].mean(dim=(2, 3)).numpy()
    assert np.abs(got - want).max() < 0.05                               # JPEG tolerance
    assert torch.isfinite(b["audio"]).all()
    assert b["clip"].tolist() == [clip_id(f"v{i}") for i in idx]         # shardkit: sample i is clip "v{i}"


def test_two_workers_see_every_sample_exactly_once(shards, ray_local):
    its = ray_dataset(shards, "train", _cfg()).streaming_split(2, equal=False)
    seen: list[list[int]] = [[], []]

    def consume(k):
        for b in iter_torch_batches(its[k], _cfg(), epoch=0):
            _check_batch(b)
            seen[k].extend(b["index"].tolist())
    threads = [threading.Thread(target=consume, args=(k,)) for k in range(2)]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    a, b = seen
    assert len(a) + len(b) == N and set(a) | set(b) == set(range(N)) and not set(a) & set(b)


def test_ray_epochs_are_complete_and_shuffled_per_epoch(shards, ray_local):
    orders = []
    for epoch in (0, 1):
        batches = list(iter_torch_batches(ray_dataset(shards, "train", _cfg(), epoch=epoch), _cfg(), epoch))
        orders.append([i for b in batches for i in b["index"].tolist()])
    assert all(sorted(o) == list(range(N)) for o in orders)
    assert orders[0] != orders[1] and orders[0] != list(range(N))


def test_ray_dataset_reshuffles_every_execution_with_epoch_none(shards, ray_local):
    ds = ray_dataset(shards, "train", _cfg(shuffle_buffer=0), epoch=None)
    orders = [[i for b in iter_torch_batches(ds, _cfg(shuffle_buffer=0)) for i in b["index"].tolist()]
              for _ in range(2)]
    assert all(sorted(o) == list(range(N)) for o in orders) and orders[0] != orders[1]


def test_plain_loader_two_workers_every_sample_once(shards):
    got = []
    for b in plain_loader(shards, "train", _cfg(num_workers=2)):
        _check_batch(b)
        got.extend(b["index"].tolist())
    assert sorted(got) == list(range(N))


def test_plain_loader_order_is_seeded_per_epoch(shards):
    order = lambda epoch, seed=0: [i for b in plain_loader(shards, "train", _cfg(num_workers=0, seed=seed), epoch)  # noqa: E731
                                   for i in b["index"].tolist()]
    assert order(0) == order(0) and order(0) != order(1) and order(0) != order(0, seed=1)
    unshuffled = [i for b in plain_loader(shards, "train", _cfg(num_workers=0, shuffle=False))
                  for i in b["index"].tolist()]
    assert unshuffled == list(range(N))


def test_unknown_split_is_an_error(shards):
    with pytest.raises(ValueError, match="no shards for split 'val'"):
        plain_loader(shards, "val", _cfg())


def test_partition_shards_balances_counts_deterministically():
    shards = [("a", 40), ("b", 30), ("c", 25), ("d", 33), ("e", 5)]
    parts = partition_shards(shards, 2)
    # a:40 -> part 0; b:30 -> 1; c:25 -> 1 (30 < 40); d:33 -> 0 (55 > 40); e:5 -> 1 (55 < 73)
    assert parts == [[("a", 40), ("d", 33)], [("b", 30), ("c", 25), ("e", 5)]]
    assert partition_shards(shards, 2) == parts                          # a function of its input alone
    assert sorted(s for p in partition_shards(shards, 3) for s in p) == sorted(shards)
    with pytest.raises(ValueError, match="parts must be >= 1"):
        partition_shards(shards, 0)


def test_seeded_parts_are_reproducible_and_cover_the_epoch(shards, ray_local):
    """``part=(p, n)`` of one epoch: the same batches in the same order on every execution; the parts together are
    every sample once; another epoch is another order."""
    def order(part, epoch=0):
        ds = ray_dataset(shards, "train", _cfg(), epoch=epoch, part=part)
        return [i for b in iter_torch_batches(ds, _cfg(), epoch) for i in b["index"].tolist()]
    p0, p1 = order((0, 2)), order((1, 2))
    assert order((0, 2)) == p0 and order((1, 2)) == p1
    assert sorted(p0 + p1) == list(range(N)) and not set(p0) & set(p1)
    assert order((0, 2), epoch=1) != p0
    with pytest.raises(ValueError, match="part 4 of 5 .* has no shards"):
        ray_dataset(shards, "train", _cfg(), epoch=0, part=(4, 5))


def test_ray_blocks_carry_the_readers_log_mel_equal_to_the_plain_path(shards, ray_local):
    """The Ray path's read tasks compute the log-mel (blocks carry it and its key, no raw audio); the decoded
    batches equal the plain path's, which computes it in the consumer; a consumer with other audio settings
    refuses such a block; the detector's frames-only setting keeps raw audio."""
    from data.stream import BatchCollate
    cfg = _cfg(shuffle=False, shuffle_buffer=0)
    block = next(iter(ray_dataset(shards, "train", cfg).iter_batches(batch_size=None, batch_format="numpy")))
    assert "audio" not in block and block["logmel"].shape[1:] == (1, 64, 11) and len(set(block["logmel_key"])) == 1
    raw = next(iter(ray_dataset(shards, "train", _cfg(shuffle=False, logmel_in_reader=False))
                    .iter_batches(batch_size=None, batch_format="numpy")))
    assert "audio" in raw and "logmel" not in raw
    ray_b = {int(i): a for b in iter_torch_batches(ray_dataset(shards, "train", cfg), cfg)
             for i, a in zip(b["index"], b["audio"])}
    plain = {int(i): a for b in plain_loader(shards, "train", StreamConfig(**{**cfg.__dict__, "num_workers": 0}))
             for i, a in zip(b["index"], b["audio"])}
    assert ray_b.keys() == plain.keys() and len(ray_b) == N
    assert max(float((ray_b[i] - plain[i]).abs().max()) for i in ray_b) < 1e-4
    with pytest.raises(ValueError, match="other audio settings"):
        BatchCollate(AudioConfig(window_s=0.1, n_mels=32))(block)


def test_ray_read_tasks_pass_the_stored_log_mel_through(tmp_path, ray_local):
    """A set with the log-mel stored at ingest: the read tasks put it in the blocks as they are, float16 (no audio
    decoded, none computed); the decoded batches equal the plain path's; with ``normalise=False`` the batches carry
    it as float16 and ``to_device`` widens it to exactly the float32 values a normalising stream gives."""
    from data.stream import to_device
    write_dataset(tmp_path, [12, 9], mel_audio=AUDIO)
    cfg = _cfg(shuffle=False, shuffle_buffer=0)
    block = next(iter(ray_dataset(tmp_path, "train", cfg).iter_batches(batch_size=None, batch_format="numpy")))
    assert "audio" not in block and block["logmel"].shape[1:] == (1, 64, 11) and block["logmel"].dtype == np.float16
    half = [b for b in iter_torch_batches(ray_dataset(tmp_path, "train", cfg), cfg, normalise=False)]
    full = [b for b in iter_torch_batches(ray_dataset(tmp_path, "train", cfg), cfg)]
    assert all(b["audio"].dtype == torch.float16 for b in half) and all(b["audio"].dtype == torch.float32 for b in full)
    widened = {int(i): (a, f) for b in (to_device(h, torch.device("cpu")) for h in half)
               for i, a, f in zip(b["index"], b["audio"], b["frames"])}
    normalised = {int(i): (a, f) for b in full for i, a, f in zip(b["index"], b["audio"], b["frames"])}
    assert widened.keys() == normalised.keys() == set(range(21))
    assert all(w[0].dtype == torch.float32 and torch.equal(w[0], normalised[i][0]) and
               torch.equal(w[1], normalised[i][1]) for i, w in widened.items())
    ray_b = {int(i): a for b in iter_torch_batches(ray_dataset(tmp_path, "train", cfg), cfg)
             for i, a in zip(b["index"], b["audio"])}
    plain = {int(i): a for b in plain_loader(tmp_path, "train", StreamConfig(**{**cfg.__dict__, "num_workers": 0}))
             for i, a in zip(b["index"], b["audio"])}
    assert ray_b.keys() == plain.keys() == set(range(21))
    assert all(torch.equal(ray_b[i], plain[i]) for i in ray_b)


def test_read_concurrency_zero_takes_the_free_cpus(shards, ray_local):
    """stream.read_concurrency=0: as many 0.5-CPU read tasks as the free CPUs hold (the local Ray has 2), at most one
    per shard, at least one; the stream is complete."""
    import time

    from data.stream import auto_read_concurrency
    deadline = time.monotonic() + 60                  # an earlier test's read tasks may still hold CPUs for a moment
    while ray_local.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert auto_read_concurrency(0.5, shards=10) == 4 and auto_read_concurrency(0.5, shards=3) == 3
    assert auto_read_concurrency(64.0, shards=10) == 1
    cfg = _cfg(read_concurrency=0, shuffle=False)
    assert sum(len(b["index"]) for b in iter_torch_batches(ray_dataset(shards, "train", cfg), cfg)) == N


def test_uint8_frames_are_normalised_where_the_model_is(shards, ray_local):
    """normalise=False streams (B, 3, H, W) uint8 frames — a quarter of the bytes — and to_device normalises them to
    exactly the frames of a normalised stream."""
    from data.stream import to_device
    cfg = _cfg(shuffle=False, shuffle_buffer=0)
    raw = list(iter_torch_batches(ray_dataset(shards, "train", cfg, epoch=0), cfg, 0, normalise=False))
    ref = list(iter_torch_batches(ray_dataset(shards, "train", cfg, epoch=0), cfg, 0))
    assert raw[0]["frames"].dtype == torch.uint8 and raw[0]["frames"].shape[1] == 3

    def by_index(batches):                                    # blocks arrive in completion order
        return {int(i): f for b in batches for i, f in zip(b["index"], b["frames"])}
    got, want = by_index(to_device(b, torch.device("cpu")) for b in raw), by_index(ref)
    assert got.keys() == want.keys() and len(got) == N
    assert all(torch.equal(got[i], want[i]) for i in got)
    _check_batch(to_device(raw[0], torch.device("cpu")))


def test_read_blocks_close_at_rows_or_bytes(shards):
    """read_shard_blocks closes a block at block_rows samples or as soon as its arrays reach block_bytes."""
    from data.shards import read_manifest
    from data.stream import read_shard_blocks
    m = read_manifest(shards)
    path = str(m.shard_path(m.split_shards("train")[0]))              # 40 samples
    whole = list(read_shard_blocks(path, m.classes, m.spec(), None))
    assert [len(b["index"]) for b in whole] == [40]
    per_sample = whole[0]["frames"][0].nbytes + whole[0]["audio"][0].nbytes
    by_bytes = list(read_shard_blocks(path, m.classes, m.spec(), None, block_bytes=int(2.5 * per_sample)))
    assert [len(b["index"]) for b in by_bytes] == [3] * 13 + [1]
    assert [len(b["index"]) for b in read_shard_blocks(path, m.classes, m.spec(), 16)] == [16, 16, 8]
    assert np.concatenate([b["index"] for b in by_bytes]).tolist() == whole[0]["index"].tolist()


def test_coalesce_joins_consecutive_blocks_within_bytes_and_shapes():
    """A read task's shard blocks join in order while the sum stays within the byte cap and the row shapes agree."""
    from data.stream import coalesce_blocks

    def block(first, n, p=2):
        return {"index": np.arange(first, first + n, dtype=np.int64), "proposals": np.zeros((n, p, 4), np.float32)}
    per_row = 8 + 2 * 4 * 4                                   # bytes of one row: an int64 + (2, 4) float32
    out = list(coalesce_blocks(iter([block(0, 3), block(3, 4), block(7, 5)]), block_bytes=7 * per_row))
    assert [b["index"].tolist() for b in out] == [list(range(7)), list(range(7, 12))]
    out = list(coalesce_blocks(iter([block(0, 3), block(3, 4, p=5), block(7, 1, p=5)]), block_bytes=2**20))
    assert [len(b["index"]) for b in out] == [3, 5] and out[1]["proposals"].shape == (5, 5, 4)


def test_ray_blocks_are_one_arrow_chunk_each_by_default(shards, ray_local):
    """shard_block_rows=0: a read task's block is one Arrow chunk (Ray does not merge several outputs into it), so
    the consumer's batcher slices it without the combining copy; a row cap makes Ray merge several into one."""
    import ray

    def blocks(cfg):
        ds = ray_dataset(shards, "train", cfg)
        tables = [ray.get(ref) for bundle in ds.iter_internal_ref_bundles() for ref in bundle.block_refs]
        return [(t.num_rows, max(c.num_chunks for c in t.columns)) for t in tables]
    one = blocks(_cfg(shard_block_rows=0, shuffle=False))
    assert sorted(n for n, _ in one) == sorted(COUNTS) and {c for _, c in one} == {1}
    # two shards per task: the task joins its shards' blocks itself, one chunk each still
    two = blocks(_cfg(shard_block_rows=0, shards_per_task=2, shuffle=False))
    assert len(two) == (len(COUNTS) + 1) // 2 and sum(n for n, _ in two) == sum(COUNTS)
    assert {c for _, c in two} == {1}
    assert max(c for _, c in blocks(_cfg(shard_block_rows=10, shuffle=False))) > 1


def test_ray_data_fetches_block_metadata_inline_unless_the_environment_says_otherwise(ray_local, monkeypatch):
    """Our Ray processes run Ray Data with the metadata fetched inline (docs/INVESTIGATIONS.md, "Ray Data ran our read
    tasks one at a time"); a value the environment sets wins and is not repeated into a job's runtime_env."""
    from ray.data._internal.execution import metadata_fetcher as mf

    from distributed.cluster import ray_local as rl

    assert isinstance(mf.make_metadata_fetcher(), mf.InlineMetadataFetcher)      # the fixture's start_local_ray
    monkeypatch.setattr(rl, "_SET_HERE", set())
    monkeypatch.setattr(mf, "_PREFETCH_ON_THREAD", mf._PREFETCH_ON_THREAD)       # restored after the test
    monkeypatch.setenv("RAY_DATA_METADATA_PREFETCH_ON_THREAD", "1")
    assert rl.with_ray_data_env({"runtime_env": {"env_vars": {"A": "b"}}}) == {"runtime_env": {"env_vars": {"A": "b"}}}
    assert isinstance(mf.make_metadata_fetcher(), mf.ThreadedMetadataFetcher)
    monkeypatch.delenv("RAY_DATA_METADATA_PREFETCH_ON_THREAD")
    kw = rl.with_ray_data_env({"runtime_env": {"env_vars": {"A": "b"}}, "num_cpus": 1})
    assert kw == {"runtime_env": {"env_vars": {"RAY_DATA_METADATA_PREFETCH_ON_THREAD": "0", "A": "b"}}, "num_cpus": 1}
    assert isinstance(mf.make_metadata_fetcher(), mf.InlineMetadataFetcher)


def test_a_local_ray_keeps_its_half_cpu_read_workers_between_epochs(ray_local, tmp_path):
    """With Ray's default (idle workers kept = free CPUs) 2 of these 4 workers die a second after they go idle, and
    the next epoch's read tasks start them again (docs/INVESTIGATIONS.md, "The read path's own cost")."""
    import ray

    @ray.remote(num_cpus=0.5)
    def pid(barrier):
        open(os.path.join(barrier, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(barrier)) < 4 and time.monotonic() < deadline:   # all 4 running at once
            time.sleep(0.05)
        return os.getpid()

    pids = set(ray.get([pid.remote(str(tmp_path)) for _ in range(4)]))
    assert len(pids) == 4
    time.sleep(3.0)                                            # Ray kills after 1 s idle, checking every 0.2 s

    def alive(p):
        try:
            os.kill(p, 0)
            return True
        except ProcessLookupError:
            return False
    assert all(alive(p) for p in pids)


def test_substreams_read_a_part_as_several_executions_in_a_fixed_order(shards, ray_local):
    """``stream.substreams``: a part read as k executions gives every sample of the part once, the same order on every
    run; substreams 1 is exactly the part's single stream."""
    def order(part, k):
        return [i for b in part_batches(shards, "train", _cfg(substreams=k), 0, part) for i in b["index"].tolist()]
    single = [i for b in iter_torch_batches(ray_dataset(shards, "train", _cfg(), epoch=0, part=(1, 2)), _cfg(), 0)
              for i in b["index"].tolist()]
    assert order((1, 2), 1) == single
    p0, p1 = order((0, 2), 2), order((1, 2), 2)
    assert order((0, 2), 2) == p0 and order((1, 2), 2) == p1
    assert sorted(p0 + p1) == list(range(N)) and not set(p0) & set(p1)
    whole = order(None, 2)
    assert sorted(whole) == list(range(N)) and whole == order(None, 2)


def test_op_reservation_is_the_datasets_ray_data_setting(shards, ray_local):
    """``stream.op_reservation`` sets Ray Data's per-operator reservation on the stream's own dataset (on by default,
    as Ray has it), and either way the part's batches are the same, in the same order."""
    def stream(on):
        ds = ray_dataset(shards, "train", _cfg(op_reservation=on), epoch=0, part=(0, 1))
        return ds.context.op_resource_reservation_enabled, [i for b in iter_torch_batches(ds, _cfg(), 0)
                                                             for i in b["index"].tolist()]
    (on, a), (off, b) = stream(True), stream(False)
    assert StreamConfig().op_reservation and on and not off and a == b and sorted(a) == list(range(N))


def test_an_idle_scheduling_loop_waits_for_the_consumer_instead_of_spinning(tmp_path, ray_local, monkeypatch):
    """``stream.idle_wait_s`` (data.ray_idle): while the reads are ahead of a slow consumer, Ray Data's scheduling
    loop (a thread of the consumer's process) went round hundreds of times a second; with the wait it goes round a
    few times per batch taken, and the batches are the same, in the same order."""
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    from benchmarks.stream import make_shards
    from data.ray_idle import install
    manifest = make_shards(tmp_path, 1024, 64, store_logmel=True)    # 16 shards: the reads outrun the consumer
    assert install() and install()                        # idempotent
    patched, steps = StreamingExecutor._scheduling_loop_step, [0]

    def counting(self, topology):
        steps[0] += 1
        return patched(self, topology)
    monkeypatch.setattr(StreamingExecutor, "_scheduling_loop_step", counting)

    def epoch(wait):
        steps[0], order = 0, []
        cfg = StreamConfig(batch_size=64, shuffle=False, shuffle_buffer=0, op_reservation=False, substreams=1,
                           idle_wait_s=wait)
        for b in part_batches(manifest, "train", cfg, 0, (0, 1), normalise=False):
            time.sleep(0.1)                                # a trainer's step that leaves the CPU alone
            order += b["index"].tolist()
        return steps[0], order
    epoch(0.05)                                            # warm the read workers
    (spin, a), (wait, b), (spin2, _) = epoch(0.0), epoch(0.05), epoch(0.0)
    assert a == b and sorted(a) == list(range(1024))
    assert wait * 5 < min(spin, spin2), (wait, spin, spin2)
    assert wait < 16 * 8, wait                              # a few steps per batch, not hundreds per second


def test_substreams_beyond_the_shards_leave_the_empty_sub_parts_out(shards, ray_local):
    """4 train shards, 3 ranks x 2 substreams = 6 sub-parts: ranks 0 and 1 read two sub-parts, rank 2 one; every
    sample still read once; a rank without any shard is told so."""
    parts = [[i for b in part_batches(shards, "train", _cfg(substreams=2), 0, (p, 3)) for i in b["index"].tolist()]
             for p in range(3)]
    assert sorted(sum(parts, [])) == list(range(N)) and all(parts)
    with pytest.raises(ValueError, match="part 4 of 5 .* has no shards"):
        list(part_batches(shards, "train", _cfg(substreams=2), 0, (4, 5)))


def test_a_substreams_error_reaches_the_trainer_and_an_early_stop_ends_its_threads(tmp_path, ray_local):
    from data.shards import read_manifest
    write_dataset(tmp_path, COUNTS)
    m = read_manifest(tmp_path)
    bad = m.shard_path(m.split_shards("train")[3])
    bad.write_bytes(bad.read_bytes()[:3000])                        # cut inside its first samples
    with pytest.raises(Exception, match=rf"{bad.name}.*corrupt_tar"):
        list(part_batches(tmp_path, "train", _cfg(substreams=2, shuffle=False), 0))
    batches = part_batches(tmp_path, "train", _cfg(substreams=2, shuffle=False, max_bad_fraction=1.0), 0)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("substream-")]
