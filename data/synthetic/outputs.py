"""Writing the synthetic dataset's files: mp4 clips, the VGGSound-format CSV, COCO ground truth. All atomic
(a temporary name in the same directory, then ``rename``), so a killed run never leaves a half file under the
final name. Temporaries are ``avdet.fileio.temp_name``s (``.<name>.tmp-<host>-<pid>-<id>``): the next run's
``data.shards.sweep_stale_temps`` recognises and removes those of dead writers."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from avdet.fileio import temp_name


def atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path`` naming this writer (rename it onto ``path`` when complete)."""
    return temp_name(Path(path))


def write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int, sample_rate: int, crf: int) -> None:
    """H.264 (yuv420p) + AAC mono mp4 at ``path``, atomically. frames uint8 (T, H, W, 3); audio float32 (S,)."""
    tmp = atomic_path(path)
    with av.open(str(tmp), "w", format="mp4") as box:   # the temp name has no .mp4 suffix: say the container
        video = box.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        # x264's CRF path with its assembly made a clip's video differ from run to run and with what the process
        # had encoded before (measured 2026-12-03: 1-12 % of decoded pixels); its C code gives the same bytes
        # (~1.5x the encode time, a few ms per clip). One thread: the Pool parallelises across clips.
        video.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
        video.codec_context.thread_count = 1
        sound = box.add_stream("aac", rate=sample_rate)
        sound.layout = "mono"
        for t, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = t
            box.mux(video.encode(frame))
        box.mux(video.encode())
        chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, :], np.float32), format="fltp",
                                           layout="mono")
        chunk.sample_rate, chunk.pts = sample_rate, 0
        box.mux(sound.encode(chunk))
        box.mux(sound.encode(None))
    tmp.replace(path)


def vggsound_csv(rows: list[tuple[str, str, str]]) -> str:
    """VGGSound's CSV (no header): ``youtube_id,start_seconds,label,split`` from (video_id, label, split) rows."""
    return "".join(f"{vid},0,{label},{split}\n" for vid, label, split in rows)


@dataclass
class CocoBuilder:
    """Accumulates per-frame images and per-object annotations of one split in COCO form."""
    classes: list[str]
    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)

    def add_frame(self, image_id: int, video_id: str, frame_index: int, fps: int, size: int,
                  objects: list[tuple[int, bool, tuple[int, int, int, int], int]]) -> None:
        """One frame; ``objects`` are (class_index, sounding, (x0, y0, x1, y1), instance) of visible objects."""
        ts = round(frame_index / fps, 6)
        self.images.append({"id": image_id, "file_name": f"{video_id}@{ts}", "video_id": video_id,
                            "timestamp": ts, "frame_index": frame_index, "width": size, "height": size})
        for cls, sounding, (x0, y0, x1, y1), instance in objects:
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": image_id, "category_id": cls,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                "sounding": bool(sounding), "instance": instance})

    def to_dict(self) -> dict:
        """The COCO dict; ``category_id`` is the class's index in classes.json."""
        return {"info": {"description": "avdet synthetic instruments benchmark",
                         "category_id": "index into classes.json"},
                "images": self.images, "annotations": self.annotations,
                "categories": [{"id": i, "name": n, "supercategory": "object"} for i, n in enumerate(self.classes)]}
