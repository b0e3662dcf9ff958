"""Shards on disk: atomic idempotent writing, the manifest, and a plain single-process reader with error accounting.

Layout (docs/INTERFACES.md): ``<out>/<split>-<shardno:06d>.tar`` plus ``<out>/manifest.json``. Each finished shard
also has a sidecar ``<name>.info.json`` (its :class:`ShardInfo` and whatever the producer wants to remember, e.g. the
ingest report of its videos). A shard is *finished* when it is listed in the manifest or its sidecar exists, and its
sha256 matches; a crash leaves at most a hidden ``.tmp`` file, never a final-named shard, and the next run
removes those of dead writers (:func:`sweep_stale_temps`).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import socket
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from avdet.fileio import TEMP_RE, path_under, safe_name, temp_name, write_atomic  # noqa: F401  (write_atomic:
#                                                                       re-exported as data.shards.write_atomic)
from data.health import DataHealth, SampleSpec, check_sample, limits_for
from data.schema import AUDIO_EXT, MEL_EXT, DecodeError, DecodeLimits, decode_sample
from data.tarread import iter_tar_members

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MAX_MEMBER_BYTES = 64 << 20      # a tar member larger than this is not read (its sample fails as entry_too_large)
MANIFEST_VERSION = 2             # 2: samples may carry the log-mel stored at ingest (config.store_logmel)
READABLE_VERSIONS = (1, 2)


@dataclass
class ShardInfo:
    path: str               # relative to the manifest's directory
    split: str
    count: int
    min_index: int
    max_index: int
    sha256: str


@dataclass
class Manifest:
    root: Path
    classes: list[str]
    shards: list[ShardInfo]
    config: dict = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def split_shards(self, split: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == split]

    def shard_path(self, info: ShardInfo) -> Path:
        return self.root / info.path

    def class_id(self, label: str | None) -> int:
        """Class id of a label name, or -1 (no label / unknown)."""
        if label is None:
            return -1
        ids = self.__dict__.setdefault("_ids", {c: i for i, c in enumerate(self.classes)})
        return ids.get(label, -1)

    def spec(self) -> SampleSpec:
        return SampleSpec.from_config(self.config)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()




def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(out_dir: Path, other_host_max_age_s: float = 24 * 3600.0) -> list[str]:
    """Delete temporary files left in ``out_dir`` by writers that were killed (SIGKILL, OOM, node loss): those of
    this host whose process is gone, and other hosts' ones older than ``other_host_max_age_s`` (a shared file
    system; their liveness cannot be checked from here). Returns the names removed (logged)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"
    removed = []
    for p in Path(out_dir).iterdir() if Path(out_dir).is_dir() else ():
        m = TEMP_RE.match(p.name)
        if m is None:
            continue
        if m["host"] == host:
            stale = not _pid_alive(int(m["pid"]))
        else:
            try:
                stale = time.time() - p.stat().st_mtime > other_host_max_age_s
            except FileNotFoundError:
                continue
        if stale:
            p.unlink(missing_ok=True)
            removed.append(p.name)
    if removed:
        log.warning("removed %d temporary file(s) left by killed writers in %s: %s", len(removed), out_dir,
                    ", ".join(sorted(removed)))
    return removed


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0o644, 0, 0, "", ""   # byte-identical reruns
    tar.addfile(ti, io.BytesIO(data))


class ShardWriter:
    """Writes finished shards into ``out_dir``; ``write`` is atomic and skips shards that are already finished."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        listed = self.out_dir / MANIFEST_NAME
        self._listed = {s.path: s for s in read_manifest(listed).shards} if listed.is_file() else {}

    @staticmethod
    def shard_name(split: str, shard_no: int) -> str:
        """``<split>-<shard_no:06d>.tar``; a split that is not a plain name (``../x``, ``/abs``) raises
        :class:`avdet.fileio.UnsafePathError`."""
        return f"{safe_name(split, 'shard split name')}-{shard_no:06d}.tar"

    def _sidecar(self, name: str) -> Path:
        return self.out_dir / f"{name}.info.json"

    def finished(self, name: str) -> tuple[ShardInfo, dict] | None:
        """(info, extra) of a finished shard whose file still matches its checksum, else None."""
        path = self.out_dir / name
        side = self._sidecar(name)
        extra: dict = {}
        info = self._listed.get(name)
        if side.is_file():
            d = json.loads(side.read_text())
            info, extra = ShardInfo(**d["shard"]), d.get("extra", {})
        if info is None or not path.is_file():
            return None
        if sha256_file(path) != info.sha256:
            log.warning("shard %s: checksum differs from its record; rewriting it", path)
            return None
        return info, extra

    def write(self, split: str, shard_no: int, samples: Iterable[dict[str, Any]],
              extra: dict | None = None, replace: bool = False) -> ShardInfo:
        """Write ``samples`` (``{"__key__": str, ext: bytes}``) as one shard; returns its info.

        Skips (without consuming ``samples``) when the shard is already finished, unless ``replace``. An exception
        while writing leaves no final-named file behind (a replaced shard stays as it was).
        """
        name = self.shard_name(split, shard_no)
        done = None if replace else self.finished(name)
        if done is not None:
            return done[0]
        path = self.out_dir / name
        tmp = temp_name(path)
        indices: list[int] = []
        try:
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for s in samples:
                    key = s["__key__"]
                    indices.append(int(key))
                    for ext in sorted(k for k in s if not k.startswith("__")):
                        _add_member(tar, f"{key}.{ext}", s[ext])
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            info = ShardInfo(path=name, split=split, count=len(indices), min_index=min(indices, default=-1),
                             max_index=max(indices, default=-1), sha256=sha256_file(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        side = {"shard": asdict(info), "extra": extra or {}}
        write_atomic(self._sidecar(name), json.dumps(side, indent=1).encode())
        return info


def write_manifest(out_dir: str | Path, shards: list[ShardInfo], classes: list[str], config: dict) -> Path:
    """Atomically write ``<out_dir>/manifest.json`` listing ``shards`` (sorted by split, path)."""
    path = Path(out_dir) / MANIFEST_NAME
    shards = sorted(shards, key=lambda s: (s.split, s.path))
    doc = {"version": MANIFEST_VERSION, "classes": list(classes), "shards": [asdict(s) for s in shards],
           "config": config}
    write_atomic(path, json.dumps(doc, indent=1).encode())
    return path


def read_manifest(path: str | Path) -> Manifest:
    """Manifest from ``manifest.json`` or from the directory that holds it."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist (run the ingest first)")
    doc = json.loads(path.read_text())
    if doc.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"manifest {path}: version {doc.get('version')!r}, this reader knows {READABLE_VERSIONS}")
    shards = [ShardInfo(**s) for s in doc["shards"]]
    for i, s in enumerate(shards):       # a shard path must stay under the manifest's directory
        path_under(path.parent, s.path, f"manifest {path}: shards[{i}].path")
    return Manifest(root=path.parent, classes=list(doc["classes"]), shards=shards,
                    config=doc.get("config", {}), version=doc["version"])


def verify_manifest(manifest: Manifest) -> list[str]:
    """Problems found (missing shard files, checksum mismatches, overlapping index ranges); empty when all is well."""
    problems = []
    for s in manifest.shards:
        p = manifest.shard_path(s)
        if not p.is_file():
            problems.append(f"shard {s.path}: file missing")
        elif sha256_file(p) != s.sha256:
            problems.append(f"shard {s.path}: sha256 mismatch (file changed after the manifest was written)")
    ranges = sorted((s.min_index, s.max_index, s.path) for s in manifest.shards if s.count > 0)
    for (_a0, a1, ap), (b0, _b1, bp) in zip(ranges, ranges[1:]):
        if b0 <= a1:
            problems.append(f"shards {ap} and {bp}: index ranges overlap")
    return problems


# --------------------------------------------------------------------------------------------------------------
# reading


def _split_name(name: str) -> tuple[str, str]:
    """``dir/000000000012.flac`` -> (``dir/000000000012``, ``flac``): webdataset's first-dot-of-basename rule."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def iter_tar_groups(path: str | Path, max_member_bytes: int = MAX_MEMBER_BYTES,
                    ) -> Iterator[tuple[str, list[tuple[str, bytes | None]]]]:
    """(key, [(ext, bytes), ...]) for consecutive tar members sharing a key; tar errors propagate after the groups
    read so far, the last of them with the members read whole before the error. Non-file members are skipped. A member larger than ``max_member_bytes`` (its tar header says so)
    is not read: its bytes are ``None``, which :func:`data.schema.decode_sample` refuses as ``entry_too_large``.
    The members come from :func:`data.tarread.iter_tar_members` (``tarfile``'s reading, without its per-member cost
    on plain ustar headers)."""
    key, entries = None, []
    try:
        for name, data in iter_tar_members(path, max_member_bytes):
            k, ext = _split_name(name)
            if k != key and key is not None:
                yield key, entries
                entries = []
            key = k
            entries.append((ext, data))
    except (tarfile.TarError, EOFError, OSError):
        if key is not None:   # the members read whole before the error: decoded or counted, not dropped
            yield key, entries
        raise
    if key is not None:
        yield key, entries


def iter_shard_samples(path: str | Path, health: DataHealth, spec: SampleSpec | None = None,
                       expected_count: int | None = None,
                       raw: Iterator[tuple[str, list]] | None = None,
                       limits: DecodeLimits | None = None) -> Iterator[dict[str, Any]]:
    """Decoded samples of one shard, skipping (and counting in ``health``) every sample that is unusable.

    Yields ``{"key": str, "shard": str, "frame": (H, W, 3) uint8, "audio": (S,) int16, "meta": dict}``; with a
    ``spec.mel`` the stored log-mel instead of the audio: ``"mel": (n_mels, T) float16``, ``"audio": None``.
    ``raw`` replaces the shard's own (key, entries) groups, e.g. a shuffled list of them. ``limits`` (default: the
    spec's, :meth:`data.health.SampleSpec.limits`) bound every entry before it is decoded; an entry over them is a
    skipped sample (``image_too_large``, ``audio_too_long``, ``json_too_large``, ``json_too_deep``).
    """
    name = Path(path).name
    limits = limits if limits is not None else limits_for(spec)
    seen_keys: set[str] = set()
    n = 0
    try:
        for key, entries in (raw if raw is not None else iter_tar_groups(path)):
            n += 1
            health.seen += 1
            exts = [e for e, _ in entries]
            if key in seen_keys or len(set(exts)) != len(exts):
                health.bad_sample(name, key, "duplicate_key", f"entries {exts} (key seen before in this shard)")
                continue
            seen_keys.add(key)
            sample = _decode_checked(name, key, dict(entries), health, spec, limits)
            if sample is not None:
                health.good += 1
                yield sample
    except (tarfile.TarError, EOFError, OSError) as e:
        lost = max(1, (expected_count or 0) - n)
        health.seen += lost
        health.bad_sample(name, f"after {n} samples", "corrupt_tar", f"{type(e).__name__}: {e}", count=lost)


def _decode_checked(shard: str, key: str, raw: dict[str, bytes], health: DataHealth,
                    spec: SampleSpec | None, limits: DecodeLimits) -> dict[str, Any] | None:
    use_mel = spec is not None and spec.mel is not None
    unused = AUDIO_EXT if use_mel else MEL_EXT  # the stored log-mel replaces the FLAC, or is not read at all
    try:
        dec, ignored = decode_sample(raw, only=tuple(e for e in raw if e != unused), limits=limits)
    except DecodeError as e:
        health.bad_sample(shard, key, e.reason, e.detail)
        return None
    for ext in ignored:
        if ext != unused:
            health.ignored[ext] += 1
    problem = check_sample(key, dec, spec)
    if problem is not None:
        health.bad_sample(shard, key, *problem)
        return None
    return {"key": key, "shard": shard, "frame": dec["jpg"], "audio": dec.get(AUDIO_EXT),
            "mel": dec[MEL_EXT].values if use_mel else None, "meta": dec["json"]}


def iter_samples(manifest: Manifest | str | Path, split: str, max_bad_fraction: float = 0.01,
                 health: DataHealth | None = None) -> Iterator[dict[str, Any]]:
    """Every readable sample of ``split``, in manifest order, single process (see :func:`iter_shard_samples`).

    After each shard, raises :class:`data.health.DataHealthError` if more than ``max_bad_fraction`` of the samples
    seen so far were unusable. Pass ``health`` to read the counts afterwards.
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    health = health if health is not None else DataHealth()
    spec = manifest.spec()
    for info in manifest.split_shards(split):
        yield from iter_shard_samples(manifest.shard_path(info), health, spec, info.count)
        health.check(max_bad_fraction, info.path)
    if health.bad_total:
        log.warning("split %s: %s", split, health.summary())


# ---------------------------------------------------------------------------------------------------------------
# the split's samples outside the stream: the one place besides the stream that opens a shard and parses its keys


def list_indices(manifest: Manifest, split: str) -> list[int]:
    """Global indices of every sample of ``split``, from the tar headers alone (keys are
    :func:`data.schema.sample_key`); no payload is read. An unreadable shard is logged and contributes what was
    listed before the error."""
    out: set[int] = set()
    for info in manifest.split_shards(split):
        try:
            with tarfile.open(manifest.shard_path(info), mode="r|") as tar:
                for member in tar:
                    stem = _split_name(member.name)[0].rpartition("/")[2]
                    if member.isfile() and stem.isdigit():
                        out.add(int(stem))
        except (tarfile.TarError, OSError, EOFError) as e:
            log.warning("shard %s: unreadable (%s); kept the %d indices listed before it", info.path, e, len(out))
    return sorted(out)


@dataclass
class SampleMeta:
    """What a split's samples are, without their frames and audio: sorted by ``index``; ``label`` the class id
    (-1 unknown); ``file_name`` ``"<shard>#<key>"``; ``height``/``width`` the frame size (ingest makes every frame
    of a manifest the same size)."""
    index: list[int]
    video_id: list[str]
    timestamp: list[float]
    label: list[int]
    file_name: list[str]
    height: int
    width: int


def read_sample_meta(manifest: Manifest, split: str) -> SampleMeta:
    """Every sample of ``split`` from the shards' ``json`` members (bounded, never unpickled) and the frame size
    from the first ``jpg`` header. Samples whose json is unusable are logged and left out; an unreadable shard keeps
    what was read before the error."""
    from PIL import Image

    from data.schema import decode_json
    ids = {c: i for i, c in enumerate(manifest.classes)}
    rows, size = [], None
    for info in manifest.split_shards(split):
        try:
            for key, entries in iter_tar_groups(manifest.shard_path(info)):
                ent = dict(entries)
                if ent.get("json") is None:
                    continue
                try:
                    meta = decode_json(ent["json"])
                    rows.append((int(meta["index"]), str(meta["video_id"]), float(meta["timestamp"]),
                                 ids.get(meta.get("label"), -1), f"{info.path}#{key}"))
                except (DecodeError, KeyError, TypeError, ValueError) as e:
                    log.warning("shard %s: sample %s has unusable json (%s); left out", info.path, key, e)
                    continue
                if size is None and ent.get("jpg") is not None:
                    with Image.open(io.BytesIO(ent["jpg"])) as im:
                        size = (im.height, im.width)
        except (tarfile.TarError, OSError, EOFError) as e:
            log.warning("shard %s: unreadable (%s); kept the samples read before it", info.path, e)
    rows.sort()
    h, w = size or (0, 0)
    return SampleMeta(*(list(c) for c in zip(*rows)), height=h, width=w) if rows else \
        SampleMeta([], [], [], [], [], h, w)


def read_frames(manifest: Manifest, split: str, indices: Iterable[int]) -> dict[int, np.ndarray]:
    """Decode only the frames of ``indices``: {index: (H, W, 3) uint8}, opening only the shards whose index range
    holds one of them."""
    from PIL import Image
    wanted = {int(i) for i in indices}
    keys = {f"{i:012d}" for i in wanted}
    out: dict[int, np.ndarray] = {}
    for info in manifest.split_shards(split):
        if not any(info.min_index <= i <= info.max_index for i in wanted):
            continue
        for key, entries in iter_tar_groups(manifest.shard_path(info)):
            jpg = dict(entries).get("jpg")
            if key in keys and jpg is not None:
                with Image.open(io.BytesIO(jpg)) as im:
                    out[int(key)] = np.asarray(im.convert("RGB"))
    return out
