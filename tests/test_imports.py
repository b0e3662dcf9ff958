"""Top-level packages resolve to this repository, and avdet/ stays free of cluster libraries."""
from __future__ import annotations

import importlib
import sys
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


# The layers, bottom to top: a package may import only the packages below it (and itself).
LAYERS = ["avdet", "data", "distributed", "jobs"]
ROOMS = ["cluster", "proposals", "stage1", "pseudo", "detector", "evaluation"]   # distributed/'s rooms, the pipeline above them


def _imports(path: Path) -> set[str]:
    """Every first-party module ``path`` imports (top level or inside functions): ``import a.b``, ``from a.b import
    c`` (as ``a.b.c`` too, so ``from distributed import dist`` counts), relative imports resolved."""
    import ast
    tree, found = ast.parse(path.read_text(), str(path)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
                base = ".".join([*pkg, base] if base else pkg)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in LAYERS + ["benchmarks", "tests", "scripts"]}


def _offenders(package: str, allowed: set[str]) -> list[str]:
    return [f"{p.relative_to(ROOT)} imports {m}" for p in sorted((ROOT / package).rglob("*.py"))
            for m in sorted(_imports(p)) if m.split(".")[0] not in allowed]


@pytest.mark.parametrize("level", range(len(LAYERS)))
def test_layers_import_only_downwards(level):
    """avdet ← data ← distributed ← jobs: no package imports one above it, none imports tests/benchmarks/scripts."""
    package = LAYERS[level]
    assert _offenders(package, set(LAYERS[:level + 1])) == []


def test_the_layering_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check is not vacuous: a data/ module importing distributed/ (inside a function) is reported."""
    bad = tmp_path / "data" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("def f():\n    from distributed.cluster import dist\n    import jobs.cli\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _offenders("data", {"avdet", "data"}) == ["data/bad.py imports distributed.cluster",
                                                     "data/bad.py imports distributed.cluster.dist",
                                                     "data/bad.py imports jobs.cli"]


def test_rooms_of_distributed():
    """distributed/ is the pipeline plus one room per stage and the cluster plumbing: no loose modules, and a stage
    room never imports another stage's room (they meet only through artifacts, in the pipeline); every room may use
    cluster/."""
    loose = sorted(p.name for p in (ROOT / "distributed").glob("*.py"))
    assert loose == ["__init__.py", "pipeline.py"]
    rooms = sorted(p.name for p in (ROOT / "distributed").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert rooms == sorted(ROOMS)
    stages = [r for r in ROOMS if r != "cluster"]
    allowed = {("pseudo", "distributed.stage1.config")}   # pseudo-annotation rebuilds stage 1's model from its config
    bad = [f"{p.relative_to(ROOT)} imports {m}" for room in ROOMS
           for p in sorted((ROOT / "distributed" / room).rglob("*.py")) for m in sorted(_imports(p))
           if m.startswith("distributed.") and m.split(".")[1] in stages and m.split(".")[1] != room
           and not any(room == r and m.startswith(a) for r, a in allowed)]
    assert bad == []
