"""`ray job submit` (the CLI of the project's venv) against a loopback head started by raycluster.start_head."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from distributed import raycluster

pytestmark = pytest.mark.slow

SCRIPT = '''
import json, sys
import ray
ray.init()
total = sum(ray.get([ray.remote(lambda x: x * x).remote(i) for i in range(5)]))
print("RESULT " + json.dumps({"sum": total, "python": sys.executable}))
'''


def test_ray_job_submit_runs_script_with_venv_python(tmp_path):
    work = tmp_path / "job"
    work.mkdir()
    (work / "script.py").write_text(SCRIPT)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    head = raycluster.start_head(ray_tmp, num_cpus=1)
    try:
        env = {**os.environ, **head.env()}   # RAY_AUTH_MODE=token + this cluster's token file
        cli = Path(sys.executable).parent / "ray"
        done = subprocess.run([str(cli), "job", "submit", "--address", head.dashboard_url,
                               "--working-dir", str(work), "--", "python", "script.py"],
                              env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"ray job submit failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        assert lines, done.stdout[-3000:]
        result = json.loads(lines[-1][len("RESULT "):])
        assert result["sum"] == 30
        # the entrypoint's `python` is the interpreter the head was started with: the project's venv
        assert Path(result["python"]).parent == Path(sys.executable).parent
    finally:
        pids = head.pids()
        head.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not [p for p in pids if _alive(p)], "Ray processes left after stop"


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
