"""Oracle pseudo-annotations for a synthetic run: what would the detector reach with perfect self-labels?

    python scripts/oracle_pseudo.py outputs/demo outputs/oracle/pseudo
    python jobs/train_detector.py --config outputs/demo/detector/config.yaml \
        pseudo_dir=outputs/oracle/pseudo out_dir=outputs/oracle/detector
    python jobs/evaluate.py --config outputs/demo/report/config.yaml out_dir=outputs/oracle/report \
        detector=outputs/oracle/detector/detector.pt detector_history=outputs/oracle/detector/history.json \
        pseudo_train=outputs/oracle/pseudo/pseudo_train.json

Writes ``pseudo_train.json`` in the pseudo-annotation format with, for every training frame of ``<run>/pseudo``,
the first *sounding* ground-truth box of that frame (``<run>/synthetic/gt_train.json``) and its true class — the
one box and one class per frame the method aims for, made perfect. Training the same detector on it separates the
detector's budget from the quality of the self-labels. Prints how many frames got a box.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def oracle(pseudo: dict, gt: dict) -> dict:
    """Pseudo-annotation COCO doc: each pseudo image with the first sounding GT box of its frame (matched by
    video id and timestamp), category = true class + 1 (pseudo-class ids start at 1), score 1."""
    frame_of = {im["id"]: (im["video_id"], round(float(im["timestamp"]), 3)) for im in gt["images"]}
    sounding: dict[tuple, dict] = {}
    for a in gt["annotations"]:
        if a.get("sounding"):
            sounding.setdefault(frame_of[a["image_id"]], a)
    images, anns = [], []
    for im in pseudo["images"]:
        a = sounding.get((im["video_id"], round(float(im["timestamp"]), 3)))
        if a is None:
            continue
        images.append(im)
        anns.append({"id": len(anns) + 1, "image_id": im["id"], "bbox": a["bbox"],
                     "category_id": a["category_id"] + 1, "score": 1.0, "area": a["area"], "iscrowd": 0})
    cats = [{"id": c["id"] + 1, "name": c["name"]} for c in gt["categories"]]
    return {"images": images, "annotations": anns, "categories": cats,
            "info": {"oracle": True, "frames": len(pseudo["images"]), "annotated": len(images)}}


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="scripts/oracle_pseudo.py", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a synthetic pipeline workdir (synthetic/, pseudo/)")
    p.add_argument("out_dir", type=Path, help="where pseudo_train.json is written")
    args = p.parse_args(argv)
    doc = oracle(json.loads((args.run / "pseudo" / "pseudo_train.json").read_text()),
                 json.loads((args.run / "synthetic" / "gt_train.json").read_text()))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "pseudo_train.json").write_text(json.dumps(doc))
    print(f"{doc['info']['annotated']} of {doc['info']['frames']} frames have a sounding ground-truth box")
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
