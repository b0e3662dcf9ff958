"""The per-worker loop of stage 1 (runs inside each Ray Train worker, under DeepSpeed).

Reproducible: every epoch each rank streams its own part of that epoch's seeded shard order
(``data.stream.ray_dataset(..., epoch, part=(rank, world))``), model initialisation is seeded, and a round's rows
are put in index order before it is solved, so one seed (and one world size) gives the same label tables on every
run — and a run resumed from a checkpoint lands on the uninterrupted run's labels.

Epoch: train on this worker's stream part with L = λ·L_NC + (1−λ)·L_clust (negatives from the global batch), then,
when the schedule says so, score this worker's share of the WHOLE dataset and re-optimise the labels (distributed
Sinkhorn-Knopp, dense or sparse, where only K-vectors cross the network; the relabel actor pool; or, for the first
rounds, FAISS k-means on the features — ``relabel.relabel_round``), then report, and every ``checkpoint_every``
epochs checkpoint (every rank saves its ZeRO shard; rank 0 adds the label table). Every rank reports the same number
of times, or Ray Train hangs.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from avdet.config import from_dict
from avdet.fileio import write_atomic, write_json
from avdet.model import model_state
from data.stream import iter_torch_batches, part_batches, to_device
from distributed.cluster import dist
from distributed.cluster.progress import Progress
from distributed.stage1.config import Stage1Config
from distributed.stage1.engine import build_engine, load_checkpoint, save_checkpoint
from distributed.stage1.labels import LabelTable
from distributed.stage1.methods import METHODS, LossFn, State, build_model
from distributed.stage1.relabel_pool import RelabelService
from distributed.stage1.responses import ResponseCache

log = logging.getLogger(__name__)

LABELS_DIR = "labels"
RESPONSES_DIR = "responses"
HISTORY = "history.json"
FAULT_MARKER = "fault_injected"
PROPOSAL_INPUTS = ("proposals", "proposal_count")     # in the batch only when the method reads a proposal set


def train_epoch(engine, stream, loss_fn: LossFn, epoch: int, step: int, report_every: int,
                writer=None, fault: Callable[[int], None] | None = None,
                progress: Progress | None = None) -> tuple[int, dict]:
    """One epoch over ``stream`` (an iterator of decoded batches), each step minimising the method's
    ``loss_fn(model output, batch)`` (:mod:`.methods`). Returns (global step, mean loss parts).
    The loss parts stay where the loss is (no host sync per step) and are read every ``report_every`` steps (log
    line, TensorBoard) and at the end; Ray Train hears from the epoch (``_epochs``), not from steps.
    ``fault(step)`` is called before every step (fault injection, tests only); ``progress`` (rank 0) feeds the
    console's progress bar."""
    engine.train()
    device = next(engine.module.parameters()).device
    totals: dict[str, torch.Tensor | float] = {}
    n = 0
    it = iter(stream)
    t0 = time.perf_counter()
    while True:
        batch = next(it, None)
        sizes = dist.step_sizes(0 if batch is None else len(batch["index"]))
        if min(sizes) == 0:                       # streams may end at different steps: all ranks stop together
            break
        if fault is not None:
            fault(step)
        batch = to_device(batch, device)
        with dist.known_batch_sizes(sizes):       # the loss's gathers reuse the sizes exchanged above
            out = engine(batch["frames"], batch["audio"], **{k: batch[k] for k in PROPOSAL_INPUTS if k in batch})
            loss, parts = loss_fn(out, batch)
        engine.backward(loss)
        engine.step()
        step, n = step + 1, n + 1
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v
        if progress is not None:
            progress.step(epoch, step, len(batch["index"]) * dist.get_world_size())
        if step % report_every == 0:
            now = {k: float(v) for k, v in parts.items()}
            if writer is not None:
                for k, v in now.items():
                    writer.add_scalar(f"stage1/{k}", v, step)
            rate = n * len(batch["index"]) * dist.get_world_size() / (time.perf_counter() - t0)
            log.info("epoch %d step %d %s (%.0f samples/s)", epoch, step,
                     " ".join(f"{k} {v:.4f}" for k, v in now.items() if k != "rho"), rate)
    return step, {k: float(v) / max(n, 1) for k, v in totals.items()}


def _resume(engine, labels_dir: Path) -> tuple[int, int, State]:
    """(next epoch, step, the method's state: label table and response cache) from Ray Train's latest checkpoint,
    or a fresh start (epoch 0)."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0, 0, State(LabelTable.load(labels_dir, 0))
    with ckpt.as_directory() as d:
        state = load_checkpoint(engine, Path(d) / "deepspeed")
        table = LabelTable.load(Path(d) / LABELS_DIR, state["label_version"])
        cache = None if state.get("responses_version") is None else \
            ResponseCache.load(Path(d) / RESPONSES_DIR, state["responses_version"])
    log.info("resumed from checkpoint: epoch %d done, step %d, labels v%d%s", state["epoch"], state["step"],
             table.version, "" if cache is None else f", responses v{cache.version}")
    return state["epoch"] + 1, state["step"], State(table, cache)


def _checkpoint_and_report(engine, state: State, epoch: int, step: int, metrics: dict) -> None:
    """Every rank saves its DeepSpeed shard into its own temp dir; Ray Train merges them into one checkpoint. Rank 0
    adds the label table and the response cache (when the method has one)."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(engine, Path(d) / "deepspeed", {
            "epoch": epoch, "step": step, "label_version": state.table.version,
            "responses_version": None if state.cache is None else state.cache.version})
        if dist.is_main_process():
            state.table.save(Path(d) / LABELS_DIR)
            if state.cache is not None:
                state.cache.save(Path(d) / RESPONSES_DIR)
            (Path(d) / "metrics.json").write_text(json.dumps(metrics, indent=1))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))


def _fault_injector(fail_at_steps: list[int], out_dir: Path) -> Callable[[int], None] | None:
    """Fault injection (tests only): the last rank kills its own process (``os._exit(1)``: no cleanup, no Python
    exception, like a lost worker) on reaching each global step of ``fail_at_steps``, once per step: the marker
    file ``fault_injected-step<N>`` under ``out_dir``, written first, keeps the restarted group from dying there
    again."""
    if not fail_at_steps or dist.get_rank() != dist.get_world_size() - 1:
        return None
    steps = set(fail_at_steps)

    def fault(step: int) -> None:
        marker = out_dir / f"{FAULT_MARKER}-step{step}"
        if step in steps and not marker.exists():
            marker.write_text(json.dumps({"step": step, "rank": dist.get_rank(), "pid": os.getpid(),
                                          "time": time.time()}))
            log.warning("fault injection: rank %d (pid %d) exits at step %d", dist.get_rank(), os.getpid(), step)
            logging.shutdown()
            os._exit(1)
    return fault


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. ``config`` = {"stage1": resolved Stage1Config as a dict, "num_train": int}.
    With ``relabel.mode="actors"`` rank 0 owns the relabel actor pool (it dies with rank 0, so a restarted group
    starts a fresh pool)."""
    import ray

    cfg = from_dict(Stage1Config, config["stage1"])
    dist.setup_logging(dist.get_rank())
    torch.manual_seed(cfg.train.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(cfg.out_dir)
    model = build_model(cfg)
    steps = max(1, config["num_train"] // (cfg.train.batch_size * dist.get_world_size()))
    engine = build_engine(model, cfg.train, steps)
    start_epoch, step, state = _resume(engine, out / LABELS_DIR)
    writer = _writer(out / "tb") if dist.is_main_process() else None
    fault = _fault_injector(cfg.train.fail_at_step, out)
    progress = Progress(out, "stage1", cfg.train.epochs, steps) if dist.is_main_process() else None
    nodes = len(set(dist.all_gather_objects(ray.get_runtime_context().get_node_id())))   # Ray nodes in the group
    service = RelabelService(cfg.relabel, cfg.sinkhorn) if (cfg.relabel.mode == "actors"
                                                            and dist.is_main_process()) else None
    try:
        _epochs(cfg, engine, state, start_epoch, step, nodes, writer, fault, service, progress)
    finally:
        if service is not None:
            service.shutdown()
    if dist.is_main_process():
        write_atomic(out / "model.pt", lambda f: torch.save(model_state(engine.module), f))
        progress.close()
    dist.barrier()


def _epochs(cfg: Stage1Config, engine, state: State, start_epoch: int, step: int, nodes: int, writer,
            fault, service: RelabelService | None, progress: Progress | None = None) -> None:
    """Train on the method's loss, run its between-epoch round when scheduled (relabel, or the response cache),
    log and report, epoch after epoch; checkpoint as ``train.checkpoint_due`` says (every ``checkpoint_every``
    epochs, by wall time, after the last; a restart resumes from the latest checkpoint; the first epoch it runs
    records ``resumed_at_epoch``)."""
    import ray.train

    out = Path(cfg.out_dir)
    method = METHODS[cfg.method]
    part = (dist.get_rank(), dist.get_world_size())
    score_shard = ray.train.get_dataset_shard(f"score_{dist.get_rank()}")
    stream_cfg, score_cfg = cfg.stream_config(shuffle=True), cfg.stream_config(shuffle=False)
    last_checkpoint = time.monotonic()
    for epoch in range(start_epoch, cfg.train.epochs):
        batches = part_batches(cfg.manifest, method.split(cfg, epoch), stream_cfg, epoch, part,
                               normalise=False)                             # uint8: to_device normalises
        step, parts = train_epoch(engine, batches, method.loss(cfg, state, epoch),
                                  epoch, step, cfg.train.report_every, writer, fault, progress)
        dist.average_buffers(engine.module)     # one BatchNorm state for scoring, checkpoints and model.pt
        due = cfg.train.checkpoint_due(epoch, time.monotonic() - last_checkpoint)
        metrics = {"epoch": epoch, "step": step, "nodes": nodes, **{f"train_{k}": v for k, v in parts.items()},
                   "checkpointed": bool(dist.make_reduce()(torch.tensor([int(due)]), "max")[0])}   # rank clocks differ
        if epoch == start_epoch and start_epoch > 0:
            metrics["resumed_at_epoch"] = start_epoch
        if method.round_after(cfg, epoch):
            before = state.table
            scores = iter_torch_batches(score_shard, score_cfg, normalise=False)
            state, stats, line = method.round(engine, scores, cfg, state, epoch + 1, service)
            metrics.update({f"{method.prefix}_{k}": v for k, v in stats.items() if isinstance(v, (int, float, str))})
            if dist.is_main_process() and state.table is not before:
                state.table.save(out / LABELS_DIR)
            if progress is not None:
                progress.event(line)
        if writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    writer.add_scalar(f"epoch/{k}", v, epoch)
            writer.flush()
        if dist.is_main_process():
            _append_history(out / HISTORY, metrics)
        log.info("epoch %d done: %s", epoch, {k: round(v, 4) if isinstance(v, float) else v
                                               for k, v in metrics.items()})
        if metrics["checkpointed"]:
            _checkpoint_and_report(engine, state, epoch, step, metrics)
            last_checkpoint = time.monotonic()
        else:
            ray.train.report(metrics)


def _append_history(path: Path, metrics: dict) -> None:
    """Per-epoch metrics, oldest first; an epoch re-run after a resume replaces its earlier row. Atomic."""
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows = [r for r in rows if r["epoch"] < metrics["epoch"]] + [metrics]
    write_json(path, rows)


def _writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(path))
