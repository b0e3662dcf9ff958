"""Config of stage 1 (joint localisation + self-labelling): ``Stage1Config`` composes the method's configs with how
stage 1 trains (``Stage1TrainConfig``) and how labels are re-optimised (``RelabelConfig``). The maths of the
relabelling (λ_sk, marginal, tolerance) stays in ``avdet.config.SinkhornConfig``; these dataclasses only say where and
how the work runs. Each has ``check()`` raising ``ConfigError`` naming the key; ``check_batch_vs_workers`` checks what
only the composition (config + dataset size) can tell.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from avdet.config import (AudioConfig, ConfigError, DSOLConfig, IterativeConfig, LossConfig, ModelConfig,
                          ProposalConfig, SinkhornConfig, require)
from data.config import StreamConfig


@dataclass
class Stage1TrainConfig:
    """Stage-1 training under DeepSpeed (inside Ray Train workers or one plain process).

    ``batch_size`` is per worker and per micro-step; the global batch is batch_size × num_workers × grad_accum.
    ``grad_clip`` 0 disables clipping. A checkpoint is taken every ``checkpoint_every`` epochs, at the end of an
    epoch when ``checkpoint_every_s`` > 0 seconds have passed since the last one (or since the start), and after the
    last epoch.
    Relabelling happens after the epochs in ``relabel_epochs`` when given, else after every ``relabel_every``-th
    epoch (0 = never).
    ``fail_at_step`` is a FAULT-INJECTION knob for tests: the global steps at which the last rank kills its own
    process (``os._exit``), each once (a marker file per step in ``out_dir`` stops it recurring after the restart);
    keep it empty.
    """
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 1e-4
    momentum: float = 0.9
    optimizer: str = "sgd"              # "sgd" | "adamw" (AdamW runs torch's implementation: no fused-Adam build)
    num_workers: int = 1
    use_gpu: bool = False
    engine: str = "deepspeed"           # "deepspeed" | "ddp" (torch DistributedDataParallel, fp32; ddp_engine.py)
    zero_stage: int = 0                 # 0 | 1 | 2 on CPU; 3 needs GPUs (DeepSpeed)
    precision: str = "fp32"             # "fp32" | "bf16" | "fp16" (fp16 needs GPUs)
    grad_accum: int = 1
    grad_clip: float = 1.0              # max global grad norm (0 = none); 1.0 is what every run before 2026-12-02
    #                                     got: DeepSpeed clipped at its own default 1.0 when we passed nothing
    warmup_steps: int = 0               # > 0: DeepSpeed WarmupCosineLR over the whole run; 0: constant lr
    report_every: int = 50              # steps between log lines and TensorBoard scalars (Ray Train hears per epoch:
    #                                     a ray.train.report blocks ~2 s in Train V2)
    checkpoint_every: int = 1
    checkpoint_every_s: float = 0.0     # > 0: also checkpoint at an epoch's end once this much wall time has passed
    seed: int = 0
    max_failures: int = 0               # Ray Train FailureConfig: restarts of the worker group
    fail_at_step: list[int] = field(default_factory=list)   # tests only: the last rank dies once at each step
    relabel_epochs: list[int] | None = None
    relabel_every: int = 1
    shm_comm: bool = False              # DeepSpeed's shared-memory comm op (inference all-reduce only; JIT ~30 s)
    placement_strategy: str = "PACK"    # Ray Train worker placement: PACK (fill a node first), SPREAD, STRICT_SPREAD

    def relabel_after(self, epoch: int) -> bool:
        """True if labels are re-optimised after (0-based) ``epoch``."""
        if self.relabel_epochs is not None:
            return epoch in self.relabel_epochs
        return self.relabel_every > 0 and (epoch + 1) % self.relabel_every == 0

    def checkpoint_due(self, epoch: int, since_s: float) -> bool:
        """Whether the end of ``epoch`` checkpoints, ``since_s`` seconds after the last checkpoint (or the start)."""
        return (epoch == self.epochs - 1 or (epoch + 1) % self.checkpoint_every == 0
                or 0 < self.checkpoint_every_s <= since_s)

    def check(self) -> None:
        require(self.epochs >= 1, "epochs", "must be >= 1")
        require(self.seed >= 0, "seed", "must be >= 0")
        require(self.batch_size >= 1, "batch_size", "must be >= 1 (samples per worker per step)")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        require(self.optimizer in ("sgd", "adamw"), "optimizer", "must be 'sgd' or 'adamw'")
        require(self.num_workers >= 1, "num_workers", "must be >= 1")
        require(self.engine in ("deepspeed", "ddp"), "engine", "must be 'deepspeed' or 'ddp'")
        require(self.engine == "deepspeed" or self.precision == "fp32", "precision",
                "engine=ddp runs fp32 only: set precision=fp32 or engine=deepspeed")
        require(self.zero_stage in (0, 1, 2, 3), "zero_stage", "must be 0, 1, 2 or 3")
        require(self.zero_stage < 3 or self.use_gpu, "zero_stage",
                "3 is not supported by DeepSpeed on CPU: use 0, 1 or 2, or set use_gpu=true")
        require(self.precision in ("fp32", "bf16", "fp16"), "precision", "must be 'fp32', 'bf16' or 'fp16'")
        require(self.precision != "fp16" or self.use_gpu, "precision",
                "fp16 needs GPUs (DeepSpeed's loss scaler); use bf16 or fp32 on CPU")
        require(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        require(self.placement_strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"), "placement_strategy",
                "must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD (Ray placement group strategies)")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = no clipping)")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(self.report_every >= 1, "report_every", "must be >= 1")
        require(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1 (epochs)")
        require(self.checkpoint_every_s >= 0, "checkpoint_every_s", "must be >= 0 (seconds; 0 = by epochs only)")
        require(self.max_failures >= -1, "max_failures", "must be >= 0, or -1 for unlimited")
        require(all(s >= 0 for s in self.fail_at_step), "fail_at_step",
                "must list global steps >= 0 ([] = no fault injection)")
        require(self.relabel_every >= 0, "relabel_every", "must be >= 0 (0 = never)")
        if self.relabel_epochs is not None:
            bad = [e for e in self.relabel_epochs if not 0 <= e < self.epochs]
            require(not bad, "relabel_epochs", f"entries {bad} are outside [0, epochs={self.epochs})")


@dataclass
class RelabelConfig:
    """Where Sinkhorn-Knopp runs between epochs.

    mode "workers": inside the training workers' process group (rows stay where they were computed).
    mode "actors": a pool of ``num_actors`` Ray actors with their own gloo group (scales past the training group;
    restarts a dead actor up to ``max_restarts`` times; each actor reserves ``actor_cpus`` CPUs).
    ``warm_start``: "random" (labels start as a random equipartition and every round is Sinkhorn) or "kmeans":
    the rounds after the first ``kmeans_epochs`` epochs are FAISS k-means (best of ``kmeans_restarts``) over the
    features the classifiers see (``kmeans_features``; learned by the contrastive loss) instead of Sinkhorn on classifiers trained on the
    previous, noisier labels, with the clusters renamed (Hungarian) to agree most with the previous labels;
    1 = a warm start only, ``epochs`` = DeepCluster-style k-means every round; ``kmeans_until_stable`` > 0 ends the
    k-means rounds early, after the first that changes at most that fraction of the labels (the partition has
    settled; relabel.kmeans_over). ``topk`` > 0: sparse Sinkhorn over
    each sample's top-k clusters (workers mode), so no N×K matrix is ever held.
    """
    mode: str = "workers"
    num_actors: int = 2
    max_restarts: int = 3
    actor_cpus: float = 1.0
    timeout_s: float = 600.0           # actors mode: the pool's gloo timeout and the longest a relabel round may take
    use_gpu_faiss: bool = False
    warm_start: str = "random"
    kmeans_iters: int = 20
    kmeans_epochs: int = 1
    kmeans_restarts: int = 3            # FAISS nredo: best of this many k-means runs per round
    kmeans_features: str = "both"       # pooled trunk features k-means clusters: "both", "audio" or "visual"
    kmeans_until_stable: float = 0.0    # > 0: the k-means rounds end early, after the first (from round 2) that
    #                                     changes at most this fraction of the labels; 0: all kmeans_epochs rounds
    kmeans_solver: str = "rank0"        # "rank0": FAISS on rank 0 over every rank's gathered features (N×D there);
    #                                     "sharded": Lloyd steps across the ranks, only K×D sums reduced
    kmeans_max_points_per_centroid: int = 256    # "sharded": training rows per centroid (FAISS's default)
    topk: int = 0

    def check(self) -> None:
        require(self.mode in ("workers", "actors"), "mode", "must be 'workers' or 'actors'")
        require(self.num_actors >= 1, "num_actors", "must be >= 1")
        require(self.max_restarts >= 0, "max_restarts", "must be >= 0")
        require(self.timeout_s > 0, "timeout_s", "must be > 0")
        require(self.warm_start in ("random", "kmeans"), "warm_start", "must be 'random' or 'kmeans'")
        require(self.kmeans_iters >= 1, "kmeans_iters", "must be >= 1")
        require(self.kmeans_epochs >= 0, "kmeans_epochs", "must be >= 0")
        require(self.kmeans_restarts >= 1, "kmeans_restarts", "must be >= 1")
        require(0 <= self.kmeans_until_stable < 1, "kmeans_until_stable", "must be in [0, 1) (0 = off)")
        require(self.kmeans_features in ("both", "audio", "visual"), "kmeans_features",
                "must be 'both', 'audio' or 'visual'")
        require(self.kmeans_solver in ("rank0", "sharded"), "kmeans_solver", "must be 'rank0' or 'sharded'")
        require(self.kmeans_max_points_per_centroid >= 1, "kmeans_max_points_per_centroid", "must be >= 1")
        require(self.topk >= 0, "topk", "must be >= 0 (0 = dense Sinkhorn)")
        require(self.actor_cpus > 0, "actor_cpus", "must be > 0")
        require(self.topk == 0 or self.mode == "workers", "topk",
                "sparse relabel runs in mode 'workers' (the actor pool solves the dense problem)")


def check_batch_vs_workers(train: Stage1TrainConfig, num_samples: int, relabel: RelabelConfig | None = None) -> None:
    """Composition checks: every worker gets at least one full micro-batch per epoch, and an actor pool does not
    outnumber the samples. Raises ConfigError naming the keys involved."""
    require(num_samples >= 1, "num_samples", "must be >= 1 (the dataset is empty)")
    per_worker = num_samples // train.num_workers
    if per_worker < train.batch_size:
        raise ConfigError(
            f"batch_size {train.batch_size} x num_workers {train.num_workers} needs >= "
            f"{train.batch_size * train.num_workers} samples, but the dataset has {num_samples}: "
            f"lower batch_size or num_workers")
    if relabel is not None and relabel.mode == "actors":
        require(relabel.num_actors <= num_samples, "num_actors",
                f"({relabel.num_actors}) must be <= the number of samples ({num_samples})")


METHOD_NAMES = ("afouras", "iterative", "dsol", "proposals")     # distributed.stage1.methods.METHODS has one entry each


@dataclass
class Stage1Config:
    """Shards (``manifest``) -> stage-1 model + label table per epoch under ``out_dir``.

    ``audio`` is the one definition of the audio window and log-mel, ``train.batch_size`` the one batch size and
    ``train.seed`` the one seed (model initialisation, stream order, the initial equipartition, k-means): the
    stream's copies are replaced by them (see :meth:`stream_config`).
    ``ray_address``: "local" starts Ray on 127.0.0.1; "auto" (or an address) joins a running cluster.
    ``method``: the localiser (:mod:`distributed.stage1.methods`): ``afouras`` (this paper: ``loss``, ``sinkhorn``,
    ``relabel``), ``iterative`` (seed 003: ``iterative``; it has no clusters, its self-labels are class-agnostic) or
    ``dsol`` (seed 002: ``dsol``; k-means pseudo-classes of its masked object features, then optionally its stage 2
    on the multi-source clips of ``dsol.stage2_split``) or ``proposals`` (seed 001: ``proposals``; the proposal set
    ``proposals.set`` is joined to the stream; class-agnostic self-labels; no between-epoch round).
    """
    manifest: str = ""
    out_dir: str = "outputs/stage1"
    split: str = "train"
    ray_address: str = "local"
    method: str = "afouras"
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sinkhorn: SinkhornConfig = field(default_factory=SinkhornConfig)
    train: Stage1TrainConfig = field(default_factory=Stage1TrainConfig)
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    iterative: IterativeConfig = field(default_factory=IterativeConfig)
    dsol: DSOLConfig = field(default_factory=DSOLConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)

    def check(self) -> None:
        require(self.split in ("train", "test"), "split", "must be 'train' or 'test'")
        require(self.method in METHOD_NAMES, "method", f"must be one of {', '.join(METHOD_NAMES)}")
        if self.method == "dsol" and self.dsol.stage2_epochs:
            require(self.train.epochs - self.dsol.stage2_epochs >= self.dsol.init_epochs, "dsol.stage2_epochs",
                    f"({self.dsol.stage2_epochs}) must leave train.epochs ({self.train.epochs}) - stage2_epochs >= "
                    f"dsol.init_epochs ({self.dsol.init_epochs}) stage-1 epochs: stage 2 needs a dictionary")
            require(self.dsol.stage2_split != self.split, "dsol.stage2_split",
                    f"must differ from split ({self.split!r}): stage 2 trains on the multi-source clips")

    def dsol_stage2(self, epoch: int) -> bool:
        """Whether (0-based) ``epoch`` is one of DSOL's stage-2 epochs (the last ``dsol.stage2_epochs``)."""
        return self.method == "dsol" and epoch >= self.train.epochs - self.dsol.stage2_epochs

    def stream_config(self, shuffle: bool = True) -> StreamConfig:
        return dataclasses.replace(self.stream, audio=self.audio, batch_size=self.train.batch_size, shuffle=shuffle,
                                   seed=self.train.seed,
                                   proposals=self.proposals.set if self.method == "proposals" else "")
