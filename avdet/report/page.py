"""The evaluation report on disk: ``tables.md``, ``report.html`` and ``img/*.png`` under one directory.

:func:`write_report` is the one writer; every file is written atomically (temporary sibling, then rename), pictures
first and the HTML page last, so a page never points at a missing picture. The page is self-contained (inline CSS,
relative image paths) and opens from ``file://``.
"""
from __future__ import annotations

import html
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from avdet.fileio import write_atomic

from avdet.report.tables import build_tables, markdown_report, summary_line

__all__ = ["Figure", "write_atomic", "write_report", "IMG_DIR"]

IMG_DIR = "img"
SECTIONS = {"curves": "Training curves", "detections": "Detections on test frames",
            "heatmaps": "Stage-1 heatmaps and self-boxes (test frames)", "clusters": "Clusters"}

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
 color:#222;padding:0 16px;line-height:1.4}
h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
.summary{color:#444;margin:4px 0 12px}
table{border-collapse:collapse;margin:6px 0 4px;font-size:13px}
th,td{padding:4px 9px;border-bottom:1px solid #e3e3e3;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{border-bottom:2px solid #888;background:#f6f6f6}
.scroll{overflow-x:auto;margin-bottom:16px}
.config td{text-align:left;font-family:monospace;font-size:12px;white-space:normal;word-break:break-all}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:14px}
.curves{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:14px}
.natural{display:flex;flex-wrap:wrap;gap:14px} .natural img{width:auto;max-width:100%}
.cap{font-size:13px;color:#333;margin:14px 0 4px;max-width:1000px}
figure{margin:0;background:#fafafa;border:1px solid #e5e5e5;padding:6px;border-radius:4px}
figure img{width:100%;height:auto;display:block;image-rendering:auto}
figcaption{font-size:12px;color:#444;margin-top:4px}
details summary{cursor:pointer;color:#345}
"""


@dataclass
class Figure:
    """One picture of the report: ``name`` (file stem, [a-z0-9_-]), the image, a caption, and its section key
    (one of ``SECTIONS``)."""
    name: str
    image: Image.Image
    caption: str
    section: str


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", str(v)))
    return out


KEY_SETTINGS = ("split", "detection_gt", "score_threshold", "loc_threshold", "loc_threshold_from", "centre_box_frac",
                "m_shots", "m_shot_unit", "max_unmatched_gt_fraction", "use_ray")


def _config_html(config: dict) -> str:
    """A visible line of the settings that change the numbers, and the whole config folded away."""
    key = ", ".join(f"{k} = {config[k]}" for k in KEY_SETTINGS if k in config)
    line = f"<p class='summary'>Settings: {html.escape(key)}.</p>" if key else ""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in _flatten(config))
    return (f"{line}<details><summary>Configuration ({len(_flatten(config))} settings)</summary>"
            f"<table class='config'><tbody>{rows}</tbody></table></details>")


def _figures_html(figures: Sequence[Figure]) -> str:
    parts = []
    for key, title in SECTIONS.items():
        figs = [f for f in figures if f.section == key]
        if not figs:
            continue
        cls = {"curves": "curves", "clusters": "natural"}.get(key, "grid")
        items = "".join(f"<figure><img src='{IMG_DIR}/{f.name}.png' alt='{html.escape(f.caption, quote=True)}'>"
                        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>" for f in figs)
        parts.append(f"<h2>{html.escape(title)}</h2><div class='{cls}'>{items}</div>")
    return "".join(parts)


def render_html(results: dict, figures: Sequence[Figure]) -> str:
    """The whole page as a string (pictures referenced as ``img/<name>.png``)."""
    title = f"avdet evaluation: {results.get('dataset', '?')}"
    tables = "".join(f"<div class='scroll'>{t.html()}</div>" for t in build_tables(results))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='summary'>{html.escape(summary_line(results))}</p>"
            f"{_config_html(results.get('config', {}))}<h2>Tables</h2>{tables}{_figures_html(figures)}"
            "</body></html>")


def write_report(out_dir: str | os.PathLike, results: dict, figures: Sequence[Figure]) -> dict:
    """Write ``img/<name>.png`` for every figure, ``tables.md`` and ``report.html`` under ``out_dir``.

    Returns ``{"tables": path, "html": path, "images": [paths]}`` (strings).
    """
    out = Path(out_dir)
    names = [f.name for f in figures]
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_\-]+", n)]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"figure names must be unique and [A-Za-z0-9_-]+; got bad {bad} among {len(names)} names")
    images = [str(write_atomic(out / IMG_DIR / f"{f.name}.png", _png(f.image))) for f in figures]
    tables = write_atomic(out / "tables.md", markdown_report(results))
    page = write_atomic(out / "report.html", render_html(results, figures))
    return {"tables": str(tables), "html": str(page), "images": images}
