"""The members of an uncompressed tar, streamed: POSIX ustar headers parsed here, anything else by :mod:`tarfile`.

Python's ``tarfile`` builds a ``TarInfo`` per member (about 35 µs each on the machines of docs/ENVIRONMENT.md: a
third of a 128² sample's read, JPEG decode included). Our shards (``ShardWriter``, webdataset's ``TarWriter``) hold
plain POSIX ustar headers, which take a checksum and three fields to walk. :func:`iter_tar_members` reads those
itself and hands the rest of the archive to ``tarfile`` in stream mode from the first header it does not take
(pax or GNU extensions, other magic, links, devices, base-256 sizes, a bad checksum), so what it yields is what
``tarfile`` would. One difference: a damaged header after the first one is an error here (``tarfile.ReadError``),
where ``tarfile`` alone would have taken it for the end of the archive and dropped the rest without a word.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator

BLOCK = 512
_USTAR = b"ustar\x0000"         # POSIX ustar magic + version (tarfile's USTAR and PAX formats)
_REGULAR = (b"0", b"\x00")
_DIRECTORY = b"5"


def iter_tar_members(path: str | Path, max_member_bytes: int) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) of every regular file member in order; ``data`` is ``None`` for a member larger than
    ``max_member_bytes`` (not read). Non-file members are skipped. Raises ``tarfile.ReadError`` (a
    ``tarfile.TarError``) on an empty file, a bad first header, or data cut short, after the members before it."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while True:
            header = f.read(BLOCK)
            if len(header) < BLOCK or header.count(0) == BLOCK:       # the end, as tarfile reads it
                if pos == 0 and len(header) < BLOCK:
                    raise tarfile.ReadError("empty file" if not header else "truncated header")
                return
            member = _ustar_member(header)
            if member is None:                                     # not ours to parse: tarfile from here on
                f.seek(pos)
                yield from _tarfile_members(f, max_member_bytes)
                return
            name, kind, n = member
            end = pos + BLOCK + n + (-n % BLOCK)
            if end > size:
                raise tarfile.ReadError("unexpected end of data")
            if kind == _DIRECTORY or (kind == b"\x00" and name.endswith("/")):
                f.seek(end)
            elif n > max_member_bytes:
                f.seek(end)
                yield name, None
            else:
                data = f.read(n)
                f.seek(end)
                yield name, data
            pos = end


def _ustar_member(header: bytes) -> tuple[str, bytes, int] | None:
    """(name, type flag, size) of a POSIX ustar header of a regular file or directory with a valid checksum;
    ``None`` for anything else."""
    kind = header[156:157]
    if header[257:265] != _USTAR or (kind not in _REGULAR and kind != _DIRECTORY) or header[124] & 0x80:
        return None
    try:
        stored = int(header[148:156].split(b"\x00", 1)[0].strip() or b"0", 8)
        n = int(header[124:136].split(b"\x00", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    if stored != sum(header[:148]) + sum(header[156:]) + 256:       # the checksum field counted as 8 spaces
        return None
    name = header[:100].split(b"\x00", 1)[0]
    prefix = header[345:500].split(b"\x00", 1)[0]
    if prefix:
        name = prefix + b"/" + name
    name = name.decode(tarfile.ENCODING, "surrogateescape")
    return (name.rstrip("/") if kind == _DIRECTORY else name), kind, n


def _tarfile_members(f: BinaryIO, max_member_bytes: int) -> Iterator[tuple[str, bytes | None]]:
    with tarfile.open(fileobj=f, mode="r|") as tar:
        for m in tar:
            if m.isfile():
                yield m.name, (tar.extractfile(m).read() if m.size <= max_member_bytes else None)
