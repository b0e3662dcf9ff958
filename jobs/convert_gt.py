"""Convert the field's test annotations into our evaluation ground truth (data/gt_formats.py documents each layout).

    python jobs/convert_gt.py vggss vggss.json gt_test.json [--timestamp 5.0]
    python jobs/convert_gt.py flickr Annotations/ gt_test.json [--category sound_source] [--timestamp 0]
    python jobs/convert_gt.py dsol-music solotest.json gt_test.json --category-names names.json [--fps 30]
    python jobs/convert_gt.py dsol-audioset audioset_box.json gt_test.json --category-names names.json [--timestamp 0]
    python jobs/convert_gt.py openimages test-annotations-bbox.csv gt_openimages.json \
        --descriptions class-descriptions-boxable.csv --images test/ --classes names.txt

``names.txt`` (OpenImages): the display names to keep, one per line (a class-list file; first column).
``names.json``: the DSOL category ids' names, ``{"1": "accordion", ...}`` or a list indexed by id. The names must be
the manifest's class names for class-aware evaluation.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avdet.fileio import write_json  # noqa: E402
from data.gt_formats import FORMATS, convert  # noqa: E402

log = logging.getLogger("convert_gt")


def main(argv: list[str]) -> dict:
    """Convert, write ``out`` atomically, return ``{"out", "images", "annotations", "categories"}``."""
    p = argparse.ArgumentParser(prog="jobs/convert_gt.py", description=__doc__.split("\n")[0])
    p.add_argument("format", choices=FORMATS)
    p.add_argument("source", help="the annotation file (flickr: the directory of XML files)")
    p.add_argument("out", help="the ground-truth JSON to write (e.g. gt_test.json)")
    p.add_argument("--category-names", help="JSON file naming DSOL category ids")
    p.add_argument("--timestamp", type=float, help="frame time in the clip (VGG-SS 5.0, Flickr 0.0) or the DSOL "
                                                   "AudioSet offset within each second (0.0)")
    p.add_argument("--fps", type=float, default=30.0, help="DSOL MUSIC frame numbering rate (30)")
    p.add_argument("--category", default="sound_source", help="Flickr-SoundNet: the one category name")
    p.add_argument("--descriptions", help="OpenImages: class-descriptions-boxable.csv")
    p.add_argument("--images", help="OpenImages: the folder of <ImageID>.jpg")
    p.add_argument("--classes", help="OpenImages: file of display names to keep, one per line (default: all)")
    args = p.parse_args(argv)
    classes = None
    if args.classes:
        from data.subsets import read_classlist
        classes = list(read_classlist(args.classes))
    names = json.loads(Path(args.category_names).read_text()) if args.category_names else None
    gt = convert(args.format, args.source, category_names=names, timestamp=args.timestamp, fps=args.fps,
                 category=args.category, descriptions=args.descriptions, images_dir=args.images, classes=classes)
    write_json(Path(args.out), gt)
    summary = {"out": args.out, "images": len(gt["images"]), "annotations": len(gt["annotations"]),
               "categories": [c["name"] for c in gt["categories"]]}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("%s: %d images, %d boxes, categories %s", args.out, summary["images"], summary["annotations"],
             summary["categories"])
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
