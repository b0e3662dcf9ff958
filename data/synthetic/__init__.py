"""Synthetic VGGSound-shaped benchmark: instrument pictures on photo backgrounds, with the sounding instrument's audio.

``generate.generate(cfg, root)`` writes ``videos/<video_id>_000000.mp4`` (H.264 + AAC), ``vggsound.csv``,
``classes.json``, ``gt_{train,test}.json`` (COCO, every object annotated with a ``sounding`` flag),
``contact_sheet.png``, ``generation_report.json`` and finally ``done.json`` (see docs/INTERFACES.md).
"""
from data.synthetic.config import SynthConfig

__all__ = ["SynthConfig"]
