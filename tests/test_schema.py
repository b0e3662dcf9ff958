"""data.schema: encode -> decode round trips and the extension whitelist."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data.schema import (DECODERS, DecodeError, SampleMeta, decode_audio, decode_image, decode_sample, encode_flac,
                         encode_jpeg, encode_sample, sample_key)


def _frame(size=32, seed=0):
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size], -1)
    return img.astype(np.uint8)


def test_sample_key():
    assert sample_key(12) == "000000000012"
    with pytest.raises(ValueError):
        sample_key(-1)


def test_round_trip_values_and_bytes():
    meta = SampleMeta(index=42, video_id="abc", timestamp=1.5, label="dog", split="train", orig_width=640,
                      orig_height=360)
    frame = _frame()
    wav = (np.sin(np.arange(16000) / 10.0) * 20000).astype(np.int16)
    enc = encode_sample(meta, frame, wav, 16000, jpeg_quality=95)
    assert enc["__key__"] == "000000000042"
    assert all(isinstance(enc[k], bytes) for k in ("jpg", "flac", "json"))
    assert enc["jpg"][:2] == b"\xff\xd8" and enc["flac"][:4] == b"fLaC"
    dec, ignored = decode_sample(enc)
    assert ignored == [] and dec["__key__"] == "000000000042"
    assert dec["jpg"].shape == (32, 32, 3) and dec["jpg"].dtype == np.uint8
    assert np.abs(dec["jpg"].astype(int) - frame.astype(int)).mean() < 3.0      # JPEG is lossy
    assert dec["flac"].dtype == np.int16 and np.array_equal(dec["flac"], wav)   # FLAC is exact
    assert dec["json"] == json.loads(meta.to_json()) and SampleMeta.from_dict(dec["json"]) == meta


def test_float_audio_is_quantised_to_int16():
    wav = np.linspace(-1, 1, 1000).astype(np.float32)
    out = decode_audio(encode_flac(wav, 16000))
    assert out[0] == -32767 and out[-1] == 32767


def test_png_txt_cls_decoders():
    from io import BytesIO

    from PIL import Image
    buf = BytesIO()
    Image.fromarray(_frame(8)).save(buf, format="PNG")
    dec, _ = decode_sample({"png": buf.getvalue(), "txt": "héllo".encode(), "cls": b" 7\n"})
    assert np.array_equal(dec["png"], _frame(8)) and dec["txt"] == "héllo" and dec["cls"] == 7


def test_non_whitelisted_extensions_are_ignored_not_decoded(tmp_path):
    import pickle
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    payload = pickle.dumps(Evil())
    dec, ignored = decode_sample({"pyd": payload, "pickle": payload, "npy": b"x", "json": b"{}"})
    assert sorted(ignored) == ["npy", "pickle", "pyd"] and dec == {"json": {}}
    assert not marker.exists()
    assert "pyd" not in DECODERS and "pickle" not in DECODERS


@pytest.mark.parametrize("fn,data,reason", [(decode_image, b"\xff\xd8garbage", "bad_jpg"),
                                            (decode_audio, b"fLaC\x00\x00garbage", "bad_flac")])
def test_corrupt_entries_raise_decode_error(fn, data, reason):
    with pytest.raises(DecodeError) as e:
        fn(data)
    assert e.value.reason == reason


def test_encode_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        encode_jpeg(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        encode_flac(np.zeros((2, 100), np.int16), 16000)
