"""stage1.train.engine=ddp: torch DDP behind the DeepSpeed engine's interface — trains, checkpoints round-trip with
the same integrity checks, and in two processes takes the same steps as DeepSpeed ZeRO 0."""
import pytest
import torch

from distributed.stage1.config import Stage1TrainConfig
from distributed.stage1.engine import build_engine, load_checkpoint, release_process_group, save_checkpoint


@pytest.fixture(autouse=True)
def _fresh_group():
    yield
    release_process_group()


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g)
    return x, x[:, :1] * 0.5 - x[:, 1:2]


def _train(engine, x, y, steps):
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("optimizer,accum", [("sgd", 1), ("adamw", 2)])
def test_ddp_engine_trains_and_checkpoint_round_trip(tmp_path, optimizer, accum):
    from distributed.stage1.ddp_engine import DDPEngine
    cfg = Stage1TrainConfig(engine="ddp", batch_size=32, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01,
                            grad_clip=1.0, weight_decay=0.0, grad_accum=accum, warmup_steps=3, epochs=2)
    x, y = _data()
    engine = build_engine(_model(0), cfg, steps_per_epoch=10)
    assert isinstance(engine, DDPEngine)
    losses = _train(engine, x, y, 8)
    assert losses[-1] < losses[0]
    save_checkpoint(engine, tmp_path, {"epoch": 3, "step": 8})
    expected_next = torch.rand(4)
    fresh = build_engine(_model(1), cfg, steps_per_epoch=10)
    torch.rand(100)
    state = load_checkpoint(fresh, tmp_path)
    assert torch.equal(torch.rand(4), expected_next) and state["epoch"] == 3 and state["step"] == 8
    for a, b in zip(fresh.module.parameters(), engine.module.parameters()):
        assert torch.equal(a, b)
    assert fresh.lr_scheduler.last_epoch == engine.lr_scheduler.last_epoch == 8 // accum
    assert _train(fresh, x, y, 2) == pytest.approx(_train(engine, x, y, 2), rel=1e-6)   # optimizer state too


def test_ddp_checkpoint_is_checked_before_loading(tmp_path):
    from distributed.stage1.engine import CheckpointIntegrityError
    cfg = Stage1TrainConfig(engine="ddp", batch_size=4)
    engine = build_engine(_model(0), cfg, steps_per_epoch=1)
    with pytest.raises(FileNotFoundError, match="no DDP checkpoint"):
        load_checkpoint(engine, tmp_path / "nothing")
    save_checkpoint(engine, tmp_path, {"epoch": 0})
    target = next(tmp_path.rglob("ddp_state.pt"))
    target.write_bytes(target.read_bytes()[:-1] + b"x")
    with pytest.raises(CheckpointIntegrityError, match="ddp_state.pt: sha256 differs"):
        load_checkpoint(engine, tmp_path)


def test_ddp_refuses_other_precisions():
    from avdet.config import ConfigError
    with pytest.raises(ConfigError, match="engine=ddp runs fp32 only"):
        Stage1TrainConfig(engine="ddp", precision="bf16").check()


def _one_engine_job(rank, world, out_dir, kind):
    import os
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    x, y = _data(seed=rank)                                   # each rank its own batch
    cfg = Stage1TrainConfig(engine=kind, batch_size=32, optimizer="sgd", lr=0.05, weight_decay=0.0,
                            num_workers=world)
    engine = build_engine(_model(0), cfg, steps_per_epoch=10)
    _train(engine, x, y, 5)
    torch.save([p.detach().clone() for p in engine.module.parameters()], f"{out_dir}/{kind}-rank{rank}.pt")


def test_ddp_and_deepspeed_take_the_same_steps_in_two_processes(tmp_path):
    """Gradients averaged over the ranks either way: after 5 SGD steps on different per-rank batches both engines
    hold the same parameters, on both ranks. One engine per process group (a CI run once aborted in gloo when the
    DDP and the DeepSpeed engine shared one process's group)."""
    from distributed.cluster.dist import spawn_loopback
    for kind in ("ddp", "deepspeed"):
        spawn_loopback(_one_engine_job, 2, str(tmp_path), kind)
    ddp0, ds0, ddp1 = (torch.load(tmp_path / f"{k}-rank{r}.pt", weights_only=True)
                       for k, r in (("ddp", 0), ("deepspeed", 0), ("ddp", 1)))
    for a, b, c in zip(ddp0, ds0, ddp1):
        assert torch.allclose(a, b, atol=1e-6) and torch.equal(a, c)
    assert any(not torch.equal(a, b) for a, b in zip(ddp0, [p.detach() for p in _model(0).parameters()]))


@pytest.mark.parametrize("kind", ["deepspeed", "ddp"])
@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_grad_clip_zero_means_no_clipping_in_both_engines(kind, clip):
    """A step equals torch's SGD step on the same gradient, clipped to ``clip`` when > 0 and not at all at 0 (the
    gradient norm here is 1.98: DeepSpeed's own default clipped it at 1.0 when the config said nothing)."""
    x, y = _data()
    engine = build_engine(_model(0), Stage1TrainConfig(engine=kind, batch_size=32, optimizer="sgd", lr=0.05,
                                                       momentum=0.0, weight_decay=0.0, grad_clip=clip), 10)
    _train(engine, x, y, 1)
    ref = _model(0)
    torch.nn.functional.mse_loss(ref(x), y).backward()
    norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in ref.parameters())))
    assert norm > 1.5
    scale = min(1.0, clip / norm) if clip > 0 else 1.0
    for a, b in zip(engine.module.parameters(), ref.parameters()):
        assert torch.allclose(a.detach(), b.detach() - 0.05 * scale * b.grad, atol=1e-5)
