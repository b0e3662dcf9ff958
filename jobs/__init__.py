"""Composition roots, one per stage plus the end-to-end pipeline. Each job has ``main(argv)``.

Run as ``python jobs/<name>.py`` (each inserts the repo root on ``sys.path`` first, so this also works from an
uploaded ``ray job submit --working-dir``) or call ``jobs.<name>.main([...])`` from Python.
"""
import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")     # Ray stays on loopback unless told otherwise
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")   # Train V2 polls workers; default ~2 s per report
