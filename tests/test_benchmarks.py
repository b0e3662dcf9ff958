"""Every benchmark runs once at --tiny size and writes JSON with the expected keys and positive figures (so the
benchmarks cannot rot). Output goes to a temp dir (--out), never to benchmarks/RESULTS.md."""
import json
import math

import numpy as np
import pytest
import torch

from benchmarks import __main__ as bench_main
from benchmarks import detector, end_to_end, faiss_bench, relabel, train_step
from benchmarks.common import RESULTS_MD


@pytest.fixture(autouse=True)
def _results_md_untouched():
    """The repo's RESULTS.md is not written by any test."""
    before = RESULTS_MD.read_text() if RESULTS_MD.exists() else None
    yield
    assert (RESULTS_MD.read_text() if RESULTS_MD.exists() else None) == before


def _doc(out, name):
    doc = json.loads((out / f"{name}.json").read_text())
    assert {"name", "time", "command", "machine", "figures"} <= set(doc)
    assert doc["name"] == name and "--tiny" in doc["command"]
    rows = (out / "RESULTS.md").read_text().splitlines()
    assert rows[-1].startswith("| ") and f"| {name} |" in rows[-1] and "load avg" in rows[-1]
    return doc["figures"]


def _positive(fig, *keys):
    for k in keys:
        assert isinstance(fig[k], (int, float)) and math.isfinite(fig[k]) and fig[k] > 0, (k, fig[k])


def test_train_step_in_process(tmp_path):
    train_step.main(["--tiny", "--no-ray", "--out", str(tmp_path)])
    fig = _doc(tmp_path, "train_step")
    _positive(fig, "bare_1t", "deepspeed_zero0_2t", "deepspeed_zero1_2t", "deepspeed_zero2_2t")
    assert any(k.startswith("overhead_pct_deepspeed_zero2") for k in fig)
    import torch.distributed
    assert not torch.distributed.is_initialized()       # the world-1 group build_engine made is gone


@pytest.mark.slow
def test_train_step_ray(tmp_path, capfd):
    """The 2-worker arms time every lap's block (the --tiny run has 2 laps), the goal is the median of the laps'
    back-to-back overheads, and Ray Train's placement-group cleaner finds the state API (no warning each second)."""
    train_step.main(["--tiny", "--out", str(tmp_path)])
    fig = _doc(tmp_path, "train_step")
    _positive(fig, "ray_deepspeed_w1_2t", "ray_deepspeed_w2_1t", "loopback_deepspeed_w2_1t", "loopback_ddp_w2_1t")
    assert "overhead_pct_ray_deepspeed_w2_1t_vs_2x_bare_1t" in fig
    blocks = fig["w2_blocks"]
    assert sorted(blocks) == sorted(train_step.W2_ARMS) and all(len(v) == 2 for v in blocks.values())
    per_lap = [100 * (1 - r / b) for r, b in zip(blocks["ray_deepspeed_w2_1t"], blocks["loopback_deepspeed_w2_1t"])]
    assert fig["overhead_pct_ray_deepspeed_w2_1t_vs_loopback_w2_1t_per_lap"] == pytest.approx(per_lap)
    assert fig["overhead_pct_ray_deepspeed_w2_1t_vs_loopback_w2_1t"] == pytest.approx(sum(per_lap) / 2)
    assert [g["goal"] for g in fig["goals"]] == ["stage1_step_ray_train_overhead_pct_w2"]
    assert "Failed to query Ray Train Controller" not in capfd.readouterr().err


def _arm(turns, arm, log, delay_ready=0.0, fail_at=None):
    """A thread standing in for a process group: ready after ``delay_ready`` s, then its turns, logging each."""
    import time
    time.sleep(delay_ready)
    log.append(("ready", arm, time.monotonic()))
    turns.ready(arm)
    try:
        for i, p in enumerate(turns.positions(arm)):
            turns.wait(p, arm)
            log.append(("block", arm, p, time.monotonic()))
            if i == fail_at:
                raise RuntimeError(f"{arm} broke")
            time.sleep(0.01)
            turns.done(p)
        turns.wait_end(arm)
        log.append(("end", arm, time.monotonic()))
    except BaseException as e:
        log.append(("error", arm, str(e)))
        turns.abort()


def _run_arms(turns, **kw):
    import threading
    log = []
    threads = [threading.Thread(target=_arm, args=(turns, a, log), kwargs=kw.get(a, {})) for a in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return log


def test_turns_run_the_schedule_in_order_after_every_arm_is_ready(tmp_path):
    from benchmarks.common import Turns
    schedule = ["a", "b", "c"] * 3
    log = _run_arms(Turns(tmp_path, schedule, timeout_s=20), c={"delay_ready": 0.3})
    blocks = [e for e in log if e[0] == "block"]
    assert [e[2] for e in blocks] == list(range(9)) and [e[1] for e in blocks] == schedule
    last_ready = max(e[2] for e in log if e[0] == "ready")
    assert blocks[0][3] >= last_ready                           # no block while an arm was still starting
    ends = [e[2] for e in log if e[0] == "end"]
    assert len(ends) == 3 and min(ends) >= blocks[-1][3]         # nobody tears down before the last block


def test_turns_abort_stops_every_arm_at_once(tmp_path):
    import time

    from benchmarks.common import Turns
    t0 = time.monotonic()
    log = _run_arms(Turns(tmp_path, ["a", "b", "c"] * 3, timeout_s=20), b={"fail_at": 1})
    errors = {e[1]: e[2] for e in log if e[0] == "error"}
    assert errors["b"] == "b broke" and "aborted" in errors["a"] and "aborted" in errors["c"]
    assert not [e for e in log if e[0] == "block" and e[2] > 4]  # position 4 (b's second) was the last run
    assert time.monotonic() - t0 < 10                            # not the 20 s timeout


def test_turns_wait_times_out_naming_the_position(tmp_path):
    from benchmarks.common import Turns
    turns = Turns(tmp_path, ["a", "b"], timeout_s=0.2)
    turns.ready("a")                                             # b never comes: the schedule never starts
    with pytest.raises(RuntimeError, match=r"arm a waited 0 s for position 0 of 2, the turn is at None"):
        turns.wait(0, "a")
    with pytest.raises(ValueError, match="not in the schedule"):
        turns.positions("z")


def test_relabel(tmp_path):
    relabel.main(["--tiny", "--out", str(tmp_path)])
    fig = _doc(tmp_path, "relabel")
    _positive(fig, "copy_traffic_gb_s", "exp_g_per_s")
    d = fig["dense"][0]
    _positive(d, "per_iter_s", "pass_s", "kernel_build_s", "bw_bound_s", "exp_bound_s", "selavi_per_iter_s",
              "speedup_per_iter_vs_selavi", "log_domain_per_iter_s", "speedup_per_iter_vs_log_domain")
    _positive(fig["sparse"][0], "per_iter_s", "pass_s", "bw_bound_s")
    assert d["pass_s"] < d["per_iter_s"]                                 # the passes alone leave out set-up and builds
    _positive(fig["vggsound_scale"], "epoch_s", "sinkhorn_s", "sinkhorn_pct_of_epoch", "train_samples_per_s")
    v = fig["vggsound_scale"]          # the round's share counts the scoring pass too
    assert abs(v["relabel_pct_of_epoch"] - v["sinkhorn_pct_of_epoch"] - v["scoring_pct_of_epoch"]) < 1e-9
    assert {g["goal"] for g in fig["goals"]} >= {"sinkhorn_dense_pass_x_bandwidth_bound"}


def test_selavi_loop_agrees_with_ours_at_the_same_tolerance():
    """The baseline solves the same problem to the same tolerance: both converge, its column error is below it, and
    the labels match ours on almost every row."""
    import torch

    from avdet.sinkhorn import column_marginal, sinkhorn_knopp
    log_p = relabel.make_log_p(3000, 20)
    ours = sinkhorn_knopp(log_p, 20.0, column_marginal(20), 500, 1e-4)
    sv = relabel.selavi_sinkhorn(log_p.numpy(), 20.0, column_marginal(20).numpy(), 1e-4, budget_s=30)
    assert ours.converged and sv["converged"] and sv["col_error"] < 1e-4 and sv["iters"] % 10 == 0
    assert (torch.from_numpy(sv["labels"]) == ours.labels).float().mean() > 0.99


def test_sparse_candidates_are_distinct():
    idx, log_p = relabel.make_candidates(500, 300, 10)
    assert idx.shape == log_p.shape == (500, 10)
    assert all(len(set(r)) == 10 for r in idx.tolist()) and int(idx.max()) < 300


def test_faiss_bench(tmp_path):
    faiss_bench.main(["--tiny", "--out", str(tmp_path)])
    fig = _doc(tmp_path, "faiss_bench")
    _positive(fig["kmeans"][0], "faiss_s", "torch_s", "speedup_vs_torch", "faiss_x_of_gemm_bound")
    _positive(fig["search"][0], "faiss_s", "torch_s", "top1_agreement")


def test_detector(tmp_path):
    detector.main(["--tiny", "--out", str(tmp_path)])
    fig = _doc(tmp_path, "detector")
    _positive(fig, "train_images_per_s_plain", "train_images_per_s_ours", "infer_images_per_s_plain",
              "infer_images_per_s_ours")
    b = fig["blocks"]["train"]
    assert len(b["plain"]) == len(b["ours"]) == 2          # --tiny: 2 rounds, every block kept
    assert fig["train_overhead_pct"] == pytest.approx(sum(100 * (1 - o / p) for o, p in zip(b["ours"], b["plain"])) / 2)


def test_paired_overhead_is_the_median_of_back_to_back_blocks():
    """A known answer: the machine halves its speed after round 2 and the arm is 10 % slower than its baseline in 3
    rounds of 4 (55 % in one). The ratio of the medians would say 40 %; the rounds' own overheads say 10."""
    from benchmarks.common import paired_overhead
    skewed = {"base": [100.0, 100.0, 50.0, 50.0], "arm": [90.0, 45.0, 45.0, 45.0]}
    assert 100 * (1 - 45.0 / 75.0) == pytest.approx(40.0)                   # the medians' ratio: 45 vs 75
    out = paired_overhead(skewed, "arm", "base")
    assert out["per_round"] == pytest.approx([10.0, 55.0, 10.0, 10.0]) and out["median"] == pytest.approx(10.0)
    assert out["quartiles"][0] == pytest.approx(10.0) and out["quartiles"][1] > 10.0


def test_end_to_end_reads_pipeline_json(tmp_path):
    pj = tmp_path / "pipeline.json"
    pj.write_text(json.dumps({"timings_s": {"synthetic": 2.0, "stage1": 6.0}, "stage1": {}}))
    end_to_end.main(["--tiny", "--pipeline", str(pj), "--out", str(tmp_path)])
    fig = _doc(tmp_path, "end_to_end")
    assert fig["timings_s"] == {"synthetic": 2.0, "stage1": 6.0} and fig["share_pct"]["stage1"] == 75.0
    _positive(fig, "total_stages_s")


def test_runner_runs_named_benchmarks_into_out(tmp_path):
    pj = tmp_path / "p" / "pipeline.json"
    pj.parent.mkdir()
    pj.write_text(json.dumps({"timings_s": {"detector": 1.5}}))
    assert bench_main.bench_argv("stream", True, False, str(tmp_path)) == [
        "--tiny", "--out", str(tmp_path / "stream.json"), "--no-results-row"]
    assert bench_main.bench_argv("relabel", False, True, None) == ["--full", "--goals"]
    assert bench_main.bench_argv("stream", False, False, None) == ["--goals"]
    assert bench_main.run_one("end_to_end", ["--pipeline", str(pj), "--out", str(tmp_path), "--tiny"]) == "ok"
    assert json.loads((tmp_path / "end_to_end.json").read_text())["figures"]["timings_s"] == {"detector": 1.5}
    # each benchmark in its own process: one that fails is reported by its exit code and the next still runs
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    status = bench_main.main(["faiss_bench", "end_to_end", "--tiny", "--out", str(not_a_dir)])
    assert status["faiss_bench"] == "exit 1" and list(status) == ["faiss_bench", "end_to_end"]
    with pytest.raises(SystemExit):
        bench_main.main(["nonsense"])


def test_stream_arms_count_the_train_split_of_a_folder_that_also_holds_a_test_split(tmp_path):
    """`python -m benchmarks.stream --shards <dir>` on a real shard folder (train + test): every arm streams the
    train split and expects its count (it used to expect every split's and fail)."""
    from benchmarks import stream
    from data.config import StreamConfig
    from data.shards import ShardWriter, iter_tar_groups, read_manifest, write_manifest
    manifest = stream.make_shards(tmp_path, 48, 24, frame_size=32)
    m = read_manifest(manifest)
    groups = list(iter_tar_groups(m.shard_path(m.shards[0])))[:8]
    test = ShardWriter(tmp_path).write("test", 0, ({"__key__": key, **dict(entries)} for key, entries in groups))
    write_manifest(tmp_path, [*m.shards, test], m.classes, m.config)
    cfg = StreamConfig(batch_size=16, shuffle=False, shuffle_buffer=0)
    for arm in (stream.decode_bound(manifest, cfg), stream.decode_bound(manifest, cfg, collated=False),
                stream.ours_plain(manifest, cfg, 0)):
        assert stream._counting(arm)() == 48
    assert stream.train_count(manifest) == 48 and sum(s.count for s in read_manifest(manifest).shards) == 56


def test_stream_arms_read_the_stored_log_mel_and_deliver_the_same_batches(tmp_path):
    """Shards with the stored log-mel (the benchmark's default): the plain webdataset arm, ours and the decode bound
    read it (same samples, same log-mel, same uint8 frames — what the trainers consume; ``--float-frames``
    normalises them), and the physical decode bound decodes it, not the FLAC."""
    from benchmarks import stream
    from data.config import StreamConfig
    from data.stream import normalise_frames
    manifest = stream.make_shards(tmp_path, 40, 20, frame_size=32, store_logmel=True)
    cfg = StreamConfig(batch_size=8, shuffle=False, shuffle_buffer=0)
    batches = [list(make()) for make in (stream.webdataset_plain(manifest, cfg, 0), stream.ours_plain(manifest, cfg, 0),
                                         stream.decode_bound(manifest, cfg))]
    got = [{int(i): (a, f) for b in arm for i, a, f in zip(b["index"], b["audio"], b["frames"])} for arm in batches]
    assert got[0].keys() == got[1].keys() == got[2].keys() == set(range(40))
    assert all(torch.equal(g[i][0], got[0][i][0]) and torch.equal(g[i][1], got[0][i][1]) for g in got for i in g)
    assert all(b["frames"].dtype == torch.uint8 for arm in batches for b in arm)   # what the trainers consume
    floats = next(iter(stream.ours_plain(manifest, cfg, 0, normalise=True)()))["frames"]
    assert floats.dtype == torch.float32 and torch.allclose(floats, normalise_frames(batches[1][0]["frames"]))
    raw = next(iter(stream.decode_bound(manifest, cfg, collated=False)()))["index"][0]
    assert raw["audio"] is None and raw["mel"].dtype == np.float16


def test_gpu_check_cpu_fallback(tmp_path):
    """benchmarks/gpu_check.sh's checks run in their CPU fallback (the pipeline check has its own e2e tests): the
    two-rank check's audio-only L_NC equals the gathered one, its CPU all-reduce and Sinkhorn over two ranks work."""
    from benchmarks import gpu_check
    fig = gpu_check.main(["--cpu", "--out", str(tmp_path), "--skip", "pipeline,sinkhorn,detector_step"])
    assert fig["device"] == "cpu (fallback)" and fig["stage1_step"]["ok"] and fig["two_ranks"]["ok"]
    assert all(r["sinkhorn_agreement"] == 1.0 and r["cpu_flag"] == 2 for r in fig["two_ranks"]["ranks"])
    assert json.loads((tmp_path / "gpu_check.json").read_text())["two_ranks"]["backend"] == "gloo"


def test_stream_arms_run_interleaved_and_goals_are_judged(tmp_path):
    """Every round times each arm once, in turn (not one arm's rounds back to back), each round from another arm;
    a short epoch is an error; the goals are the ratios of the medians against their targets, recorded by name in
    GOALS.json."""
    from benchmarks import stream
    from data.config import StreamConfig
    from benchmarks.common import record_goals
    calls = []
    arms = {name: (lambda name=name: calls.append(name) or 10) for name in ("a", "b")}
    rates = stream.interleaved_epochs(arms, 10, rounds=3)
    assert calls == ["a", "b"] + ["a", "b"] + ["b", "a"] + ["a", "b"]          # warm-up, then rounds 0, 1, 2
    assert {k: len(v) for k, v in rates.items()} == {"a": 3, "b": 3}
    calls.clear()
    stream.interleaved_epochs({name: (lambda name=name: calls.append(name) or 10) for name in "abcdef"}, 10, rounds=3)
    assert "".join(calls) == "abcdef" + "abcdef" + "cdefab" + "efabcd"
    with pytest.raises(RuntimeError, match="b: an epoch yielded 9 samples, expected 10"):
        stream.interleaved_epochs({"a": lambda: 10, "b": lambda: 9}, 10, rounds=1)
    fig = {stream.default_arm(2): 1500.0, "webdataset_dataloader_w2": 1200.0, "ours_plain_dataloader_w2": 1000.0,
           "physical_decode_1core": 1000.0}
    assert stream.default_arm(2) == f"ray_c2_substreams{StreamConfig().substreams}"      # judged on the default
    assert stream.goals({**fig, "ours_plain_dataloader_w2": 1600.0}, 2)[0]["measured"] == round(1500 / 1600, 3)
    k = stream.other_substreams()
    assert {k, StreamConfig().substreams} == {1, 2}
    assert {g["goal"]: g["met"] for g in stream.goals({**fig, f"ray_c2_substreams{k}": 1500.0}, 2)[3:]} == {
        f"stream_substreams{k}_ray_vs_plain_reader": True, f"stream_substreams{k}_vs_physical_decode_bound": False}
    got = {g["goal"]: (g["measured"], g["met"]) for g in stream.goals(fig, 2)}
    assert got == {"stream_ray_vs_plain_reader": (1.25, True), "stream_vs_physical_decode_bound": (0.75, False),
                   "stream_vs_2026_12_01": (round(1500 / 1078, 3), False)}
    record_goals([{"goal": "x", "measured": 1, "target": ">= 1", "met": True}], tmp_path)
    path = record_goals(stream.goals(fig, 2), tmp_path)
    assert [r["goal"] for r in json.loads(path.read_text())] == sorted(["x", *got])


def test_stream_one_read_task_arm_reads_with_one_task_and_the_default_arm_with_every_core(tmp_path, monkeypatch):
    """``ray_1read_task`` (the path per read core) streams with read concurrency 1 and one execution, so exactly one
    read task runs; the default arm keeps the config's substreams and a read task per core."""
    from benchmarks import stream
    from data.config import StreamConfig
    seen = {}

    def fake_part_batches(manifest, split, cfg, epoch, part, normalise):
        seen.setdefault("cfgs", []).append(cfg)
        return iter([{"index": [0] * 10}])
    monkeypatch.setattr(stream, "part_batches", fake_part_batches)
    manifest = stream.make_shards(tmp_path, 20, 10, frame_size=32)
    arms = stream._arms(manifest, StreamConfig(read_concurrency=2), 2, False)
    assert arms["ray_1read_task"]() == 10 and arms[stream.default_arm(2)]() == 10
    one, default = seen["cfgs"]
    assert (one.read_concurrency, one.substreams) == (1, 1)
    assert (default.read_concurrency, default.substreams) == (2, StreamConfig().substreams)


def test_scale_reports_every_ranks_peak_and_the_rank0_goal(tmp_path):
    from benchmarks import scale
    fig = scale.main(["--tiny", "--out", str(tmp_path), "--no-results-row"])
    row = fig["rows"][0]
    assert row["world"] == 2 and len(row["peak_mb_by_rank"]) == 2
    assert all(r["table_samples"] == row["n"] and r["rows"] == row["n"] // 2 for r in row["ranks"])
    assert fig["goals"][0]["goal"] == "scale_rank0_extra_bytes_per_sample"


def test_stream_webdataset_arm_delivers_the_train_split(tmp_path):
    """The plain webdataset + DataLoader arm decodes every train sample into the loaders' batches (it lacked the key
    and shard the batches name files by, and failed on every full run)."""
    from benchmarks import stream
    from data.config import StreamConfig
    manifest = stream.make_shards(tmp_path, 40, 20, frame_size=32)
    assert stream._counting(stream.webdataset_plain(manifest, StreamConfig(batch_size=16, shuffle=False), 2))() == 40


def test_proposals_benchmark_times_its_three_arms_on_the_same_frames(tmp_path):
    from benchmarks import proposals
    fig = proposals.main(["--tiny", "--out", str(tmp_path), "--no-results-row"])
    assert set(fig["frames_per_s"]) == {"plain_loop", "process_pool", "ray_job"} and fig["frames"] == 48
    assert fig["ray_vs_pool"] == fig["frames_per_s"]["ray_job"] / fig["frames_per_s"]["process_pool"]
    assert fig["goals"][0]["goal"] == "proposals_ray_vs_pool"
    assert (tmp_path / "proposals.json").is_file()


def test_stream_scaling_reads_on_the_added_reader_node(tmp_path):
    """A second raylet (a CPU-only reader node) joining the head adds its CPU to the stream's read concurrency
    (1 read task of 1 CPU on the 1-CPU head alone, 2 with the reader node: one must run there); every epoch delivers
    every sample; the goal is the ratio of the medians."""
    import os

    from benchmarks import stream_scaling
    before = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    fig = stream_scaling.main(["--tiny", "--out", str(tmp_path), "--no-results-row"])
    # the cluster's token path and auth mode do not outlive it (later local Rays in this process looked for it)
    assert {k: os.environ.get(k) for k in before} == before
    assert fig["read_concurrency"] == {"head": 1, "head_plus_reader": 2}
    assert {arm: len(v) for arm, v in fig["rounds"].items()} == {"head": 2, "head_plus_reader": 2}
    goal = fig["goals"][0]
    assert goal["goal"] == "stream_scaling_reader_node"
    assert goal["measured"] == round(fig["head_plus_reader"] / fig["head"], 3) and goal["met"] == (goal["measured"] >= 1.5)
    assert json.loads((tmp_path / "stream_scaling.json").read_text())["figures"]["read_concurrency"] == fig["read_concurrency"]
