"""data.tarread: the members tarfile would give, from the fast ustar walk and from its hand-over to tarfile."""
import io
import tarfile

import pytest

from data import tarread
from data.tarread import iter_tar_members


def _tar(path, members, fmt=tarfile.USTAR_FORMAT):
    """members: [(name, bytes | None for a directory | ("link", target))]."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif isinstance(data, tuple):
                ti.type, ti.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return path


def _by_tarfile(path, max_bytes):
    with tarfile.open(path, mode="r|") as tar:
        return [(m.name, tar.extractfile(m).read() if m.size <= max_bytes else None) for m in tar if m.isfile()]


MEMBERS = [("a/000001.json", b'{"index": 1}'), ("a/000001.jpg", bytes(range(256)) * 7), ("a/", None),
           ("a/000002.json", b""), ("b" * 60 + "/" + "c" * 60 + ".flac", b"x" * 513), ("link", ("link", "a/000001.jpg")),
           ("a/000002.jpg", b"y" * 1024)]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_members_and_order_are_tarfiles_in_every_format(tmp_path, fmt):
    path = _tar(tmp_path / "x.tar", MEMBERS + [("d" * 120 + ".json", b"long")] * (fmt != tarfile.USTAR_FORMAT), fmt)
    for max_bytes in (1 << 20, 600):            # 600: the 7 * 256-byte and 1024-byte members are not read
        got = list(iter_tar_members(path, max_bytes))
        assert got == _by_tarfile(path, max_bytes)
        assert ("a/000001.jpg", None if max_bytes == 600 else bytes(range(256)) * 7) in got


def test_our_shards_never_reach_tarfile(tmp_path, monkeypatch):
    """The speed claim: a ShardWriter shard (USTAR headers, split long names) is walked without tarfile."""
    path = _tar(tmp_path / "x.tar", [m for m in MEMBERS if not isinstance(m[1], tuple)])
    monkeypatch.setattr(tarread, "_tarfile_members", lambda *a: pytest.fail("handed over to tarfile"))
    assert [n for n, _ in iter_tar_members(path, 1 << 20)][-1] == "a/000002.jpg"


def test_a_pax_member_hands_the_rest_to_tarfile(tmp_path):
    path = _tar(tmp_path / "x.tar", [("a.json", b"1"), ("é" * 70 + ".jpg", b"2"), ("b.json", b"3")], tarfile.PAX_FORMAT)
    assert [d for _, d in iter_tar_members(path, 1 << 20)] == [b"1", b"2", b"3"]


def test_cut_data_is_an_error_after_the_members_before_it(tmp_path):
    path = _tar(tmp_path / "x.tar", MEMBERS)
    raw = path.read_bytes()
    path.write_bytes(raw[:raw.index(b"y" * 100) + 10])        # inside the last member's data
    got = []
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        for m in iter_tar_members(path, 1 << 20):
            got.append(m[0])
    assert got == [n for n, d in MEMBERS if isinstance(d, bytes)][:-1]


def test_an_empty_or_headless_file_is_an_error(tmp_path):
    (tmp_path / "e.tar").write_bytes(b"")
    (tmp_path / "h.tar").write_bytes(b"x" * 100)
    (tmp_path / "g.tar").write_bytes(b"\x01" * 1024)
    for name, match in (("e.tar", "empty file"), ("h.tar", "truncated header"), ("g.tar", "invalid header")):
        with pytest.raises(tarfile.ReadError, match=match):
            list(iter_tar_members(tmp_path / name, 1 << 20))


def test_a_damaged_later_header_is_an_error_not_the_archives_end(tmp_path):
    """tarfile alone stops at a bad header after the first without a word; the walk says so."""
    path = _tar(tmp_path / "x.tar", [("a.json", b"1"), ("b.json", b"2"), ("c.json", b"3")])
    raw = bytearray(path.read_bytes())
    raw[1024 + 148] ^= 0x7                                    # the second header's checksum
    path.write_bytes(bytes(raw))
    assert [n for n, _ in _by_tarfile(path, 1 << 20)] == ["a.json"]
    got = []
    with pytest.raises(tarfile.ReadError, match="checksum"):
        for m in iter_tar_members(path, 1 << 20):
            got.append(m[0])
    assert got == ["a.json"]


def test_a_shard_with_a_damaged_later_header_keeps_the_samples_before_it_and_says_where(tmp_path):
    """Through the shard reader: the samples before the damaged header are read, the rest counted as corrupt_tar
    under the shard's name (tarfile alone would have dropped them without a word)."""
    from data.health import DataHealth
    from data.shards import iter_shard_samples
    from tests.shardkit import write_dataset
    from data.shards import read_manifest
    write_dataset(tmp_path, [6])
    m = read_manifest(tmp_path)
    path = m.shard_path(m.shards[0])
    raw = bytearray(path.read_bytes())
    offsets = [o for o in range(0, len(raw), 512) if raw[o + 257:o + 263] == b"ustar\x00"]
    members_per_sample = len(offsets) // 6
    raw[offsets[3 * members_per_sample] + 148] ^= 0x7          # the 4th sample's first header
    path.write_bytes(bytes(raw))
    health = DataHealth()
    kept = list(iter_shard_samples(path, health, m.spec(), expected_count=6))
    assert [s["meta"]["index"] for s in kept] == [0, 1, 2]
    assert health.bad["corrupt_tar"] == 3 and path.name in health.summary()
