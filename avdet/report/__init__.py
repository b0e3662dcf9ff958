"""Evaluation report (pure: result dicts + pictures in, files out; no Ray, no data layer).

- :mod:`avdet.report.tables`: the paper-style tables (Markdown and HTML) from the results dict.
- :mod:`avdet.report.draw`: PIL pictures (boxes on frames, heatmap overlays, confusion matrix, line plots).
- :mod:`avdet.report.page`: ``write_report(out_dir, results, figures)`` -> ``tables.md``, ``report.html``, ``img/``.
"""
from avdet.report.draw import GT_COLOUR, PALETTE, Box, confusion_image, draw_boxes, heatmap_overlay, line_plot
from avdet.report.page import IMG_DIR, Figure, render_html, write_report
from avdet.report.tables import Table, build_tables, markdown_report, pct

__all__ = ["Box", "PALETTE", "GT_COLOUR", "draw_boxes", "heatmap_overlay", "confusion_image", "line_plot",
           "Figure", "IMG_DIR", "write_report", "render_html",
           "Table", "build_tables", "markdown_report", "pct"]
