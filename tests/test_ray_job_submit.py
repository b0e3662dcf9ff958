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

from distributed.cluster import raycluster
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


def _http(url: str, token: str | None = None, body: dict | None = None) -> int:
    """Status code of a GET (or a JSON POST with ``body``) to the dashboard, with or without the bearer token."""
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_job_api_refuses_a_submitter_without_the_token(tmp_path):
    """Token auth stays on: the head's job API answers 401 without a token, 403 with a wrong one, 200 with the
    cluster's; `ray job submit` from a clean environment (no RAY_AUTH_MODE, no token anywhere) is refused."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ra", dir="/tmp"))
    head = None
    try:
        head = raycluster.start_head(ray_tmp, num_cpus=1, timeout=300)   # a loaded 2-core machine is slow
        jobs = f"{head.dashboard_url}/api/jobs/"
        token = head.token_path.read_text().strip()
        assert _http(jobs) == 401
        assert _http(jobs, token="0" * 64) == 403
        assert _http(jobs, body={"entrypoint": "echo no"}) == 401
        assert _http(jobs, token=token) == 200
        assert _http(jobs, token=token, body={"entrypoint": "echo yes"}) == 200     # accepted: submitted
        # the CLI without the token: a HOME with no ~/.ray/auth_token and no RAY_AUTH_* variables
        home = tmp_path / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        env.update(HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        cli = Path(sys.executable).parent / "ray"
        refused = subprocess.run([str(cli), "job", "submit", "--no-wait", "--address", head.dashboard_url, "--",
                                  "echo", "should-not-run"], env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0, refused.stdout[-2000:]
        out = (refused.stdout + refused.stderr).lower()
        assert "401" in out or "unauthorized" in out or "authentication" in out, out[-2000:]
        listed = subprocess.run([str(cli), "job", "list", "--address", head.dashboard_url],
                                env={**os.environ, **head.env()}, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0 and "should-not-run" not in listed.stdout, listed.stdout[-2000:]
    finally:
        if head is not None:
            head.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
