"""Evaluation metrics (paper §4, METHOD.md §5): clusters, detection (COCO mAP), localisation (cIoU, AUC)."""
from avdet.metrics.clusters import adjusted_rand_index, cluster_metrics, hungarian_accuracy, nmi, purity
from avdet.metrics.detection import (centre_box_detections, evaluate_detections, predictions_to_detections,
                                     whole_image_detections)
from avdet.metrics.localisation import (boxes_to_map, ciou, localisation_metrics, map_iou,
                                        whole_image_maps)

__all__ = [
    "nmi", "adjusted_rand_index", "hungarian_accuracy", "purity", "cluster_metrics",
    "evaluate_detections", "centre_box_detections", "whole_image_detections", "predictions_to_detections",
    "boxes_to_map", "ciou", "map_iou", "localisation_metrics", "whole_image_maps",
]
