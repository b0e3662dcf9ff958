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
