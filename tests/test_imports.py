"""Top-level packages resolve to this repository, and avdet/ stays free of cluster libraries."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("ray", "deepspeed", "webdataset", "submitit")


@pytest.mark.parametrize("name", ["avdet", "data", "distributed", "jobs", "benchmarks"])
def test_package_resolves_to_repo(name):
    mod = importlib.import_module(name)
    assert Path(mod.__file__).resolve().parent == ROOT / name, f"{name} imported from {mod.__file__}, not {ROOT}"


def test_avdet_imports_no_cluster_libraries():
    pattern = re.compile(r"^\s*(?:import|from)\s+(" + "|".join(FORBIDDEN) + r")\b", re.MULTILINE)
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p in sorted((ROOT / "avdet").rglob("*.py"))
                 for m in pattern.finditer(p.read_text())]
    assert offenders == []
