"""The GPU paths, checked in a few minutes on a machine with GPUs (the same checks on CPU elsewhere).

    bash benchmarks/gpu_check.sh             # = python -m benchmarks.gpu_check --out benchmarks/out
    python -m benchmarks.gpu_check --cpu     # the CPU fallback (what CI-less machines without a GPU can run)

Checks, each printed as one line and written to ``<out>/gpu_check.json``:

* ``sinkhorn``: dense Sinkhorn-Knopp on N × K scores held on the device vs the same scores on the host: seconds,
  passes and label agreement (the solver allocates its N×K kernel on the rows' device).
* ``stage1_step``: the stage-1 step (AVModel, joint loss, backward, AdamW) on the device, steps/s.
* ``two_ranks``: two processes, one GPU each, in a group of :func:`distributed.cluster.dist.backend_for`
  (gloo beside NCCL): L_NC with the audio gathered and the frame denominators reduced (``column_logsumexp``) equals
  the gathered loss; a CPU all-reduce (the layer's step flags and index gathers) works beside the CUDA ones; the
  Sinkhorn over the two ranks' rows gives the one-process labels. Skipped with fewer than 2 devices.
* ``detector_step``: Faster R-CNN (mobilenet_v3_fpn, 128 px) training steps on the device, images/s.
* ``pipeline``: the whole tiny pipeline through Ray (``clusters/local/pipeline_tiny.yaml``) with
  ``stage1.train.use_gpu`` and ``detector.use_gpu``, one stage-1 worker per device (at most 2), and its wall time.

Exit status 1 if any check failed; the last line is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_sinkhorn(device: torch.device, n: int, k: int) -> dict:
    from avdet.sinkhorn import column_marginal, sinkhorn_knopp
    g = torch.Generator().manual_seed(0)
    log_p = torch.log_softmax(torch.randn(n, k, generator=g) * 3, dim=1)
    out = {}
    for where, rows in (("host", log_p), ("device", log_p.to(device))):
        _sync(device)
        t0 = time.perf_counter()
        res = sinkhorn_knopp(rows, 20.0, column_marginal(k), max_iters=200, tol=1e-3)
        _sync(device)
        out[where] = {"s": round(time.perf_counter() - t0, 3), "passes": res.iters, "converged": bool(res.converged),
                      "labels": res.labels.cpu()}
    agree = float((out["host"].pop("labels") == out["device"].pop("labels")).double().mean())
    return {"n": n, "k": k, **out, "label_agreement": agree, "ok": agree > 0.999 and out["device"]["converged"]}


def check_stage1_step(device: torch.device, steps: int) -> dict:
    from avdet.config import ModelConfig
    from avdet.losses import joint_loss
    from avdet.model import AVModel
    cfg = ModelConfig(num_clusters=309, image_size=128, visual_width=16, audio_width=16, embed_dim=64)
    model = AVModel(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    frames, audio = torch.randn(32, 3, 128, 128, generator=g), torch.randn(32, 1, 64, 101, generator=g)
    labels = torch.randint(0, 309, (32,), generator=g)
    frames, audio, labels = frames.to(device), audio.to(device), labels.to(device)
    losses = []
    for i in range(steps + 1):
        if i == 1:
            _sync(device)
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = joint_loss(model(frames, audio), labels, 0.5)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    _sync(device)
    rate = steps / (time.perf_counter() - t0)
    return {"steps_per_s": round(rate, 2), "samples_per_s": round(32 * rate, 1), "first_loss": losses[0],
            "last_loss": losses[-1], "ok": all(np.isfinite(losses)) and losses[-1] < losses[0]}


def _two_ranks_job(rank: int, world: int, out_dir: str, use_gpu: bool) -> None:
    import torch.distributed as tdist

    import torch.nn.functional as F
    from avdet.losses import nce_loss
    from avdet.sinkhorn import column_marginal, sinkhorn_knopp
    from distributed.cluster.dist import all_gather_with_grad, column_logsumexp, make_reduce
    device = torch.device(f"cuda:{rank}" if use_gpu else "cpu")
    g = torch.Generator().manual_seed(rank)
    v = F.normalize(torch.randn(16, 32, 8, 8, generator=g), dim=1).to(device).requires_grad_()
    a = F.normalize(torch.randn(16, 32, generator=g), dim=1).to(device).requires_grad_()
    rho, clip = torch.tensor(0.07, device=device), torch.arange(16, device=device) + 100 * rank
    local = nce_loss(v, a, rho, all_gather_with_grad, clip, column_logsumexp)
    local.backward()
    gathered = nce_loss(v, a, rho, all_gather_with_grad, clip)
    flag = torch.tensor([1], dtype=torch.int64)                      # a CPU tensor, as the step flag is
    tdist.all_reduce(flag)
    gen = torch.Generator().manual_seed(7)
    log_p = torch.log_softmax(torch.randn(20000, 100, generator=gen) * 3, dim=1)
    rows = log_p[:12000] if rank == 0 else log_p[12000:]
    res = sinkhorn_knopp(rows.to(device), 20.0, column_marginal(100), tol=1e-3, reduce=make_reduce())
    one = sinkhorn_knopp(log_p, 20.0, column_marginal(100), tol=1e-3).labels
    mine = one[:12000] if rank == 0 else one[12000:]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
        "loss_local": float(local.detach()), "loss_gathered": float(gathered.detach()), "grad_finite": bool(torch.isfinite(v.grad).all()),
        "cpu_flag": int(flag), "sinkhorn_agreement": float((res.labels.cpu() == mine).double().mean())}))


def check_two_ranks(use_gpu: bool) -> dict:
    from distributed.cluster.dist import backend_for, spawn_loopback
    if use_gpu and torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s); NCCL needs one GPU per rank", "ok": True}
    with tempfile.TemporaryDirectory() as tmp:
        spawn_loopback(_two_ranks_job, 2, tmp, use_gpu, backend=backend_for(use_gpu))
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in (0, 1)]
    ok = all(abs(r["loss_local"] - r["loss_gathered"]) < 1e-4 and r["grad_finite"] and r["cpu_flag"] == 2
             and r["sinkhorn_agreement"] > 0.999 for r in ranks)
    return {"backend": backend_for(use_gpu), "ranks": ranks, "ok": ok}


def check_detector_step(device: torch.device, steps: int) -> dict:
    from avdet.config import DetectorConfig
    from benchmarks.detector import plain_model, synthetic_batch
    cfg = DetectorConfig(num_classes=309, min_size=128, max_size=128)
    model = plain_model(cfg).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    b = synthetic_batch(8, 128, 309)
    images = [torch.from_numpy(f).permute(2, 0, 1).float().div(255).to(device) for f in b["frames"]]
    targets = [{"boxes": torch.from_numpy(b["box"][i:i + 1]).to(device),
                "labels": torch.tensor([int(b["cls"][i])], device=device)} for i in range(8)]
    for i in range(steps + 1):
        if i == 1:
            _sync(device)
            t0 = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return {"images_per_s": round(8 * steps / (time.perf_counter() - t0), 1), "last_loss": float(loss.detach()),
            "ok": bool(torch.isfinite(loss))}


def check_pipeline(use_gpu: bool, workdir: str, timeout_s: float) -> dict:
    workers = max(1, min(2, torch.cuda.device_count())) if use_gpu else 2
    flag = "true" if use_gpu else "false"
    cmd = [sys.executable, "jobs/full_vggsound.py", "--config", "clusters/local/pipeline_tiny.yaml",
           f"workdir={workdir}", f"stage1.train.use_gpu={flag}", f"stage1.train.num_workers={workers}",
           f"detector.use_gpu={flag}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    return {"command": " ".join(cmd[1:]), "wall_s": round(time.perf_counter() - t0, 1), "stage1_workers": workers,
            "returncode": proc.returncode, "tail": tail, "ok": proc.returncode == 0}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="the CPU fallback even when a GPU is present")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "out"), help="folder of gpu_check.json")
    p.add_argument("--skip", default="", help="comma-separated checks to leave out (e.g. pipeline)")
    args = p.parse_args(argv)
    use_gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda:0" if use_gpu else "cpu")
    n = 1_000_000 if use_gpu else 20_000
    checks = {"sinkhorn": lambda: check_sinkhorn(device, n, 1000),
              "stage1_step": lambda: check_stage1_step(device, 20 if use_gpu else 3),
              "two_ranks": lambda: check_two_ranks(use_gpu),
              "detector_step": lambda: check_detector_step(device, 20 if use_gpu else 2),
              "pipeline": lambda: check_pipeline(use_gpu, tempfile.mkdtemp(prefix="avdet-gpu-check-"), 420)}
    skip = {s for s in args.skip.split(",") if s}
    figures = {"device": torch.cuda.get_device_name(0) if use_gpu else "cpu (fallback)",
               "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    print(f"gpu_check on {figures['device']} ({figures['gpus']} GPU(s))", flush=True)
    for name, run in checks.items():
        if name in skip:
            continue
        t0 = time.perf_counter()
        try:
            figures[name] = run()
        except Exception as e:           # noqa: BLE001 - report every check, then fail
            figures[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        figures[name]["check_s"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {json.dumps(figures[name], default=str)}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "gpu_check.json").write_text(json.dumps(figures, indent=1, default=str))
    status = {k: v["ok"] for k, v in figures.items() if isinstance(v, dict)}
    print(json.dumps(status))
    if not all(status.values()):
        sys.exit(1)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
