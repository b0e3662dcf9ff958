"""data.schema: encode -> decode round trips and the extension whitelist."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from data import schema
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


def _jpeg(img: np.ndarray | Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, format="JPEG", **save)
    return buf.getvalue()


def _pil_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("save", [{}, {"quality": 95, "subsampling": 0}, {"progressive": True},
                                  {"quality": 40, "subsampling": 1, "optimize": True}])
@pytest.mark.parametrize("size", [(128, 128), (37, 90)])
def test_a_colour_jpeg_decodes_to_the_same_pixels_as_pil(save, size):
    """decode_image takes colour JPEGs past PIL (torchvision's libjpeg-turbo): the pixels must be PIL's, exactly, or
    every stream's batches would change."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(h * w).integers(0, 40, (h, w, 3))
    img = np.clip(np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1) + noise, 0, 255).astype(np.uint8)
    data = _jpeg(img, **save)
    assert schema._jpeg_frame_header(data) == (w, h)                  # it does take the torchvision path
    got = decode_image(data)
    assert got.shape == (h, w, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, _pil_rgb(data))


def test_only_colour_huffman_jpegs_leave_pil():
    """The header walk takes 8-bit, 3-component Huffman frames only; everything else is PIL's, as before."""
    rgb = np.full((8, 12, 3), 100, np.uint8)
    assert schema._jpeg_frame_header(_jpeg(rgb)) == (12, 8)
    grey = _jpeg(Image.fromarray(rgb[..., 0], "L"))
    cmyk = _jpeg(Image.new("CMYK", (12, 8), (10, 20, 30, 40)))
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    for other in (grey, cmyk, png.getvalue(), b"", b"\xff\xd8", _jpeg(rgb)[:20]):
        assert schema._jpeg_frame_header(other) is None
    for other in (grey, cmyk, png.getvalue()):
        np.testing.assert_array_equal(decode_image(other), _pil_rgb(other))


def test_a_cut_colour_jpeg_is_a_bad_jpg_saying_why():
    data = _jpeg(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert schema._jpeg_frame_header(data[: len(data) // 2]) == (64, 64)    # its header is whole, its scan is cut
    with pytest.raises(DecodeError) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.reason == "bad_jpg" and "truncated" in e.value.detail and "csrc" not in e.value.detail
