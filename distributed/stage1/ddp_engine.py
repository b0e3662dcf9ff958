"""Stage 1 under torch's DistributedDataParallel instead of DeepSpeed (``stage1.train.engine: ddp``).

:class:`DDPEngine` has the part of DeepSpeed's engine interface the stage-1 code uses — ``engine(frames, audio)``,
``backward``, ``step``, ``module``, ``optimizer``, ``train``/``eval``, ``save_checkpoint``/``load_checkpoint`` — so
:mod:`.worker`, :mod:`.methods` and :func:`.engine.save_checkpoint` (checksums, every rank's RNG) do not know which
runs. DDP all-reduces the gradients in buckets while the backward pass runs (overlapped); the optimizer state is
replicated, so rank 0 writes the whole checkpoint (one ``ddp_state.pt``, loaded with ``weights_only=True``).

Differences from the DeepSpeed path: fp32 only (``precision`` must be fp32), no ZeRO (``zero_stage`` is ignored), and
with ``warmup_steps`` a linear warm-up then cosine decay to 0 (DeepSpeed's WarmupCosineLR warms up on a log curve).
BatchNorm buffers are not broadcast every step (``broadcast_buffers=False``), as under DeepSpeed: the worker averages
them after each epoch.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from distributed.cluster.dist import get_rank, get_world_size
from distributed.stage1.config import Stage1TrainConfig

STATE_FILE = "ddp_state.pt"
LATEST = "latest"


def _optimizer(params, cfg: Stage1TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)


def _schedule(cfg: Stage1TrainConfig, steps_per_epoch: int):
    """lr factor per optimizer step: 1 (no warm-up), else linear warm-up over ``warmup_steps`` then cosine to 0."""
    if cfg.warmup_steps <= 0:
        return lambda step: 1.0
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch / cfg.grad_accum))
    warm = min(cfg.warmup_steps, total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    return factor


class DDPEngine:
    """``model`` wrapped in DistributedDataParallel (one process: the model itself), its optimizer, lr schedule,
    gradient clipping and accumulation."""

    def __init__(self, model: torch.nn.Module, cfg: Stage1TrainConfig, steps_per_epoch: int):
        if cfg.precision != "fp32":
            raise ValueError(f"stage1.train.engine=ddp runs fp32 only (precision={cfg.precision!r}); use the "
                             f"DeepSpeed engine for bf16/fp16")
        self.cfg, self.module = cfg, model
        if cfg.use_gpu and torch.cuda.is_available():
            model.cuda()                                           # Ray Train set this worker's device
        device = next(model.parameters()).device
        self.wrapped = model if get_world_size() == 1 else torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False,
            find_unused_parameters=True)         # a method's loss may leave some heads out of a step
        self.optimizer = _optimizer([p for p in model.parameters() if p.requires_grad], cfg)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(cfg, steps_per_epoch))
        self.micro_steps = 0

    def __call__(self, *args, **kwargs):
        return self.wrapped(*args, **kwargs)

    def train(self) -> "DDPEngine":
        self.wrapped.train()
        return self

    def eval(self) -> "DDPEngine":
        self.wrapped.eval()
        return self

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.cfg.grad_accum).backward()

    def step(self) -> None:
        """An optimizer step every ``grad_accum`` micro-steps (clip, step, schedule, zero the gradients)."""
        self.micro_steps += 1
        if self.micro_steps % self.cfg.grad_accum:
            return
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save_checkpoint(self, ckpt_dir: str, tag: str | None = None, client_state: dict | None = None) -> None:
        """Rank 0 writes ``<ckpt_dir>/<tag>/ddp_state.pt`` (model, optimizer, schedule, micro-steps, client_state)
        and ``<ckpt_dir>/latest``; the other ranks hold the same state and write nothing."""
        if get_rank() != 0:
            return
        tag = tag or f"step{self.micro_steps}"
        out = Path(ckpt_dir) / tag
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "lr_scheduler": self.lr_scheduler.state_dict(), "micro_steps": self.micro_steps,
                    "client_state": client_state or {}}, out / STATE_FILE)
        (Path(ckpt_dir) / LATEST).write_text(tag)

    def load_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> tuple[str | None, dict]:
        """(path, client_state) of the checkpoint ``tag`` (default: ``latest``), loaded into the model and the
        optimizer on this rank; (None, {}) when there is none."""
        root = Path(ckpt_dir)
        if tag is None:
            if not (root / LATEST).is_file():
                return None, {}
            tag = (root / LATEST).read_text().strip()
        path = root / tag / STATE_FILE
        if not path.is_file():
            return None, {}
        state = torch.load(path, map_location=next(self.module.parameters()).device, weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.micro_steps = int(state["micro_steps"])
        return str(path), state["client_state"]


