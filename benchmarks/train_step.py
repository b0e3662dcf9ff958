"""Stage-1 training throughput: a bare PyTorch loop vs the DeepSpeed engine vs Ray Train + DeepSpeed.

    python -m benchmarks.train_step             # image 128, width 16, batch 32, K=309; writes out/train_step.json
    python -m benchmarks.train_step --tiny      # seconds-long smoke run (add --no-ray to skip Ray Train)

Every arm trains the same ``AVModel`` with ``joint_loss`` on the same synthetic batch (data loading excluded), so
the differences are the framework's. In one process the arms run in interleaved blocks (the machine is shared:
load from other jobs hits every arm alike) and the figure is the median block rate. Ray Train arms run DeepSpeed
in 1 worker (given all cores) and 2 workers (one core each, ``all_gather_with_grad`` negatives); their figure is
the median of timed blocks measured inside the workers (start-up excluded). The 2-worker Ray Train run has a no-Ray
twin: two torch.multiprocessing processes in a loopback gloo group running the same step, collectives and threads,
and the same twin under torch DDP instead of DeepSpeed (``stage1.train.engine=ddp``). The three run at once and take
turns block by block (``benchmarks.common.Turns``: a warm-up lap, then ``--laps`` laps), so a drift of the machine
hits them alike; whole runs one after another differed by ±15 % here. Overheads are ``1 − rate / baseline`` in
%: against the bare loop at equal TOTAL threads (2 threads), for 2 workers also against the bare loop at the same
PER-PROCESS threads (1 thread, i.e. perfect scaling = 2 × that rate), and Ray Train against its loopback twin, the
median over laps of back-to-back blocks with its quartiles — the goal (≤ 10 %), written to benchmarks/GOALS.json
with ``--goals``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from avdet.config import ModelConfig, from_dict, to_dict
from avdet.losses import joint_loss
from avdet.model import AVModel
from benchmarks.common import Turns, add_common_args, finish, interleaved_rates, loadavg, paired_overhead
from distributed.stage1.config import Stage1TrainConfig
from distributed.stage1.engine import release_process_group

log = logging.getLogger("benchmarks.train_step")

LAM = 0.5


def synthetic_batch(cfg: ModelConfig, batch: int, n_mels: int = 64, frames_t: int = 101, seed: int = 0):
    """(frames (B,3,S,S), log-mel (B,1,n_mels,T), labels (B,)) random tensors, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g),
            torch.randn(batch, 1, n_mels, frames_t, generator=g),
            torch.randint(0, cfg.num_clusters, (batch,), generator=g))


def bare_step_fn(cfg: ModelConfig, batch, optimizer: str = "sgd", threads: int | None = None):
    """A plain PyTorch training step (zero_grad, forward, joint_loss, backward, step) as a 0-argument callable;
    ``threads`` sets torch's intra-op threads for the duration of each call."""
    torch.manual_seed(0)
    model = AVModel(cfg).train()
    opt = (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=1e-3))
    frames, audio, labels = batch

    def step():
        prev = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        opt.zero_grad(set_to_none=True)
        loss, _ = joint_loss(model(frames, audio), labels, LAM)
        loss.backward()
        opt.step()
        torch.set_num_threads(prev)
    return step


def engine_step_fn(cfg: ModelConfig, batch, train: Stage1TrainConfig, gather=None, column_lse=None):
    """The same step through ``build_engine`` (DeepSpeed: engine(...), engine.backward, engine.step)."""
    from distributed.stage1.engine import build_engine
    torch.manual_seed(0)
    engine = build_engine(AVModel(cfg), train, steps_per_epoch=1000)
    engine.train()
    frames, audio, labels = batch

    def step():
        loss, _ = joint_loss(engine(frames, audio), labels, LAM, gather=gather, column_lse=column_lse)
        engine.backward(loss)
        engine.step()
    return step


def _train_config(batch: int, optimizer: str, zero: int, workers: int = 1, engine: str = "deepspeed") -> Stage1TrainConfig:
    lr = 0.01 if optimizer == "sgd" else 1e-3
    return Stage1TrainConfig(batch_size=batch, optimizer=optimizer, lr=lr, zero_stage=zero, num_workers=workers,
                             weight_decay=0.0, engine=engine)


def in_process(cfg: ModelConfig, batch: int, optimizer: str, rounds: int, calls: int) -> dict[str, float]:
    """samples/s of the bare loop (2 threads and 1 thread) and of DeepSpeed ZeRO 0/1/2 (2 threads), interleaved."""
    data = synthetic_batch(cfg, batch)
    cores = os.cpu_count() or 1
    created_group = not torch.distributed.is_initialized()
    arms = {f"bare_{cores}t": (bare_step_fn(cfg, data, optimizer, cores), batch),
            "bare_1t": (bare_step_fn(cfg, data, optimizer, 1), batch)}
    torch.set_num_threads(cores)
    for zero in (0, 1, 2):
        arms[f"deepspeed_zero{zero}_{cores}t"] = (engine_step_fn(cfg, data, _train_config(batch, optimizer, zero)),
                                                  batch)
    try:
        return interleaved_rates(arms, rounds, calls)
    finally:
        if created_group:                     # leave the process as we found it (tests run other modules after)
            release_process_group()


def _timed_steps(config: dict) -> list[float]:
    """Inside a process group (Ray Train's or the loopback one): the DeepSpeed step on synthetic tensors with
    global-batch negatives (the audio gathered, the frame denominators reduced, as in stage 1); global samples/s per
    timed block, barriers around each block."""
    from distributed.cluster import dist
    torch.set_num_threads(config["threads"])
    cfg = from_dict(ModelConfig, config["model"])
    batch = config["batch"]
    step = engine_step_fn(cfg, synthetic_batch(cfg, batch, seed=dist.get_rank()),
                          _train_config(batch, config["optimizer"], config["zero"], dist.get_world_size(),
                                        config.get("engine", "deepspeed")),
                          gather=dist.all_gather_with_grad, column_lse=dist.column_logsumexp)
    turns = Turns.from_dict(config["turns"]) if config.get("turns") else None
    arm, main = config.get("arm", ""), dist.get_rank() == 0
    positions = turns.positions(arm) if turns else [None] * (config["rounds"] + 1)
    if turns:
        dist.barrier()                                        # the whole group built before it says it is ready
        if main:
            turns.ready(arm)

    def block(position: int | None, calls: int) -> float:
        """``calls`` steps in this arm's turn at ``position`` (rank 0 waits for it, the others at the barrier)."""
        if turns and main:
            turns.wait(position, arm)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        dist.barrier()
        elapsed = time.perf_counter() - t0
        if turns and main:
            turns.done(position)
        return batch * dist.get_world_size() * calls / elapsed

    try:
        block(positions[0], 1)                                # warm-up, untimed
        rates = [block(p, config["calls"]) for p in positions[1:]]
        if turns and main:
            turns.wait_end(arm)                               # no teardown inside another arm's block
        dist.barrier()
    except BaseException:
        if turns:
            turns.abort()
        raise
    return rates


def ray_worker(config: dict) -> None:
    """Ray Train worker: :func:`_timed_steps`; rank 0 writes {"rates": [...]} to ``config["out"]``. Every rank
    reports once at the end."""
    import ray.train

    from distributed.cluster import dist
    rates = _timed_steps(config)
    if dist.is_main_process():
        Path(config["out"]).write_text(json.dumps({"rates": rates}))
    ray.train.report({"done": 1})


def _loopback_worker(rank: int, world: int, config: dict) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})   # DeepSpeed reads them
    rates = _timed_steps(config)
    if rank == 0:
        Path(config["out"]).write_text(json.dumps({"rates": rates}))


def loopback_rates(cfg: ModelConfig, batch: int, optimizer: str, workers: int, rounds: int, calls: int,
                   zero: int = 0, engine: str = "deepspeed", turns: Turns | None = None, arm: str = "") -> list[float]:
    """The no-Ray baseline of :func:`ray_train_rates`: ``workers`` processes of torch.multiprocessing in a loopback
    gloo group (the same collectives, threads and step); global samples/s of each timed block, taking ``arm``'s
    turns of ``turns`` when given."""
    from distributed.cluster.dist import spawn_loopback
    per = max(1, (os.cpu_count() or 1) // workers)
    with tempfile.TemporaryDirectory(prefix="avdet-bench-loopback-") as tmp:
        out = Path(tmp) / "rates.json"
        spawn_loopback(_loopback_worker, workers, {"model": to_dict(cfg), "batch": batch, "optimizer": optimizer,
                                                   "zero": zero, "threads": per, "rounds": rounds, "calls": calls,
                                                   "out": str(out), "engine": engine, "arm": arm,
                                                   "turns": turns.to_dict() if turns else None})
        return json.loads(out.read_text())["rates"]


def ray_train_rates(cfg: ModelConfig, batch: int, optimizer: str, workers: int, rounds: int, calls: int,
                    zero: int = 0, turns: Turns | None = None, arm: str = "") -> list[float]:
    """Global samples/s of each timed block of ``workers`` Ray Train workers (cores split evenly, one torch thread
    per core), taking ``arm``'s turns of ``turns`` when given."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cores = os.cpu_count() or 1
    per = max(1, cores // workers)
    with tempfile.TemporaryDirectory(prefix="avdet-bench-ray-") as tmp:
        out = Path(tmp) / "rates.json"
        trainer = TorchTrainer(
            ray_worker,
            train_loop_config={"model": to_dict(cfg), "batch": batch, "optimizer": optimizer, "zero": zero,
                               "threads": per, "rounds": rounds, "calls": calls, "out": str(out), "arm": arm,
                               "turns": turns.to_dict() if turns else None},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": per}),
            run_config=RunConfig(name=f"bench_train_step_w{workers}", storage_path=str(Path(tmp) / "ray")))
        result = trainer.fit()
        if result.error is not None:
            raise RuntimeError(f"Ray Train benchmark with {workers} workers failed: {result.error}")
        return json.loads(out.read_text())["rates"]


W2_ARMS = ("loopback_deepspeed_w2_1t", "ray_deepspeed_w2_1t", "loopback_ddp_w2_1t")


def interleaved_w2(cfg: ModelConfig, batch: int, optimizer: str, rounds: int, calls: int,
                   timeout_s: float = 600.0) -> dict[str, list[float]]:
    """The three 2-worker arms (:data:`W2_ARMS`: the loopback DeepSpeed twin, Ray Train + DeepSpeed, the loopback
    DDP twin) started at once and timed in turn, block by block (:class:`benchmarks.common.Turns`): a warm-up lap,
    then ``rounds`` laps of one block each, so a drift of the machine's speed hits every arm alike. Returns
    {arm: samples/s of each timed block}, block i of every arm from lap i."""
    import threading

    with tempfile.TemporaryDirectory(prefix="avdet-bench-turns-") as tmp:
        turns = Turns(tmp, list(W2_ARMS) * (rounds + 1), timeout_s=timeout_s)
        runs = {"loopback_deepspeed_w2_1t": lambda a: loopback_rates(cfg, batch, optimizer, 2, rounds, calls,
                                                                     turns=turns, arm=a),
                "ray_deepspeed_w2_1t": lambda a: ray_train_rates(cfg, batch, optimizer, 2, rounds, calls,
                                                                 turns=turns, arm=a),
                "loopback_ddp_w2_1t": lambda a: loopback_rates(cfg, batch, optimizer, 2, rounds, calls,
                                                               engine="ddp", turns=turns, arm=a)}
        out: dict[str, list[float]] = {}
        errors: dict[str, BaseException] = {}

        def run(arm: str) -> None:
            try:
                out[arm] = runs[arm](arm)
            except BaseException as e:                 # noqa: BLE001 - reported below, after the others stop
                errors[arm] = e
                turns.abort()

        threads = [threading.Thread(target=run, args=(a,), name=f"bench-{a}") for a in W2_ARMS
                   if a != "ray_deepspeed_w2_1t"]
        for t in threads:
            t.start()
        run("ray_deepspeed_w2_1t")                     # Ray Train's driver in this thread
        for t in threads:
            t.join()
        if errors:
            first = next(iter(errors.values()))
            raise RuntimeError("interleaved 2-worker arms failed: "
                               + "; ".join(f"{a}: {type(e).__name__}: {e}" for a, e in errors.items())) from first
        return out


def ray_rates(cfg: ModelConfig, batch: int, optimizer: str, rounds: int, calls: int, laps: int) -> dict:
    """Ray Train + DeepSpeed ZeRO 0 with 1 worker (all cores; ``rounds`` blocks), and the 2-worker arms of
    :func:`interleaved_w2` (``laps``), on a
    loopback Ray with its dashboard (the state API Ray Train's placement-group cleaner polls). Each arm's figure is
    the median of its blocks; ``w2_blocks`` keeps every block."""
    import ray

    from distributed.cluster.ray_local import start_local_ray, train_state_api
    cores = os.cpu_count() or 1
    start_local_ray(num_cpus=cores, object_store_memory=256 * 2**20, **train_state_api())
    try:
        fig: dict = {f"ray_deepspeed_w1_{cores}t": statistics.median(ray_train_rates(cfg, batch, optimizer, 1,
                                                                                     rounds, calls))}
        blocks = interleaved_w2(cfg, batch, optimizer, laps, calls)
        fig.update({k: statistics.median(v) for k, v in blocks.items()})
        fig["w2_blocks"] = blocks
        return fig
    finally:
        ray.shutdown()


def overheads(fig: dict, cores: int) -> dict[str, float]:
    """Overhead % = 100·(1 − rate/baseline): vs the bare loop at equal total threads, and for the 2-worker run
    also vs 2 × the bare 1-thread loop (same per-process threads, perfect scaling)."""
    base, base1 = fig[f"bare_{cores}t"], fig["bare_1t"]
    out = {}
    for k, v in list(fig.items()):
        if k.startswith(("deepspeed_", "ray_")):
            out[f"overhead_pct_{k}_vs_bare_{cores}t"] = 100.0 * (1 - v / base)
    w2 = fig.get("ray_deepspeed_w2_1t") if cores >= 2 else None
    if w2 is not None:
        out["overhead_pct_ray_deepspeed_w2_1t_vs_2x_bare_1t"] = 100.0 * (1 - w2 / (2 * base1))
    blocks = fig.get("w2_blocks")
    if w2 is not None and blocks:
        laps = paired_overhead(blocks, "ray_deepspeed_w2_1t", "loopback_deepspeed_w2_1t")
        out["overhead_pct_ray_deepspeed_w2_1t_vs_loopback_w2_1t"] = laps["median"]
        out["overhead_pct_ray_deepspeed_w2_1t_vs_loopback_w2_1t_quartiles"] = laps["quartiles"]
        out["overhead_pct_ray_deepspeed_w2_1t_vs_loopback_w2_1t_per_lap"] = laps["per_round"]
    return out


def goals(fig: dict) -> list[dict]:
    """The issue's training-step goal: Ray Train + DeepSpeed ≤ 10 % over the no-Ray loopback run at 2 workers (the
    median over laps of the back-to-back blocks' overheads)."""
    ov = fig.get("overhead_pct_ray_deepspeed_w2_1t_vs_loopback_w2_1t")
    if ov is None:
        return []
    return [{"goal": "stage1_step_ray_train_overhead_pct_w2", "measured": round(ov, 1), "target": "<= 10",
             "met": bool(ov <= 10)}]


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--clusters", type=int, default=309)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--rounds", type=int, default=5, help="timed blocks per arm (in process)")
    p.add_argument("--calls", type=int, default=4, help="steps per block")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Train arms")
    p.add_argument("--laps", type=int, default=15, help="timed blocks per arm of the 2-worker arms, taken in turn")
    p.add_argument("--goals", action="store_true", help="write the goals to benchmarks/GOALS.json (make bench)")
    add_common_args(p, "train_step")
    args = p.parse_args(argv)
    if args.tiny:
        args.image_size, args.width, args.batch_size, args.clusters, args.rounds, args.calls = 64, 4, 4, 10, 2, 1
        args.laps = 2
    return args


def model_config(args) -> ModelConfig:
    return ModelConfig(image_size=args.image_size, visual_width=args.width, audio_width=args.width, embed_dim=32,
                       num_clusters=args.clusters)


def main(argv: list[str] | None = None) -> dict:
    argv = list(argv or [])
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cores, cfg, load0 = os.cpu_count() or 1, model_config(args), loadavg()
    fig = in_process(cfg, args.batch_size, args.optimizer, args.rounds, args.calls)
    log.info("in process: %s", {k: round(v, 1) for k, v in fig.items()})
    if not args.no_ray:
        fig.update(ray_rates(cfg, args.batch_size, args.optimizer, args.rounds, args.calls, args.laps))
    fig.update(overheads(fig, cores))
    fig["goals"] = goals(fig)
    fig.update({"model": to_dict(cfg), "batch_size_per_process": args.batch_size, "optimizer": args.optimizer,
                "cores": cores, "loadavg_1m_start_end": [load0, loadavg()]})
    ov = {k.replace("overhead_pct_", ""): round(v, 1) for k, v in fig.items()
          if k.startswith("overhead_pct_") and isinstance(v, float)}
    quart = fig.get("overhead_pct_ray_deepspeed_w2_1t_vs_loopback_w2_1t_quartiles")
    summary = (f"AVModel {cfg.image_size}px w{cfg.visual_width} K={cfg.num_clusters}, batch {args.batch_size}, "
               f"{args.optimizer}: bare {cores}t {fig[f'bare_{cores}t']:.1f}/s, bare 1t {fig['bare_1t']:.1f}/s, "
               + ", ".join(f"{k} {v:.1f}/s" for k, v in fig.items() if k.startswith(("deepspeed_", "ray_", "loopback_"))
                           and isinstance(v, float))
               + f"; overhead % {ov}"
               + (f" (Ray Train vs loopback, {args.laps} laps in turn: quartiles {quart[0]:.1f} to {quart[1]:.1f})"
                  if quart else "")
               + f"; load avg {fig['loadavg_1m_start_end'][0]:.1f}->"
                 f"{fig['loadavg_1m_start_end'][1]:.1f}")
    path = finish("train_step", fig, summary, argv, args)
    log.info("%s -> %s", summary, path)
    return fig


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
