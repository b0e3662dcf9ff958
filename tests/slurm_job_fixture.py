"""A tiny job for the SLURM launcher tests: ``main(argv)`` joins the Ray cluster at RAY_ADDRESS and sums squares."""
from __future__ import annotations

import os


def main(argv: list[str]) -> dict:
    """``main(["--n", "5"])`` -> {"sum": 0²+…+4², "nodes": alive Ray nodes, "argv": argv}."""
    import ray

    n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 4
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    try:
        @ray.remote(num_cpus=1)
        def square(x: int) -> int:
            return x * x

        total = sum(ray.get([square.remote(i) for i in range(n)]))
        nodes = len([node for node in ray.nodes() if node["Alive"]])
    finally:
        ray.shutdown()
    return {"sum": total, "nodes": nodes, "argv": list(argv)}


def staged(argv: list[str]) -> dict:
    """``staged(["--workdir", d])``: three "stages" whose artifacts are marker files in ``d``; a stage whose marker
    exists is skipped, as the pipeline's stages are. On the first attempt (``SLURM_RESTART_COUNT`` unset/0) stage
    ``b`` announces itself (``b.waiting``) and waits to be preempted."""
    import time
    from pathlib import Path

    work = Path(argv[argv.index("--workdir") + 1])
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    ran, skipped = [], []
    for stage in ("a", "b", "c"):
        done = work / f"{stage}.done"
        if done.exists():
            skipped.append(stage)
            continue
        if stage == "b" and attempt == 0:
            (work / "b.waiting").touch()
            time.sleep(600)                     # preempted here (the test signals the job)
        done.write_text(str(attempt))
        ran.append(stage)
    return {"ran": ran, "skipped": skipped, "attempt": attempt}
