"""Bounded decoding, checked before decoding (issue 15): image size from the header, audio frame count from the
header, JSON size and nesting depth, tar member size; at ingest, a video's duration."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile
from tests.clipkit import write_clip
from tests.shardkit import CONFIG, FRAME, NUM_SAMPLES, SR, manifest_for_raw, members_of, sample, write_raw_tar

from data.health import DataHealth, SampleSpec
from data.schema import DecodeError, DecodeLimits, decode_image, decode_json, decode_sample, encode_flac, json_depth
from data.shards import iter_samples, iter_tar_groups


def huge_jpeg(width: int = 12000, height: int = 12000) -> bytes:
    """A few hundred bytes whose JPEG header (SOF0) claims ``width`` x ``height``: a 16x16 solid-colour JPEG with
    its frame size patched (a real 12000x12000 one would take 432 MB to make)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")                   # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


@pytest.fixture
def loads(monkeypatch):
    """Sizes (w, h) of every image actually decoded during the test, by PIL (ImageFile.load) or by torchvision
    (data.schema._decode_colour_jpeg, the colour JPEGs)."""
    import data.schema
    sizes = []
    real, real_colour = ImageFile.ImageFile.load, data.schema._decode_colour_jpeg

    def load(self):
        sizes.append(self.size)
        return real(self)

    def colour(raw: bytes):
        out = real_colour(raw)
        sizes.append((out.shape[1], out.shape[0]))
        return out
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(data.schema, "_decode_colour_jpeg", colour)
    return sizes


def _read_one_bad(tmp_path, bad: dict) -> DataHealth:
    """A shard of 3 good samples around ``bad`` (index 1); returns the health after reading it all."""
    members = members_of([sample(0), bad, sample(2)])
    write_raw_tar(tmp_path / "train-000000.tar", members)
    manifest_for_raw(tmp_path, "train-000000.tar", 3, 0, 2)
    health = DataHealth()
    got = list(iter_samples(tmp_path, "train", max_bad_fraction=1.0, health=health))
    assert [s["meta"]["index"] for s in got] == [0, 2]
    return health


def test_huge_jpeg_is_refused_from_its_header_without_decoding(tmp_path, loads, monkeypatch):
    big = huge_jpeg()
    assert len(big) < 2000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)            # only to read the header here; our check is
    with Image.open(io.BytesIO(big)) as im:                         # the size test, not PIL's bomb guard
        assert im.size == (12000, 12000)                 # what the header claims
    health = _read_one_bad(tmp_path, {**sample(1), "jpg": big})
    assert dict(health.bad) == {"image_too_large": 1}
    assert "header says 12000x12000" in health.examples[0]["detail"]
    assert (12000, 12000) not in loads and loads == [(FRAME, FRAME)] * 2      # only the good frames were decoded


def test_huge_jpeg_is_refused_without_a_spec_too(loads):
    with pytest.raises(DecodeError) as e:
        decode_image(huge_jpeg())                        # default limits: 8192 a side
    assert e.value.reason == "image_too_large" and not loads
    with pytest.raises(DecodeError) as e:
        decode_image(huge_jpeg(5000, 4000), DecodeLimits(max_image_side=8192, max_image_pixels=10_000_000))
    assert e.value.reason == "image_too_large" and "5000x4000" in e.value.detail and not loads


def test_flac_with_too_many_frames_is_refused_from_its_header(tmp_path, monkeypatch):
    import soundfile
    reads = []
    real = soundfile.SoundFile.read
    monkeypatch.setattr(soundfile.SoundFile, "read", lambda self, *a, **k: (reads.append(self.frames),
                                                                           real(self, *a, **k))[1])
    long = encode_flac(np.zeros(20 * NUM_SAMPLES, np.int16), SR)          # 2 s against a 0.1 s window
    health = _read_one_bad(tmp_path, {**sample(1), "flac": long})
    assert dict(health.bad) == {"audio_too_long": 1}
    assert f"header says {20 * NUM_SAMPLES} frames" in health.examples[0]["detail"]
    assert reads == [NUM_SAMPLES, NUM_SAMPLES]                            # the long one was never read


def test_deeply_nested_json_is_a_counted_bad_sample_not_a_crash(tmp_path):
    """Before: json.loads raised RecursionError out of the reader and aborted the whole read."""
    deep = b"[" * 10000 + b"]" * 10000
    health = _read_one_bad(tmp_path, {**sample(1), "json": deep})
    assert dict(health.bad) == {"json_too_deep": 1}
    assert "nesting depth 10000" in health.examples[0]["detail"]


def test_json_limits_size_and_depth():
    assert json_depth(b'{"a": [1, {"b": "[[[[ in a string ]"}], "c": "\\"["}') == 3
    with pytest.raises(DecodeError, match="json_too_large"):
        decode_json(b'"' + b"x" * 70000 + b'"')
    with pytest.raises(DecodeError, match="json_too_deep"):
        decode_json(b"[" * 40 + b"]" * 40)
    x = decode_json(b"[" * 40 + b"]" * 40, DecodeLimits(max_json_depth=50))
    for _ in range(39):
        x = x[0]
    assert x == []
    # the shortcut (no more openers than the limit) and the exact walk agree at the limit's edge, and brackets in
    # strings beyond the limit's count are walked, not refused
    assert json_depth(b"[" * 32 + b"]" * 32, 32) == 32 and json_depth(b"[" * 33 + b"]" * 33, 32) == 33
    assert decode_json(b'{"s": "' + b"[" * 100 + b'"}') == {"s": "[" * 100}


def test_oversized_tar_member_is_not_read(tmp_path):
    s = sample(0)
    write_raw_tar(tmp_path / "x.tar", members_of([s]))
    [(key, entries)] = list(iter_tar_groups(tmp_path / "x.tar", max_member_bytes=len(s["json"])))
    assert dict(entries)["jpg"] is None and dict(entries)["json"] == s["json"]
    with pytest.raises(DecodeError, match="entry_too_large"):
        decode_sample(dict(entries))


def test_limits_follow_the_manifest_spec_and_its_overrides():
    spec = SampleSpec.from_config(CONFIG)
    lim = spec.limits()
    assert (lim.max_image_side, lim.max_image_pixels, lim.max_audio_frames) == (FRAME, FRAME * FRAME, NUM_SAMPLES)
    wider = SampleSpec.from_config({**CONFIG, "decode_limits": {"max_json_depth": 100}}).limits()
    assert wider.max_json_depth == 100 and wider.max_image_side == FRAME
    with pytest.raises(ValueError, match="unknown"):
        SampleSpec.from_config({**CONFIG, "decode_limits": {"max_jsn_depth": 1}}).limits()


# ---------------------------------------------------------------------------------------------------------------
# ingest: max_duration_s

def test_ingest_lists_a_too_long_video_and_ingests_the_rest(tmp_path):
    from data.config import IngestConfig
    from data.ingest import ingest_local
    videos = tmp_path / "videos"
    videos.mkdir()
    write_clip(videos / "short_000000.mp4", 1.0)
    write_clip(videos / "long_000000.mp4", 3.0)
    (tmp_path / "vgg.csv").write_text("short,0,dog,train\nlong,0,cat,train\n")
    cfg = IngestConfig(videos_dir=str(videos), csv=str(tmp_path / "vgg.csv"), out_dir=str(tmp_path / "out"), fps=2,
                       frame_size=32, max_frames_per_video=4, videos_per_shard=4, use_ray=False, max_duration_s=2.0)
    report = ingest_local(cfg)
    assert report["videos_ok"] == 1 and report["samples"] == 2
    [rej] = report["rejected"]
    assert rej["youtube_id"] == "long" and rej["reason"] == "too_long" and "max_duration_s 2" in rej["detail"]


def test_audio_decoding_stops_at_max_duration_even_when_the_header_is_silent(tmp_path):
    from data.video import VideoError, _decode_audio
    path = write_clip(tmp_path / "c.mp4", 2.0)
    audio, _ = _decode_audio(path, 16000, max_duration_s=3.0)
    assert 1.9 * 16000 <= len(audio) <= 2.2 * 16000
    with pytest.raises(VideoError) as e:
        _decode_audio(path, 16000, max_duration_s=0.5)
    assert e.value.reason == "too_long"


def test_a_cut_colour_jpeg_in_a_shard_is_skipped_counted_and_named_and_the_rest_kept(tmp_path):
    """The colour JPEGs ingest writes decode through torchvision (data.schema): a cut scan there is ``bad_jpg``,
    counted with libjpeg's reason, and the shard's other samples are read as before."""
    from data import schema
    bad = sample(1)
    assert schema._jpeg_frame_header(bad["jpg"]) == (FRAME, FRAME)        # the torchvision path, not PIL's
    health = _read_one_bad(tmp_path, {**bad, "jpg": bad["jpg"][: len(bad["jpg"]) * 2 // 3]})
    assert dict(health.bad) == {"bad_jpg": 1}
    assert "JPEG decode failed" in health.examples[0]["detail"] and "truncated" in health.examples[0]["detail"]
