"""DeepSpeed engine for stage 1: config dict from ``Stage1TrainConfig``, ``deepspeed.initialize``, checkpoints.

Fast init on CPU (measured on the 2-core dev machine, deepspeed 0.19.8, torch 2.14.1):
* DeepSpeed's ``TorchBackend`` JIT-compiles the shared-memory comm op (``deepspeed_shm_comm``) on first use (~30 s
  cold). That op serves only ``inference_all_reduce`` (tensor-parallel inference), never training collectives, so
  unless ``Stage1TrainConfig.shm_comm`` is set we mark it incompatible in ``deepspeed.ops.__compatible_ops__`` (the
  module-level dict DeepSpeed consults in ``comm/torch.py:build_shm_op``) and nothing is compiled: init ~2.5 s.
* With ``shm_comm=True`` the build is cached in ``TORCH_EXTENSIONS_DIR`` (default here: ``<venv>/torch_extensions``),
  so only the first run pays for it (warm init ~2.3 s).
* AdamW runs with ``"torch_adam": true`` (torch.optim.AdamW): no fused-Adam build. SGD is torch.optim.SGD.

Checkpoints: DeepSpeed (0.19.8, ``TorchCheckpointEngine.load``) reads every file with
``torch.load(..., weights_only=False)``, i.e. it unpickles: only load checkpoints this project wrote. Checked: the
model-states file (``mp_rank_00_model_states.pt``, which carries ``client_state``) loads under ``weights_only=True``
because our client_state is plain types and tensors (RNG states included); the ZeRO optimizer-state files do not
(they pickle ``deepspeed.runtime.fp16.loss_scaler.LossScaler``).

So a checkpoint is verified before DeepSpeed opens it: every rank, right after saving, writes
``checksums-rank<r>.json`` beside the files it wrote (sha256 of each; rank r owns ``*zero_pp_rank_<r>_*``, rank 0
everything else — the model states, ``latest``, ``zero_to_fp32.py``); :func:`load_checkpoint` refuses to load
(:class:`CheckpointIntegrityError`, naming the file) when a file differs from its checksum, is missing, or is not
listed at all — before any ``torch.load`` runs. This guards against a checkpoint changed or planted after it was
written, not against someone who can rewrite the checksum files too (they live in the same directory).
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import re
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distributed.cluster.dist import (all_gather_objects, backend_for, ensure_dist_env, get_rank, get_world_size,
                                      init_group, is_dist, local_rendezvous, remove_rendezvous)
from distributed.stage1.config import Stage1TrainConfig

log = logging.getLogger(__name__)

SHM_COMM_OP = "deepspeed_shm_comm"
_RNG_KEY = "_rng_per_rank"
CHECKSUMS = "checksums-rank{}.json"
_CHECKSUMS_RE = re.compile(r"^checksums-rank\d+\.json$")
_ZERO_RANK_RE = re.compile(r"zero_pp_rank_(\d+)_")


class CheckpointIntegrityError(RuntimeError):
    """A DeepSpeed checkpoint file differs from the checksum recorded when it was written, or is not recorded."""


def deepspeed_config(cfg: Stage1TrainConfig, steps_per_epoch: int) -> dict:
    """The DeepSpeed config dict. ``steps_per_epoch`` = micro-batches per worker per epoch (for the scheduler)."""
    if cfg.optimizer == "sgd":
        opt = {"type": "SGD", "params": {"lr": cfg.lr, "momentum": cfg.momentum,
                                          "weight_decay": cfg.weight_decay}}
    else:
        opt = {"type": "AdamW", "params": {"lr": cfg.lr, "betas": [cfg.momentum, 0.999], "eps": 1e-8,
                                            "weight_decay": cfg.weight_decay, "torch_adam": True}}
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "optimizer": opt,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,      # torch SGD/AdamW under ZeRO 1/2
        "steps_per_print": 10**9,                   # we log ourselves
        "wall_clock_breakdown": False,
        "seed": cfg.seed,
    }
    ds["gradient_clipping"] = cfg.grad_clip          # always: DeepSpeed's own default is 1.0, not "off"
    if cfg.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif cfg.precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    if cfg.warmup_steps > 0:
        total = max(1, math.ceil(cfg.epochs * steps_per_epoch / cfg.grad_accum))
        ds["scheduler"] = {"type": "WarmupCosineLR",
                           "params": {"total_num_steps": total, "warmup_num_steps": min(cfg.warmup_steps, total)}}
    return ds


def _default_extensions_dir() -> Path:
    """``<venv>/torch_extensions``: JIT builds survive across runs and stay with the environment they match."""
    return Path(sys.prefix) / "torch_extensions"


def prepare_deepspeed(shm_comm: bool = False) -> None:
    """Process-wide DeepSpeed setup before ``initialize``: where JIT builds are cached, and whether the shm comm op
    may be built (see module docstring). Idempotent."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_default_extensions_dir()))
    import deepspeed.ops
    compatible = deepspeed.ops.__compatible_ops__       # probed once, cached in the module; edits persist
    if not shm_comm and compatible.get(SHM_COMM_OP, False):
        compatible[SHM_COMM_OP] = False
        log.debug("deepspeed: shm comm op disabled (training uses gloo/NCCL collectives)")


def build_engine(model: torch.nn.Module, params_cfg: Stage1TrainConfig, steps_per_epoch: int):
    """``train.engine="ddp"``: :class:`.ddp_engine.DDPEngine` (torch DDP, same interface). Otherwise wrap ``model``
    in a DeepSpeed engine (optimizer, ZeRO stage, precision, clipping, accumulation from
    ``params_cfg``). Works inside an existing process group (Ray Train), under a launcher's env (torchrun), or
    as a plain process (a world of one on a file:// store). Returns the engine; ``engine.optimizer`` /
    ``engine.lr_scheduler`` hang off it."""
    params_cfg.check()
    if params_cfg.engine == "ddp":
        from distributed.stage1.ddp_engine import DDPEngine
        return DDPEngine(model, params_cfg, steps_per_epoch)
    prepare_deepspeed(params_cfg.shm_comm)
    import deepspeed
    backend = None if params_cfg.use_gpu else "gloo"
    if not is_dist() and os.environ.get("WORLD_SIZE", "1") == "1":
        # a plain `python script.py`: a world of one on a file:// store (env:// would open a TCPStore listening
        # on all interfaces); the env vars are still set because DeepSpeed reads RANK/LOCAL_RANK
        ensure_dist_env()
        init_method = local_rendezvous()
        init_group(0, 1, init_method, backend=backend_for(params_cfg.use_gpu))
        atexit.register(remove_rendezvous, init_method)     # the group lives as long as the process
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    config = deepspeed_config(params_cfg, steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=config)
    log.info("deepspeed engine: world %d, zero %d, %s, optimizer %s", get_world_size(), params_cfg.zero_stage,
             params_cfg.precision, params_cfg.optimizer)
    return engine


@torch.no_grad()
def set_parameters(engine, values: dict[str, torch.Tensor]) -> None:
    """Overwrite parameters of ``engine.module`` by name everywhere DeepSpeed keeps them — the module's tensor and,
    under ZeRO 1/2/3 or a bf16/fp16 optimizer, this rank's fragment of the fp32 master copy (else the next step would
    write the old values back) — and clear their optimizer state (moments), as for a freshly initialised layer.
    Every rank must call it with the same ``values`` (each keeps only its own fragment)."""
    from deepspeed.utils import safe_set_full_fp32_param

    params = dict(engine.module.named_parameters())
    missing = sorted(set(values) - set(params))
    if missing:
        raise KeyError(f"set_parameters: the model has no parameters {missing}")
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)     # ZeRO wraps the torch optimizer
    for name, value in values.items():
        p = params[name]
        if tuple(value.shape) != tuple(p.shape):
            raise ValueError(f"set_parameters: {name} is {tuple(p.shape)}, the new value {tuple(value.shape)}")
        p.copy_(value.to(p.device, p.dtype))
        mapping = getattr(p, "_hp_mapping", None)
        if mapping is not None or hasattr(p, "ds_id"):
            safe_set_full_fp32_param(p, value.to(p.device, torch.float32))
            for frag in (mapping.optim_fragment or {}).values() if mapping is not None else ():
                frag.zero_()                                     # this rank's slice of exp_avg, exp_avg_sq, ...
        elif inner is not None and p in getattr(inner, "state", {}):
            inner.state.pop(p)                                   # a plain torch optimizer: state rebuilt at step


def release_process_group() -> None:
    """Tear down this process's group and DeepSpeed's cached handles on it (``deepspeed.utils.groups`` keeps the
    world/data-parallel groups, ``deepspeed.comm`` its backend). A later ``build_engine`` in the same process (a
    benchmark, the next test module) then starts clean instead of failing with "Group ... is not registered"."""
    import torch.distributed as tdist
    try:
        import deepspeed.comm.comm as ds_comm
    except ImportError:
        ds_comm = None
    if ds_comm is not None and ds_comm.cdb is not None and tdist.is_initialized():
        ds_comm.destroy_process_group()         # destroys the torch group and releases DeepSpeed's references
    elif tdist.is_initialized():
        tdist.destroy_process_group()
    if ds_comm is not None:
        ds_comm.cdb = None


# ---------------------------------------------------------------------------------------------------------------
# RNG state and checkpoints


def rng_state() -> dict:
    """This process's RNG states as tensors and plain types (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
             "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(engine, ckpt_dir: str | Path, client_state: dict, tag: str | None = None) -> None:
    """Save model, optimizer, scheduler and ``client_state`` (epoch, step, label-table version, ...) plus every
    rank's RNG state. Must be called on EVERY rank (ZeRO shards are per rank; the others would hang)."""
    state = dict(client_state)
    state[_RNG_KEY] = all_gather_objects(rng_state())   # every rank's: DeepSpeed saves rank 0's client_state
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state)
    record_checksums(ckpt_dir, get_rank())


def _owner(name: str) -> int:
    """The rank that writes checkpoint file ``name``: ZeRO shards name theirs, rank 0 writes the rest."""
    m = _ZERO_RANK_RE.search(name)
    return int(m[1]) if m else 0


def _sha256(path: Path) -> str:
    from data.shards import sha256_file
    return sha256_file(path)


def record_checksums(ckpt_dir: str | Path, rank: int) -> dict[str, str]:
    """Write ``checksums-rank<rank>.json`` = {relative path: sha256} of the files this rank wrote under
    ``ckpt_dir``, atomically; returns it. Called by :func:`save_checkpoint` on every rank."""
    from avdet.fileio import write_json
    root = Path(ckpt_dir)
    sums = {p.relative_to(root).as_posix(): _sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not _CHECKSUMS_RE.match(p.name) and _owner(p.name) == rank}
    write_json(root / CHECKSUMS.format(rank), sums)
    return sums


def verify_checksums(ckpt_dir: str | Path) -> int:
    """Check every file under ``ckpt_dir`` against the ranks' ``checksums-rank*.json``; returns the number checked.
    Raises :class:`CheckpointIntegrityError` naming each changed, missing or unlisted file (nothing is unpickled)."""
    root = Path(ckpt_dir)
    listed: dict[str, str] = {}
    for f in sorted(root.glob("checksums-rank*.json")):
        listed.update(json.loads(f.read_text()))
    if not listed:
        raise CheckpointIntegrityError(
            f"checkpoint {root} has no checksums-rank*.json (written before checksums, or not by this project); "
            f"refusing to load it: DeepSpeed unpickles checkpoint files. Delete it to start the stage afresh")
    present = {p.relative_to(root).as_posix(): p for p in root.rglob("*")
               if p.is_file() and not _CHECKSUMS_RE.match(p.name)}
    problems = [f"{root / rel}: not listed in any checksums-rank*.json" for rel in sorted(set(present) - set(listed))]
    problems += [f"{root / rel}: missing" for rel in sorted(set(listed) - set(present))]
    problems += [f"{root / rel}: sha256 differs from the one recorded when it was written"
                 for rel in sorted(set(listed) & set(present)) if _sha256(present[rel]) != listed[rel]]
    if problems:
        raise CheckpointIntegrityError(f"refusing to resume from checkpoint {root} (DeepSpeed would unpickle it): "
                                       + "; ".join(problems))
    return len(present)


def load_checkpoint(engine, ckpt_dir: str | Path, tag: str | None = None, restore_rng: bool = True) -> dict:
    """Load the latest (or ``tag``) checkpoint into ``engine`` on every rank; restore this rank's RNG state (when
    the world size matches the saved one) and return the client_state. Raises FileNotFoundError if none, and
    :class:`CheckpointIntegrityError` (before anything is unpickled) if a file differs from its recorded sha256."""
    if Path(ckpt_dir).is_dir():
        verify_checksums(ckpt_dir)
    path, state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        kind = "DDP" if type(engine).__name__ == "DDPEngine" else "DeepSpeed"
        raise FileNotFoundError(f"no {kind} checkpoint under {ckpt_dir} (tag {tag or 'latest'}); "
                                f"nothing to resume from")
    state = dict(state or {})
    per_rank = state.pop(_RNG_KEY, None)
    if restore_rng and per_rank is not None:
        if len(per_rank) == get_world_size():
            set_rng_state(per_rank[get_rank()])
        else:
            log.warning("checkpoint %s saved RNG for %d ranks, world is %d: RNG not restored", path,
                        len(per_rank), get_world_size())
    return state
