"""Evaluation stage (METHOD.md §5, paper §4): artifacts of the earlier stages in, ``results.json``, ``tables.md``,
``report.html`` + ``img/*.png`` and ``done.json`` (last) out.

0. Only annotated frames are evaluated: each ground-truth image joins the test frame of its clip nearest its
   timestamp (``gt_timestamp_tolerance_s``); frames without one are not images of the evaluation, and ground truth
   that joins nothing is counted (``results["ground_truth"]``) and, beyond ``max_unmatched_gt_fraction``, an error
   (:func:`distributed.evaluation.frames.eval_ground_truth`).
1. Clusters are named from the TRAIN self-labels (pseudo class vs true label): Hungarian, argmax, m-shot (the top-m
   videos per cluster by default, ``m_shot_unit``).
2. The detector runs over the test frames (plain loop, or a Ray Data actor pool with ``use_ray``); its pseudo-class
   detections are mapped to classes by each matching and scored with COCO mAP@0.3 / 0.5 / [0.5:0.95] against the
   ground truth rescaled onto the frames (``detection_gt``: every object, or the sounding ones only).
3. Baselines on the same frames: centre box and whole image (class-agnostic, as the paper's "Center Box*": a box
   carries no class, so scoring it class-aware would only measure a guessed label), the test self-boxes
   (class-agnostic, and with Hungarian-matched pseudo-classes), and the self-boxes with the TRUE video label
   (weak-sup.: an upper bound on the classification part).
4. Localisation (Table 2 style, and the field's protocols: DSOL single / multi source, Flickr consensus) against the
   sounding objects, with the box-score threshold chosen on TRAINING frames (:func:`choose_loc_threshold`); cluster
   quality (NMI, ARI, Hungarian acc., purity) of every train frame and of the evaluated test frames (a test frame
   without ground truth here, e.g. a duet of the multi-source split, is not in the main test figures).

Re-running a complete stage (``done.json`` present) returns its summary without recomputing.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avdet.config import require, save_config, to_dict
from avdet.fileio import write_json
from avdet.metrics import boxes_to_map, evaluate_detections
from avdet.metrics.localisation import choose_score_threshold
from avdet.report import page, scores
from avdet.report.figures import confusion_figure, curve_figures, detection_figures, heatmap_figures
from data.artifacts import read_done, write_done
from data.pseudo_coco import SelfLabels, read_self_labels
from data.schema import sample_key
from data.shards import read_frames, read_manifest
from distributed.evaluation import frames as eval_data
from distributed.evaluation.infer import Predictions, predict_indices, predict_plain, predict_ray

log = logging.getLogger(__name__)

__all__ = ["EvalConfig", "run_evaluation", "score_predictions"]



@dataclass
class EvalConfig:
    """Inputs (paths of the earlier stages' artifacts), what to compute, and how to run the detector."""
    manifest: str = ""                  # shards manifest (its ``split`` samples are the test frames)
    split: str = "test"
    gt: str = ""                        # gt_test.json (COCO, original video pixels)
    pseudo_train: str = ""              # pseudo_train.json: names the clusters
    pseudo_test: str = ""               # pseudo_test.json: self-box baselines, cluster metrics
    heatmaps: str = ""                  # heatmaps_test.npz ("" = no heatmap pictures)
    detector: str = ""                  # detector.pt (avdet.detector.save_detector)
    detector_history: str = ""          # history.json ("" = the one beside the detector, if any)
    stage1_done: str = ""               # <stage1_out>/done.json ("" = no stage-1 curves)
    out_dir: str = "outputs/eval"
    k_sweep_json: str = ""              # jobs/k_sweep.py's ksweep.json: Table 4's rows when the file exists
    weak_sup_results: str = ""          # the weak-sup. detector's results.json (pipeline stage weak_sup), if it exists
    dataset: str = "synthetic"          # name printed in the tables
    images_dir: str = ""                # a folder of still images: evaluate on them + gt (distributed/evaluation/images.py)
    class_names: str = ""               # class list naming training classes as the image set does ("" = same names)
    image_size: int = 0                 # images_dir: side the images are resized to (0 = the manifest's frame_size)
    paper_dataset: str = ""             # the paper's figures to print beside ours: vggsound, audioset, openimages,
                                        # openimages_general; "" = guessed from ``dataset``; "none" = never
    detection_gt: str = "all"           # "all" objects or only the "sounding" ones are detection targets
    gt_timestamp_tolerance_s: float = 0.001   # a GT image joins the nearest test frame of its clip within this
    max_unmatched_gt_fraction: float = 0.0    # share of GT images "missed" (no image of their clip joined) allowed
    score_threshold: float = 0.05       # detector boxes kept for mAP (torchvision box_score_thresh)
    loc_threshold: float = 0.5          # boxes ≥ this form the localisation pseudo-heatmap ("fixed")
    loc_threshold_from: str = "train_pseudo"  # or "fixed": chosen on training frames vs their self-boxes, never test
    loc_calibration_frames: int = 200   # training frames the detector runs on to choose it
    centre_box_frac: float = 0.5        # centre-box baseline: frac·W × frac·H
    selective_search_boxes: int = 0     # Selective Search* baseline: top-n proposals per test frame (0 = off)
    selective_search_mode: str = "fast"  # OpenCV's "fast" or "quality" strategies
    m_shots: list[int] = field(default_factory=lambda: [1, 10])
    m_shot_unit: str = "video"          # m-shot labels the top-m "video"s per cluster (paper Table 5) or "frame"s
    m_shot_video_score: str = "mean"    # a video's confidence: "mean" or "max" of its frames' in its cluster
    num_pictures: int = 12              # detection pictures, and as many heatmap pictures
    picture_score: float = 0.3          # detections drawn when scoring at least this
    batch_size: int = 8
    use_ray: bool = False               # True: Ray Data map_batches over an actor pool
    ray_address: str = "local"
    num_actors: int = 1
    device: str = "cpu"
    onscreen: str = ""                  # the pseudo stage's onscreen_test.npz (seed 001's method), if it exists
    gt_offscreen: str = ""              # gt_test_offscreen.json: its clips are the off-screen ones (if it exists)
    onscreen_d: float = 0.2             # d_on threshold of the on/off-screen decision (seed 001: 0.2)

    def check(self) -> None:
        require(self.detection_gt in ("all", "sounding"), "detection_gt", "must be 'all' or 'sounding'")
        require(self.gt_timestamp_tolerance_s >= 0.0, "gt_timestamp_tolerance_s", "must be >= 0")
        require(0.0 <= self.max_unmatched_gt_fraction <= 1.0, "max_unmatched_gt_fraction", "must be in [0, 1]")
        require(0.0 <= self.score_threshold < 1.0, "score_threshold", "must be in [0, 1)")
        require(0.0 <= self.loc_threshold <= 1.0, "loc_threshold", "must be in [0, 1]")
        require(self.loc_threshold_from in ("train_pseudo", "fixed"), "loc_threshold_from",
                "must be 'train_pseudo' or 'fixed'")
        require(self.loc_calibration_frames >= 1, "loc_calibration_frames", "must be >= 1")
        require(0.0 < self.centre_box_frac <= 1.0, "centre_box_frac", "must be in (0, 1]")
        require(self.selective_search_boxes >= 0, "selective_search_boxes", "must be >= 0 (0 = no baseline)")
        require(self.selective_search_mode in ("fast", "quality"), "selective_search_mode",
                "must be 'fast' or 'quality'")
        require(all(m >= 1 for m in self.m_shots), "m_shots", "must all be >= 1")
        require(self.m_shot_unit in ("video", "frame"), "m_shot_unit", "must be 'video' or 'frame'")
        require(self.m_shot_video_score in ("mean", "max"), "m_shot_video_score", "must be 'mean' or 'max'")
        require(self.batch_size >= 1 and self.num_actors >= 1, "batch_size", "and num_actors must be >= 1")
        require(self.num_pictures >= 0, "num_pictures", "must be >= 0")
        require(self.image_size >= 0, "image_size", "must be >= 0 (0 = the training frames' size)")
        require(self.paper_dataset in ("", "none", "vggsound", "audioset", "openimages", "openimages_general"),
                "paper_dataset", "must be '', 'none', 'vggsound', 'audioset', 'openimages' or 'openimages_general'")
        require(0.0 <= self.picture_score <= 1.0, "picture_score", "must be in [0, 1] (a detection score)")


def _detection_target(coco: dict, which: str) -> dict:
    if which == "all":
        return coco
    return dict(coco, annotations=[a for a in coco["annotations"] if a.get("sounding")])


def _self_box_arrays(sl: SelfLabels, image_ids: set[int]) -> dict:
    """The self-boxes of the evaluated frames (those with a ground-truth image) as arrays."""
    keep = np.array([int(i) in image_ids for i in sl.index], bool)
    return {"index": sl.index[keep], "boxes": sl.boxes[keep], "confidence": sl.confidence[keep],
            "pseudo": sl.pseudo[keep]}


def _evaluated(predictions: Predictions | None, image_ids: set[int]) -> Predictions | None:
    """Only the frames with a ground-truth image are scored: detections elsewhere are neither right nor wrong."""
    return None if predictions is None else {i: p for i, p in predictions.items() if int(i) in image_ids}


def score_predictions(cfg: EvalConfig, classes: list[str], coco: dict, train: SelfLabels,
                      test: SelfLabels, frame_labels: dict[int, int],
                      predictions: Predictions | None, loc_threshold: tuple[float, str] | None = None) -> dict:
    """Every number of the report (module docstring) as the ``results`` dict, minus curves and config.
    ``loc_threshold``: (box-score threshold of the localisation maps, how it was chosen); default the fixed
    ``cfg.loc_threshold``."""
    C, K = len(classes), max(train.num_clusters, test.num_clusters)
    lab = train.labelled()
    videos = train.video[lab] if cfg.m_shot_unit == "video" else None
    match = scores.matchings(train.pseudo[lab], train.true[lab], train.confidence[lab], K, C, cfg.m_shots, videos,
                             cfg.m_shot_video_score)
    for m in match.values():
        m["test_self_label_acc"] = scores.self_label_accuracy(m["mapping"], test.pseudo, test.true)
    target = _detection_target(coco, cfg.detection_gt)
    image_ids = {int(im["id"]) for im in coco["images"]}
    predictions, self_boxes = _evaluated(predictions, image_ids), _self_box_arrays(test, image_ids)
    results = {"classes": classes, "matching": match, "detection": {},
               "ground_truth": coco.get("info", {}).get("ground_truth", {})}
    agnostic = K == 1               # one pseudo-class (a class-agnostic localiser): no class-aware detection rows
    if predictions is not None and not agnostic:
        for name, m in match.items():
            dets = scores.mapped_detections(predictions, m["mapping"])
            results["detection"][name] = scores.named(evaluate_detections(target, dets), classes)
    base = scores.detection_baselines(target, classes, self_boxes, match["hungarian"]["mapping"],
                                      frame_labels, cfg.centre_box_frac)
    if agnostic:
        base.pop("self_boxes_hungarian")
    if predictions is not None:
        base["detector_agnostic"] = scores.agnostic_scores(target, scores.mapped_detections(predictions, None))
    results["baselines"] = base
    threshold, source = loc_threshold if loc_threshold is not None else (cfg.loc_threshold, "fixed")
    results["localisation"] = scores.localisation_scores(coco, predictions, self_boxes, threshold)
    results["localisation"]["threshold_source"] = source
    results["localisation"]["protocols"] = scores.localisation_protocols(coco, predictions, self_boxes, threshold,
                                                                         match["hungarian"]["mapping"])
    results["clusters"], results["confusion"] = {}, {}
    evaluated = np.asarray(sorted(int(im["id"]) for im in coco["images"]), np.int64)
    for split, sl in (("train", train), ("test", test)):   # test: the evaluated (annotated) frames only
        keep = np.isin(sl.index, evaluated) if split == "test" else np.ones(len(sl.index), bool)
        results["clusters"][split], counts = scores.cluster_scores(sl.pseudo[keep], sl.true[keep], K, C)
        results["confusion"][split] = counts.tolist()
    results["summary"] = {
        "num_test_frames": len(coco["images"]), "num_gt_boxes": len(target["annotations"]),
        "num_sounding_boxes": sum(bool(a.get("sounding")) for a in coco["annotations"]),
        "num_classes": C, "num_clusters": K, "class_agnostic": agnostic, "detection_gt": cfg.detection_gt,
        "num_train_self_labels": int(len(train.index)), "num_test_self_labels": int(len(test.index))}
    return results


def _evenly(items: list[int], n: int) -> list[int]:
    if n <= 0 or not items:
        return []
    pos = np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int)
    return [items[p] for p in sorted(set(pos))]


def _figures(cfg: EvalConfig, manifest, coco: dict, results: dict, test: SelfLabels,
             predictions: Predictions | None, frame_labels: dict[int, int], histories: dict) -> list[page.Figure]:
    """Pick ~num_pictures frames with objects (and as many with heatmaps), decode only those, draw everything."""
    classes, mapping = results["classes"], results["matching"]["hungarian"]["mapping"]
    with_objects = sorted({a["image_id"] for a in coco["annotations"]}) or sorted(im["id"] for im in coco["images"])
    heatmaps = eval_data.read_heatmaps(cfg.heatmaps)
    det_ids = _evenly(with_objects, cfg.num_pictures) if predictions is not None else []
    heat_ids = _evenly(sorted(set(heatmaps) & set(frame_labels)), cfg.num_pictures)
    frames = read_frames(manifest, cfg.split, set(det_ids) | set(heat_ids))
    boxes = {int(i): (b, int(k), float(c)) for i, b, k, c in zip(test.index, test.boxes, test.pseudo, test.confidence)}
    figs = curve_figures(histories)
    figs += detection_figures({i: frames[i] for i in det_ids if i in frames}, predictions or {}, coco, mapping,
                              classes, cfg.picture_score)
    figs += heatmap_figures({i: frames[i] for i in heat_ids if i in frames}, {i: heatmaps[i] for i in heat_ids},
                            boxes, mapping, classes, frame_labels)
    figs.append(confusion_figure(np.array(results["confusion"]["test"]), mapping, classes, "test"))
    return figs


def _predict(cfg: EvalConfig, manifest) -> Predictions:
    if cfg.use_ray:
        return predict_ray(cfg.detector, manifest, cfg.split, cfg.batch_size, cfg.score_threshold,
                           cfg.num_actors, cfg.ray_address, cfg.device)
    return predict_plain(cfg.detector, manifest, cfg.split, cfg.batch_size, cfg.score_threshold, cfg.device)


def _restrict(frames: eval_data.TestFrames, predictions: Predictions) -> eval_data.TestFrames:
    keep = np.array([int(i) in predictions for i in frames.index], bool)
    if not keep.all():
        log.warning("detector produced no record for %d of %d test frames (unreadable samples); they are left out",
                    int((~keep).sum()), len(keep))
    return frames.subset(keep)


def _calibration_frames(train: SelfLabels, n: int) -> list[int]:
    """Up to ``n`` training frames with a self-box, evenly spread over the sorted sample indices."""
    return _evenly(sorted({int(i) for i in train.index}), n)


def choose_loc_threshold(cfg: EvalConfig, manifest, train: SelfLabels, frame_size: tuple[int, int],
                         train_predictions: Predictions | None = None) -> tuple[float, str]:
    """The box-score threshold of the localisation pseudo-heatmaps and how it was chosen. ``train_pseudo``: the
    detector runs on up to ``loc_calibration_frames`` TRAINING frames and the threshold maximising their mean cIoU
    against their own self-boxes (the pseudo-annotations it was trained on) is kept
    (:func:`avdet.metrics.localisation.choose_score_threshold`); no test frame or test label is looked at. Falls
    back to the fixed ``loc_threshold`` (and says so) without a detector or training frames. ``frame_size``: (H, W)
    of every frame (ingest makes them one size); ``train`` boxes in frame pixels."""
    if cfg.loc_threshold_from == "fixed":
        return cfg.loc_threshold, "fixed"
    ids = _calibration_frames(train, cfg.loc_calibration_frames)
    if train_predictions is None and cfg.detector and ids:
        train_predictions = predict_indices(cfg.detector, manifest, "train", ids, cfg.batch_size,
                                            cfg.score_threshold, cfg.device)
    ids = [i for i in ids if train_predictions and i in train_predictions]
    if not ids:
        log.warning("localisation threshold: no training frame to calibrate on (no detector, or no training shard "
                    "holds the self-labelled frames); using the fixed loc_threshold %.2f", cfg.loc_threshold)
        return cfg.loc_threshold, "fixed (no training frames to calibrate on)"
    boxes: dict[int, list] = {}
    for i, b in zip(train.index, train.boxes):
        boxes.setdefault(int(i), []).append(b)
    targets = [boxes_to_map(boxes[i], None, 0.0, *frame_size) for i in ids]
    t = choose_score_threshold([(train_predictions[i]["boxes"], train_predictions[i]["scores"]) for i in ids], targets)
    log.info("localisation threshold %.2f chosen on %d training frames against their self-boxes", t, len(ids))
    return t, f"train_pseudo ({len(ids)} training frames)"


def selective_search_baseline(cfg: EvalConfig, manifest, coco: dict) -> dict:
    """The paper's "Selective Search*" row: the top ``selective_search_boxes`` proposals of every evaluated test frame,
    ranked by their own order (:func:`avdet.proposals.selective_search`), scored class-agnostic."""
    from avdet.proposals import selective_search

    ids = sorted(int(im["id"]) for im in coco["images"])
    stored = _stored_proposals(manifest, cfg)
    frames = {} if stored is not None else read_frames(manifest, cfg.split, ids)
    dets, seen = [], 0
    for i in ids:
        if stored is not None and sample_key(i) in stored:
            boxes, box_scores = stored[sample_key(i)]
        elif i in frames:
            boxes, box_scores = selective_search(frames[i], cfg.selective_search_boxes, cfg.selective_search_mode)
        else:
            continue
        seen += 1
        dets += scores.box_detections(np.full(len(boxes), i), boxes, box_scores, np.zeros(len(boxes), np.int64))
    log.info("selective search: %d proposals on %d test frames (%s)", len(dets), seen,
             "the stored proposal set" if stored is not None else "computed here")
    return {**scores.agnostic_scores(_detection_target(coco, cfg.detection_gt), dets),
            "proposals": "stored" if stored is not None else "computed"}


def _stored_proposals(manifest, cfg: EvalConfig) -> dict | None:
    """{sample key: (boxes, scores)} of the split from the stored proposal set of the baseline's settings
    (``selective_search-<mode>-<n>``, jobs/proposals.py), when one is there and current; else None."""
    from data.proposals import ProposalError, ProposalSettings, read_sidecar, stream_sidecars
    name = ProposalSettings("selective_search", cfg.selective_search_mode, cfg.selective_search_boxes).name()
    if not (Path(manifest.root) / "proposals" / name).is_dir():
        return None
    try:
        sidecars = stream_sidecars(manifest, cfg.split, name)
    except ProposalError as e:
        log.warning("selective search: the stored set is not usable (%s); computing the proposals here", e)
        return None
    out = {}
    for path, sha in sidecars.values():
        z = read_sidecar(path, sha)
        for key, boxes, sc, n in zip(z["keys"].tolist(), z["boxes"], z["scores"], z["count"]):
            out[key] = (boxes[:n].astype(np.float64), sc[:n].astype(np.float64))
    return out


def _check_inputs(cfg: EvalConfig) -> None:
    """Fail before any work when a required artifact is missing, naming the key and the path."""
    required = ["manifest", "gt", "pseudo_train", "pseudo_test"] + (["detector"] if cfg.detector else [])
    paths = {k: getattr(cfg, k) for k in required}
    missing = [f"{k}={p!r}" for k, p in paths.items() if not p or not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"evaluation inputs missing: {', '.join(missing)} (run the earlier stages, or point "
                                "the config at their outputs)")


def run_evaluation(cfg: EvalConfig, predictions: Predictions | None = None,
                   train_predictions: Predictions | None = None) -> dict:
    """Evaluate and write the report under ``cfg.out_dir``; returns the ``done.json`` summary.

    ``predictions`` (``{index: {"boxes", "scores", "labels"}}``, see :mod:`distributed.evaluation.infer`) replaces the
    detector run, e.g. for known-answer tests (with ``images_dir``: keyed by the image set's image ids, boxes in
    image pixels; :mod:`distributed.evaluation.images`); ``train_predictions`` likewise replaces its run on the training
    frames that choose the localisation threshold (:func:`choose_loc_threshold`). With neither predictions nor
    ``cfg.detector`` the detector rows are left out and only the self-label figures are reported.
    """
    out = Path(cfg.out_dir)
    done = read_done(out, "evaluation")
    if done is not None:
        return done
    if cfg.images_dir:                  # a folder of still images (OpenImages): no shards, no test self-labels
        from distributed.evaluation.images import run_image_evaluation
        return run_image_evaluation(cfg, predictions)
    _check_inputs(cfg)
    manifest = read_manifest(cfg.manifest)
    frames = eval_data.read_test_frames(manifest, cfg.split)
    if predictions is None and cfg.detector:
        predictions = _predict(cfg, manifest)
    if predictions is not None:
        frames = _restrict(frames, predictions)
    coco = eval_data.eval_ground_truth(json.loads(Path(cfg.gt).read_text()), frames, manifest.classes,
                                       cfg.gt_timestamp_tolerance_s, cfg.max_unmatched_gt_fraction)
    train = read_self_labels(cfg.pseudo_train, (frames.height, frames.width))
    test = read_self_labels(cfg.pseudo_test, (frames.height, frames.width))
    frame_labels = {int(i): int(c) for i, c in zip(frames.index, frames.label)}
    loc = (choose_loc_threshold(cfg, manifest, train, (frames.height, frames.width), train_predictions)
           if predictions is not None else None)
    results = score_predictions(cfg, manifest.classes, coco, train, test, frame_labels, predictions, loc)
    if cfg.selective_search_boxes:
        results["baselines"]["selective_search"] = selective_search_baseline(cfg, manifest, coco)
    history = cfg.detector_history or (str(Path(cfg.detector).with_name("history.json")) if cfg.detector else "")
    results["curves"] = eval_data.read_histories(cfg.stage1_done, history if Path(history).is_file() else "")
    results.update(dataset=cfg.dataset, config=to_dict(cfg))
    weak = Path(cfg.weak_sup_results) if cfg.weak_sup_results else None
    if weak is not None and weak.is_file() and "hungarian" in json.loads(weak.read_text()).get("detection", {}):
        results["baselines"]["weak_sup_detector"] = json.loads(weak.read_text())["detection"]["hungarian"]
    if cfg.k_sweep_json and Path(cfg.k_sweep_json).is_file():
        results["k_sweep"] = json.loads(Path(cfg.k_sweep_json).read_text())
    if cfg.onscreen and cfg.gt_offscreen and Path(cfg.onscreen).is_file() and Path(cfg.gt_offscreen).is_file():
        results["onscreen"] = onscreen_results(cfg)
    results["summary"]["detector"] = Path(cfg.detector).name if cfg.detector else "given predictions"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_json(out / "results.json", results)
    figs = _figures(cfg, manifest, coco, results, test, predictions, frame_labels, results["curves"])
    paths = page.write_report(out, results, figs)
    return _finish(out, results, paths)


def onscreen_results(cfg: EvalConfig) -> dict:
    """Seed 001's Table 1 on the synthetic set: the frames of the test clips (``gt``: on screen) and of the
    off-screen clips (``gt_offscreen``), decided from the pseudo stage's on/off-screen evidence."""
    from avdet.metrics.onscreen import onscreen_accuracy
    with np.load(cfg.onscreen, allow_pickle=False) as z:
        ev = {k: z[k] for k in z.files}
    videos = lambda path: {im["video_id"] for im in json.loads(Path(path).read_text())["images"]}  # noqa: E731
    on_v, off_v = videos(cfg.gt), videos(cfg.gt_offscreen)
    vid = ev["video_id"].astype(str)
    keep = np.isin(vid, list(on_v | off_v))
    if not keep.any():
        raise ValueError(f"on/off-screen: no frame of {cfg.onscreen} belongs to a clip of {cfg.gt} or "
                         f"{cfg.gt_offscreen}")
    return onscreen_accuracy(ev["d_on"][keep], ev["av_dist"][keep], ev["av_dist_neg"][keep],
                             np.isin(vid[keep], list(on_v)), cfg.onscreen_d)


def _finish(out: Path, results: dict, paths: dict) -> dict:
    """Write ``done.json`` (last): where everything is, and the headline numbers."""
    full = results["detection"].get("hungarian", {})
    agnostic = results["baselines"].get("detector_agnostic", {})
    done = {"results": str(out / "results.json"), "tables": paths["tables"], "report": paths["html"],
            "num_images": len(paths["images"]), "map_30": full.get("map_30"), "map_50": full.get("map_50"),
            "map_50_95": full.get("map_50_95"), "map_50_agnostic": agnostic.get("map_50"),
            "test_hungarian_acc": results["clusters"]["test"]["hungarian_acc"]}
    done = write_done(out, done, [out / "results.json", out / "config.yaml", paths["tables"], paths["html"],
                                  *paths["images"]])
    log.info("evaluation written to %s (mAP@0.5 = %s)", out, done["map_50"])
    return done
