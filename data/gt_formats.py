"""The field's test annotations converted into our evaluation ground truth (COCO, as ``gt_test.json``).

Output: ``{"images": [{"id", "video_id", "timestamp", "width", "height", "file_name"}], "annotations": [{"id",
"image_id", "category_id", "bbox" [x, y, w, h], "area", "iscrowd": 0, "sounding", "annotator"?}], "categories":
[{"id", "name"}]}``. ``distributed.evaluation.frames`` joins an image to the ingested frame of the same ``video_id`` nearest
``timestamp`` (seconds from the start of the clip file ingest read) and rescales boxes from ``width`` × ``height``;
categories are matched to the manifest's classes by *name*. Formats with normalised boxes keep them normalised with
``width = height = 1``. An entry with no box stays an image without objects (a frame that must have no detection).

Accepted layouts (the files as their authors distribute them):

- **VGG-SS** (``vggss.json``, Chen et al. 2021; read by the LVS / EZ-VSL code): a JSON list of
  ``{"file": "<youtube_id>_<start, 6 digits>", "class": "<VGGSound label>", "bbox": [[x0, y0, x1, y1], ...]}`` with
  corners normalised to [0, 1]. ``video_id`` = the YouTube id; the annotated frame is the clip's centre frame,
  ``timestamp`` = 5.0 s into the 10-s clip unless told otherwise.
- **Flickr-SoundNet** test set (``Annotations/<id>.xml``, Senocak et al.): one XML file per image; every ``bbox``
  element is one annotator's box, in the 256 × 256 pixel space the LVS / EZ-VSL code reads it in
  (``int(224 * v / 256)``). Its coordinates are the children ``xmin, ymin, xmax, ymax`` when so named, else the
  last four children in order (that code skips the first child). ``video_id`` = the file stem; each box gets
  ``annotator`` = its order in the file, so the evaluation builds the consensus map (two annotators' agreement = 1).
  The set has no classes: every box gets one category name of your choice.
- **DSOL MUSIC** (``solotest.json`` / ``duettest.json``, Hu et al. 2020): ``{"<video>_<a>_<b>/frame_<SSS>/<NNNNN>.jpg":
  {"bbox": [{"box": [x, y, w, h] pixels, "normbox": [...], "category_id": k, "sounding"?}], "wdith" | "width": W,
  "height": H}}`` (the released files spell ``wdith``). ``video_id`` = the first path part without the
  ``_<a>_<b>`` suffix; ``timestamp`` = NNNNN / fps (the released frames are numbered at 30 fps: NNNNN // 30 = SSS,
  which is checked). Category ids are named through the ``category_names`` you give.
- **DSOL AudioSet-instrument** (``audioset_box.json``): ``{"<youtube_id>/<second>": {"bbox": [{"category": k,
  "normbox": [x, y, w, h], "sounding"?}]}}``, boxes normalised. ``timestamp`` = second + ``offset`` (the time of
  the frame your ingest keeps in that second; 0 by default).

- **OpenImages** boxes (``test-annotations-bbox.csv`` / ``validation-annotations-bbox.csv``, Kuznetsova et al.):
  a header ``ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,
  IsInside``, one box per row, corners normalised to [0, 1], ``LabelName`` a ``/m/...`` MID named by
  ``class-descriptions-boxable.csv`` (``MID,Display name``, no header). A folder of still images: ``file_name`` =
  ``<ImageID>.jpg`` under the image folder, whose pixel size is read from the file and the boxes scaled to it;
  ``video_id`` = the ImageID, ``timestamp`` 0. Only boxes of the chosen classes are kept, and only images with one
  of them that the folder holds; ``IsGroupOf`` boxes become ``iscrowd`` 1 (COCO's rule: never a false negative).

DSOL's files carry no sounding/silent flag: boxes are sounding unless a box has ``"sounding": false``.
"""
from __future__ import annotations

import csv
import json
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Mapping

log = logging.getLogger(__name__)

__all__ = ["CocoGT", "from_vggss", "from_flickr_xml", "from_dsol_music", "from_dsol_audioset", "from_openimages",
           "FORMATS", "convert"]


class CocoGT:
    """Accumulates images and boxes; categories are numbered by first appearance (ids 0, 1, ...)."""

    def __init__(self, categories: Iterable[str] = ()):
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.cat_ids: dict[str, int] = {}
        for c in categories:
            self.category(c)

    def category(self, name: str) -> int:
        return self.cat_ids.setdefault(str(name), len(self.cat_ids))

    def image(self, video_id: str, timestamp: float, width: float, height: float, file_name: str) -> int:
        iid = len(self.images) + 1
        self.images.append({"id": iid, "video_id": str(video_id), "timestamp": round(float(timestamp), 6),
                            "width": width, "height": height, "file_name": file_name})
        return iid

    def box(self, image_id: int, category: str, x0: float, y0: float, x1: float, y1: float, sounding: bool = True,
            annotator: int | None = None, iscrowd: int = 0) -> None:
        if x1 < x0 or y1 < y0:
            raise ValueError(f"image {self.images[image_id - 1]['file_name']!r}: box ({x0}, {y0}, {x1}, {y1}) has "
                             "its corners swapped")
        ann = {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": self.category(category),
               "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": int(iscrowd),
               "sounding": bool(sounding)}
        if annotator is not None:
            ann["annotator"] = int(annotator)
        self.annotations.append(ann)

    def to_dict(self, source: str) -> dict:
        return {"info": {"source": source}, "images": self.images, "annotations": self.annotations,
                "categories": [{"id": i, "name": n} for n, i in self.cat_ids.items()]}


def _clip01(v: float) -> float:
    return min(max(float(v), 0.0), 1.0)


def from_vggss(doc: list[dict], timestamp: float = 5.0) -> dict:
    """VGG-SS ``vggss.json`` (parsed) -> ground truth; see the module doc. Corners are clipped to [0, 1] as the
    field's code does."""
    gt = CocoGT()
    for entry in doc:
        m = re.fullmatch(r"(.+)_(\d+)", str(entry["file"]))
        if m is None:
            raise ValueError(f"VGG-SS entry {entry['file']!r}: expected '<youtube_id>_<start seconds>'")
        iid = gt.image(m.group(1), timestamp, 1, 1, str(entry["file"]))
        for b in entry.get("bbox", []):
            x0, y0, x1, y1 = (_clip01(v) for v in b)
            gt.box(iid, entry["class"], x0, y0, x1, y1)
    return gt.to_dict("VGG-SS")


def _xml_box(el: ET.Element) -> list[float]:
    named = {c.tag.lower(): c.text for c in el}
    if all(k in named for k in ("xmin", "ymin", "xmax", "ymax")):
        return [float(named[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
    values = [c.text for c in el]
    if len(values) < 4:
        raise ValueError(f"bbox element with {len(values)} children; expected xmin, ymin, xmax, ymax")
    return [float(v) for v in values[-4:]]


def from_flickr_xml(xml_files: Iterable[str | Path], category: str = "sound_source", size: int = 256,
                    timestamp: float = 0.0) -> dict:
    """Flickr-SoundNet ``Annotations/*.xml`` -> ground truth with one ``annotator`` per box; see the module doc."""
    gt = CocoGT([category])
    for path in sorted(Path(p) for p in xml_files):
        iid = gt.image(path.stem, timestamp, size, size, path.name)
        try:
            boxes = [_xml_box(el) for el in ET.parse(path).getroot().iter("bbox")]
        except (ET.ParseError, ValueError) as e:
            raise ValueError(f"Flickr-SoundNet annotation {path}: {e}") from e
        for a, (x0, y0, x1, y1) in enumerate(boxes):
            gt.box(iid, category, x0, y0, x1, y1, annotator=a)
    return gt.to_dict("Flickr-SoundNet")


def _name(category_names: Mapping | list, k, where: str) -> str:
    items = enumerate(category_names) if isinstance(category_names, list) else category_names.items()
    names = {str(key): v for key, v in items}
    if str(k) not in names:
        raise ValueError(f"{where}: category id {k} has no name in category_names ({sorted(names)})")
    return names[str(k)]


def from_dsol_music(doc: dict, category_names: Mapping, fps: float = 30.0) -> dict:
    """DSOL MUSIC ``solotest.json`` / ``duettest.json`` (parsed) -> ground truth in pixels; see the module doc."""
    gt = CocoGT()
    for key in sorted(doc):
        m = re.fullmatch(r"([^/]+?)(?:_\d+_\d+)?/frame_(\d+)/(\d+)\.\w+", key)
        if m is None:
            raise ValueError(f"DSOL entry {key!r}: expected '<video>_<a>_<b>/frame_<SSS>/<NNNNN>.jpg'")
        t = int(m.group(3)) / fps
        if int(t) != int(m.group(2)):
            raise ValueError(f"DSOL entry {key!r}: frame {m.group(3)} at {fps} fps is t = {t:.2f} s, not in second "
                             f"{int(m.group(2))}: pass the fps the frames are numbered at")
        entry = doc[key]
        iid = gt.image(m.group(1), t, entry.get("width", entry.get("wdith")), entry["height"], key)
        for b in entry.get("bbox", []):
            x, y, w, h = b["box"]
            gt.box(iid, _name(category_names, b["category_id"], key), x, y, x + w, y + h, b.get("sounding", True))
    return gt.to_dict("DSOL MUSIC")


def from_dsol_audioset(doc: dict, category_names: Mapping, offset: float = 0.0) -> dict:
    """DSOL ``audioset_box.json`` (parsed) -> ground truth, boxes normalised; see the module doc."""
    gt = CocoGT()
    for key in sorted(doc):
        vid, _, second = key.rpartition("/")
        if not vid or not second.isdigit():
            raise ValueError(f"DSOL AudioSet entry {key!r}: expected '<youtube_id>/<second>'")
        iid = gt.image(vid, int(second) + offset, 1, 1, key)
        for b in doc[key].get("bbox", []):
            x, y, w, h = (float(v) for v in b["normbox"])
            gt.box(iid, _name(category_names, b["category"], key), _clip01(x), _clip01(y), _clip01(x + w),
                   _clip01(y + h), b.get("sounding", True))
    return gt.to_dict("DSOL AudioSet-instrument")


def read_openimages_descriptions(path: str | Path) -> dict[str, str]:
    """``class-descriptions-boxable.csv`` -> {MID: display name}."""
    with open(path, newline="") as f:
        return {r[0].strip(): r[1].strip() for r in csv.reader(f) if len(r) >= 2}


def from_openimages(box_rows: Iterable[dict], descriptions: Mapping[str, str], images_dir: str | Path,
                    classes: Iterable[str] | None = None, ext: str = "jpg") -> dict:
    """OpenImages box rows (``csv.DictReader`` of the box CSV) -> ground truth in image pixels; see the module doc.
    ``classes``: display names to keep (case-insensitive; None = every class with a box); categories are numbered
    in that order."""
    from PIL import Image

    by_name = {n.casefold(): mid for mid, n in descriptions.items()}
    if classes is not None:
        classes = list(classes)
        unknown = [c for c in classes if c.casefold() not in by_name]
        if unknown:
            raise ValueError(f"OpenImages classes {unknown} are not display names in class-descriptions-boxable.csv")
        keep = {by_name[c.casefold()]: descriptions[by_name[c.casefold()]] for c in classes}
    else:
        keep = dict(descriptions)
    boxes: dict[str, list[dict]] = {}
    for r in box_rows:
        if r["LabelName"] in keep:
            boxes.setdefault(r["ImageID"], []).append(r)
    gt = CocoGT(keep.values() if classes is not None else ())
    absent = []
    for image_id in sorted(boxes):
        path = Path(images_dir) / f"{image_id}.{ext}"
        if not path.is_file():
            absent.append(image_id)
            continue
        with Image.open(path) as im:               # the header only
            W, H = im.size
        iid = gt.image(image_id, 0.0, W, H, path.name)
        for r in boxes[image_id]:
            x0, x1, y0, y1 = (_clip01(r[k]) * s for k, s in (("XMin", W), ("XMax", W), ("YMin", H), ("YMax", H)))
            gt.box(iid, keep[r["LabelName"]], x0, y0, x1, y1, iscrowd=int(r.get("IsGroupOf", "0") == "1"))
    if absent:
        log.warning("OpenImages: %d of %d images with boxes of the chosen classes are not in %s (left out), e.g. %s",
                    len(absent), len(boxes), images_dir, absent[0])
    return gt.to_dict("OpenImages")


FORMATS = ("vggss", "flickr", "dsol-music", "dsol-audioset", "openimages")


def convert(fmt: str, source: str | Path, *, category_names: Mapping | list | None = None,
            timestamp: float | None = None, fps: float = 30.0, category: str = "sound_source",
            descriptions: str | Path | None = None, images_dir: str | Path | None = None,
            classes: Iterable[str] | None = None) -> dict:
    """Read ``source`` (a file, or for ``flickr`` a directory of XML files) in format ``fmt`` -> ground truth.
    ``category_names``: {id: name} or a list indexed by id (DSOL formats); ``timestamp``: VGG-SS / Flickr frame
    time, DSOL AudioSet offset; ``descriptions``, ``images_dir``, ``classes``: OpenImages (its class names file, the
    image folder, the display names to keep)."""
    source = Path(source)
    if fmt == "openimages":
        if not descriptions or not images_dir:
            raise ValueError("format 'openimages' needs the class descriptions (class-descriptions-boxable.csv) and "
                             "the image folder")
        with open(source, newline="") as f:
            return from_openimages(csv.DictReader(f), read_openimages_descriptions(descriptions), images_dir,
                                   classes)
    if fmt == "flickr":
        files = sorted(source.glob("*.xml")) if source.is_dir() else [source]
        if not files:
            raise ValueError(f"{source}: no .xml annotation files")
        return from_flickr_xml(files, category, timestamp=timestamp or 0.0)
    doc = json.loads(source.read_text())
    if fmt == "vggss":
        return from_vggss(doc, 5.0 if timestamp is None else timestamp)
    if category_names is None:
        raise ValueError(f"format {fmt!r} numbers its categories: give their names (category id -> name)")
    if fmt == "dsol-music":
        return from_dsol_music(doc, category_names, fps)
    if fmt == "dsol-audioset":
        return from_dsol_audioset(doc, category_names, timestamp or 0.0)
    raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")
