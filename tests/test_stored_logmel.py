"""The log-mel stored at ingest (``ingest.store_logmel``, manifest version 2): the ``mel`` entry's round trip and
refusals, a reader with the set's audio settings reads it instead of decoding the FLAC, a reader with other settings
decodes the FLAC, and a sample that breaks the set's promise is skipped and counted."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from tests.clipkit import write_clip
from tests.shardkit import CLASSES, CONFIG, sample, write_dataset

from avdet.audio import log_mel, logmel_key
from avdet.config import AudioConfig
from data.config import IngestConfig, StreamConfig
from data.health import DataHealth
from data.ingest import _withdraw_stale_mel_promise, ingest_local
from data.schema import MEL_MAGIC, DecodeError, SampleMeta, decode_mel, encode_mel, encode_sample
from data.shards import ShardWriter, iter_samples, iter_shard_samples, read_manifest, write_manifest
from data.stream import plain_loader, reading_spec

AUDIO = AudioConfig(window_s=0.1)          # shardkit's 1600-sample windows -> 64 x 11


def test_mel_entry_round_trip_is_float16():
    mel = np.random.default_rng(0).normal(-5, 3, (64, 11)).astype(np.float32)
    got = decode_mel(encode_mel(mel, 1234))
    assert got.key == 1234 and got.values.dtype == np.float16 and got.values.shape == (64, 11)
    assert np.allclose(got.values, mel, rtol=1e-3, atol=1e-3) and not np.array_equal(got.values, mel)


@pytest.mark.parametrize("data, reason", [
    (encode_mel(np.zeros((4, 5)), 1)[:-2], "bad_mel"),                                  # truncated
    (b"NOTAMEL!" + encode_mel(np.zeros((4, 5)), 1)[8:], "bad_mel"),                     # wrong magic
    (b"AVDET", "bad_mel"),                                                              # shorter than a header
    (struct.pack("<8sHHI", MEL_MAGIC, 4000, 4000, 1), "mel_too_large"),                 # size refused from the header
    (struct.pack("<8sHHI", MEL_MAGIC, 1, 2, 1) + np.array([0, np.nan], "<f2").tobytes(), "bad_mel"),
    (struct.pack("<8sHHI", MEL_MAGIC, 1, 2, 1) + np.array([np.inf, 0], "<f2").tobytes(), "bad_mel"),
    (struct.pack("<8sHHI", MEL_MAGIC, 2, 1, 1) + np.array([0, -np.inf], "<f2").tobytes(), "bad_mel"),
    (struct.pack("<8sHHI", MEL_MAGIC, 1, 1, 1) + np.array([-np.nan], "<f2").tobytes(), "bad_mel"),
])
def test_bad_mel_entries_are_refused_with_their_reason(data, reason):
    with pytest.raises(DecodeError) as e:
        decode_mel(data)
    assert e.value.reason == reason


def test_the_float16_extremes_are_finite_values():
    extremes = np.array([[65504.0, -65504.0, 6e-8, -0.0]], np.float16)      # largest, smallest subnormal, -0
    got = decode_mel(struct.pack("<8sHHI", MEL_MAGIC, 1, 4, 7) + extremes.astype("<f2").tobytes())
    np.testing.assert_array_equal(got.values, extremes)


def test_encode_refuses_non_finite_values():
    with pytest.raises(ValueError, match="finite"):
        encode_mel(np.array([[0.0, np.inf]]), 1)


def _by_index(loader) -> dict[int, torch.Tensor]:
    return {int(i): a for b in loader for i, a in zip(b["index"], b["audio"])}


def test_reader_with_the_sets_settings_reads_the_stored_log_mel_without_decoding_audio(tmp_path, monkeypatch):
    write_dataset(tmp_path, [7, 6], mel_audio=AUDIO)
    m = read_manifest(tmp_path)
    assert reading_spec(m, AUDIO).mel == (logmel_key(AUDIO), 64, 11)
    assert reading_spec(m, AudioConfig(window_s=0.1, n_mels=32)).mel is None
    cfg = StreamConfig(batch_size=4, num_workers=0, shuffle=False, audio=AUDIO)
    want = _by_index(plain_loader(tmp_path, "train", cfg))              # FLAC decodable here

    def no_flac(data, limits):
        raise AssertionError("the FLAC was decoded")
    monkeypatch.setitem(__import__("data.schema").schema.DECODERS, "flac", no_flac)
    got = _by_index(plain_loader(tmp_path, "train", cfg))
    assert got.keys() == set(range(13))
    for i, a in got.items():                  # the stored float16 values of what a reader computes from the FLAC
        wav = sample(i)["flac"]
        exact = torch.from_numpy(log_mel(_pcm(wav) / 32768.0, AUDIO))
        assert torch.equal(a, want[i]) and float((a - exact).abs().max()) < 0.02 and not torch.equal(a, exact)
    with pytest.raises(AssertionError, match="FLAC was decoded"):  # other settings: the FLAC is decoded
        list(plain_loader(tmp_path, "train", StreamConfig(**{**cfg.__dict__, "audio": AudioConfig(window_s=0.1,
                                                                                                   n_mels=32)})))


def _pcm(flac: bytes) -> np.ndarray:
    from data.schema import decode_audio
    return decode_audio(flac).astype(np.float32)


def test_other_settings_compute_the_log_mel_from_the_audio(tmp_path):
    write_dataset(tmp_path, [5], mel_audio=AUDIO)
    other = AudioConfig(window_s=0.1, n_mels=32)
    b = next(iter(plain_loader(tmp_path, "train", StreamConfig(batch_size=5, num_workers=0, shuffle=False,
                                                               audio=other))))
    assert b["audio"].shape == (5, 1, 32, 11)
    i = int(b["index"][0])
    assert torch.allclose(b["audio"][0], torch.from_numpy(log_mel(_pcm(sample(i)["flac"]) / 32768.0, other)),
                          atol=1e-4)


def test_a_sample_breaking_the_sets_promise_is_skipped_and_counted(tmp_path):
    """In a set stored with log-mel, a sample without its ``mel`` entry, or with one of other settings, is skipped
    (``missing_key`` / ``mel_settings``) by a reader of the stored log-mel; a reader of the audio keeps it."""
    good = [sample(i, CLASSES[i % 2], mel_audio=AUDIO) for i in range(4)]
    bare = sample(4, CLASSES[0])                                                     # no mel entry
    other = sample(5, CLASSES[1], mel_audio=AudioConfig(window_s=0.1, n_mels=32))    # another key
    info = ShardWriter(tmp_path).write("train", 0, good + [bare, other])
    write_manifest(tmp_path, [info], CLASSES, {**CONFIG, "store_logmel": True, "logmel_key": logmel_key(AUDIO)})
    m = read_manifest(tmp_path)
    health = DataHealth()
    kept = [s["meta"]["index"] for s in iter_shard_samples(m.shard_path(info), health, reading_spec(m, AUDIO))]
    assert kept == [0, 1, 2, 3] and dict(health.bad) == {"missing_key": 1, "mel_settings": 1}
    assert not health.ignored
    health = DataHealth()
    assert [s["meta"]["index"] for s in iter_samples(m, "train", 1.0, health)] == list(range(6))
    assert not health.bad and not health.ignored                  # the mel entries are not "ignored" junk


def test_ingest_stores_the_log_mel_and_writes_manifest_version_2(tmp_path):
    v = tmp_path / "videos"
    v.mkdir()
    write_clip(v / "aaa_000000.mp4", 2.0)
    (tmp_path / "vgg.csv").write_text("aaa,0,dog,train\n")
    audio = AudioConfig(window_s=0.5)
    cfg = IngestConfig(videos_dir=str(v), csv=str(tmp_path / "vgg.csv"), out_dir=str(tmp_path / "shards"), fps=2,
                       frame_size=32, use_ray=False, store_logmel=True, audio=audio)
    ingest_local(cfg)
    doc = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert doc["version"] == 2 and doc["config"]["store_logmel"] and doc["config"]["logmel_key"] == logmel_key(audio)
    m = read_manifest(tmp_path / "shards")
    stream = StreamConfig(batch_size=8, num_workers=0, shuffle=False, audio=audio)
    got = _by_index(plain_loader(m, "train", stream))
    samples = {s["meta"]["index"]: s for s in iter_samples(m, "train")}
    assert len(got) == len(samples) == 4
    for i, a in got.items():
        exact = torch.from_numpy(log_mel(samples[i]["audio"].astype(np.float32) / 32768.0, audio))
        assert a.shape == (1, 64, 51) and float((a - exact).abs().max()) < 0.02


def test_a_rerun_that_changes_store_logmel_rewrites_the_finished_shards(tmp_path):
    """Ingest resumes by skipping finished shards; one that changes what log-mel is stored must rewrite them, or
    its manifest would promise entries the shards lack."""
    v = tmp_path / "videos"
    v.mkdir()
    write_clip(v / "aaa_000000.mp4", 1.0)
    (tmp_path / "vgg.csv").write_text("aaa,0,dog,train\n")
    base = dict(videos_dir=str(v), csv=str(tmp_path / "vgg.csv"), out_dir=str(tmp_path / "shards"), fps=2,
                frame_size=32, use_ray=False, audio=AudioConfig(window_s=0.5))
    assert ingest_local(IngestConfig(**base))["groups_skipped_as_done"] == 0
    assert ingest_local(IngestConfig(**base))["groups_skipped_as_done"] == 1
    (v / "aaa_000000.mp4").unlink()            # the mel entries come from the shard's own audio: nothing is lost
    assert ingest_local(IngestConfig(**base, store_logmel=True))["groups_skipped_as_done"] == 0
    m = read_manifest(tmp_path / "shards")
    health = DataHealth()
    mels = [s["mel"] for s in iter_shard_samples(m.shard_path(m.shards[0]), health, reading_spec(m, _audio_of(m)))]
    assert len(mels) == 2 and m.shards[0].count == 2 and not health.bad
    wav = next(iter_samples(m, "train"))["audio"].astype(np.float32) / 32768.0
    assert float(np.abs(mels[0] - log_mel(wav, _audio_of(m))[0]).max()) < 0.02
    assert ingest_local(IngestConfig(**base, store_logmel=True))["groups_skipped_as_done"] == 1
    _withdraw_stale_mel_promise(IngestConfig(**base))   # a rerun without them: the old promise goes first
    m = read_manifest(tmp_path / "shards")
    assert not m.config.get("store_logmel") and reading_spec(m, _audio_of(m)).mel is None
    assert ingest_local(IngestConfig(**base))["groups_skipped_as_done"] == 0
    m = read_manifest(tmp_path / "shards")
    assert m.shards[0].count == 2 and "store_logmel" in m.config and not m.config["store_logmel"]
    with __import__("tarfile").open(m.shard_path(m.shards[0])) as tar:
        assert not [n for n in tar.getnames() if n.endswith(".mel")]


def _audio_of(m) -> AudioConfig:
    return AudioConfig(**m.config["audio"])


def test_version_1_manifests_are_still_read(tmp_path):
    write_dataset(tmp_path, [3])
    path = tmp_path / "manifest.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "version": 1}))
    assert read_manifest(tmp_path).version == 1 and len(list(iter_samples(tmp_path, "train"))) == 3
    path.write_text(json.dumps({**doc, "version": 3}))
    with pytest.raises(ValueError, match="version 3"):
        read_manifest(tmp_path)


def test_encode_sample_without_mel_has_no_mel_entry():
    s = encode_sample(SampleMeta(0, "v", 0.0, None, "train", 1, 1), np.zeros((8, 8, 3), np.uint8),
                      np.zeros(16, np.int16), 16000)
    assert sorted(k for k in s if not k.startswith("__")) == ["flac", "jpg", "json"]
