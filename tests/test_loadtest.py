"""The real-time load test (nemotron_engine/loadtest.py) and the micro model it measures host work with: short runs
(seconds) on the micro model, a deliberately overloaded engine, the real-time rule, the capacity bisection, and the
CLI's JSON and PNG. In process, no network."""
import dataclasses
import json
import time

import pytest
import torch

from nemotron_engine import loadtest as lt
from nemotron_engine.cli import main
from nemotron_engine.config import ModelConfig
from nemotron_engine.engine import Engine
from nemotron_engine.micro_model import build_micro_model
from nemotron_engine.ops import get_ops


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # timing-based checks on a shared 2-core machine: one intra-op thread is the stable setting
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return build_micro_model(tmp_path_factory.mktemp("micro"))


def test_micro_model_loads_and_emits_some_tokens(micro):
    cfg = ModelConfig.load(micro)
    assert (cfg.n_layers, cfg.d_model, cfg.vocab_size) == (1, 16, 128)
    engine = Engine(micro, max_streams=1)
    pcm = lt.demo_audio()[0]
    n = len(engine.transcribe(pcm, 1120).tokens)
    frames = len(pcm) / 1280
    assert 0.05 * frames < n < 1.0 * frames  # the calibrated blank bias: sometimes, not every frame, not never


def test_light_run_is_real_time_and_accounts_for_every_chunk(micro):
    n, la, dur = 3, 560, 3.0
    rep = lt.run_load(micro, n, la, dur)
    assert rep["realtime_ok"], rep["failures"]
    assert lt.realtime_ok(rep)
    lat = rep["latency_ms"]
    assert lat["n"] == rep["chunks"] == rep["stream_steps"] > 0
    assert 0 <= lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert rep["latency_from_push_ms"]["min"] >= 0 and rep["push_delay_ms"]["min"] >= 0
    assert rep["late"] == 0 and rep["late_fraction"] == 0.0
    # every chunk of the audio pushed is decoded: one chunk per 560 ms pushed, per stream (the last may be partial)
    assert rep["audio_s_decoded"] <= rep["audio_s_pushed"]
    assert abs(rep["chunks"] - rep["audio_s_pushed"] / (la / 1000)) <= n
    assert rep["final_latency_ms"]["n"] == n and rep["final_missing"] == 0
    for key in ("drift_ms_per_min", "lag_growth_ms", "cpu_thread_us_per_stream_step", "cpu_process_us_per_stream_step",
                "push_us_per_stream_step", "step_us_per_stream_step", "ops_us_per_stream_step",
                "features_us_per_stream_step", "host_us_per_stream_step", "host_excl_features_us_per_stream_step"):
        assert rep[key] is not None and rep[key] == rep[key], key  # present, not NaN
    assert rep["cpu_thread_us_per_stream_step"] > 0 and rep["steps"] >= rep["stream_steps"] / n
    # the engine's own times: the feature computation is part of the step, the model math too
    assert 0 < rep["features_us_per_stream_step"] < rep["step_us_per_stream_step"]
    assert rep["ops_us_per_stream_step"] + rep["features_us_per_stream_step"] < rep["step_us_per_stream_step"]
    assert rep["refused_pushes"] == 0
    assert "decode" in rep["ops_breakdown_us"]
    assert 0 < rep["wall_s"] < dur + 10
    json.dumps(rep)  # JSON-ready


def test_batch_window_batches_the_staggered_streams(micro):
    """With a batch window of half the chunk period, the chunks that became ready meanwhile share a step: 4 streams
    spread over the period take about 2 steps per period instead of one per stream; every chunk is still decoded,
    within the period."""
    n, la, dur = 4, 560, 3.0
    rep = lt.run_load(micro, n, la, dur, batch_wait=0.5, final_latency=False)
    assert rep["batch_window_ms"] == 280 and rep["realtime_ok"], rep["failures"]
    periods = rep["audio_s_pushed"] / n / (la / 1000)
    assert rep["steps"] - rep["idle_steps"] <= 2 * periods + 2 < rep["stream_steps"]
    assert abs(rep["chunks"] - rep["audio_s_pushed"] / (la / 1000)) <= n
    with pytest.raises(ValueError, match="batch_wait must be in"):
        lt.run_load(micro, 1, 80, 1.0, batch_wait=1.5)


def test_overloaded_run_is_flagged(micro):
    def slow_decode(model, enc, *args, **kwargs):
        time.sleep(0.04 * enc.shape[0])  # 40 ms per stream per 80 ms chunk: 3 streams need 1.5x real time
        return base.decode(model, enc, *args, **kwargs)

    base = get_ops("cpu", torch.device("cpu"))
    engine, timer = lt.make_engine(micro, 3, backend=dataclasses.replace(base, decode=slow_decode))
    rep = lt.run_load(engine, 3, 80, 2.0, final_latency=False, op_timer=timer)
    assert not rep["realtime_ok"] and not lt.realtime_ok(rep)
    assert rep["late"] > 0 and rep["late_fraction"] > lt.LATE_FRACTION_MAX
    assert rep["latency_ms"]["p95"] > 80 and rep["lag_growth_ms"] > 0
    assert any("late" in f for f in rep["failures"])
    assert rep["ops_breakdown_us"]["decode"] > 30_000  # the sleep is inside the timed op table


def test_pushes_past_max_queued_are_refused_not_raised(micro):
    def slow_decode(model, enc, *args, **kwargs):
        time.sleep(0.5)  # a step of 500 ms per 80 ms chunk: the ring (0.5 s queue + a chunk's window) fills in 2 s
        return base.decode(model, enc, *args, **kwargs)

    base = get_ops("cpu", torch.device("cpu"))
    engine = Engine(micro, max_streams=1, max_queued_s=0.5, backend=dataclasses.replace(base, decode=slow_decode))
    rep = lt.run_load(engine, 1, 80, 3.0, final_latency=False, warmup=False, drain_limit_s=0.5)
    assert rep["refused_pushes"] > 0 and not rep["realtime_ok"]
    assert any("pushes refused" in f for f in rep["failures"])
    assert "ops_us_per_stream_step" not in rep  # no op timer given: no ops split
    assert not engine.streams  # closed, the engine reusable
    with pytest.raises(ValueError, match="max_queued_s"):
        lt.run_load(engine, 1, 80, 1.0, push_ms=600)


def _report(**kw):
    rep = {"chunk_ms": 80, "chunks": 10_000, "late_fraction": 0.0, "latency_ms": {"p95": 50.0},
           "lag_growth_ms": 0.0, "aborted": False, "backlog_unfinished": False}
    rep.update(kw)
    return rep


def test_realtime_rule():
    assert lt.realtime_ok(_report())
    assert lt.realtime_ok(_report(late_fraction=0.001))  # at most 0.1 %
    assert not lt.realtime_ok(_report(late_fraction=0.0011))
    assert lt.realtime_ok(_report(latency_ms={"p95": 80.0}))
    assert not lt.realtime_ok(_report(latency_ms={"p95": 80.1}))
    assert lt.realtime_ok(_report(lag_growth_ms=39.9))  # lag growth under half a chunk period
    assert not lt.realtime_ok(_report(lag_growth_ms=40.0))
    assert not lt.realtime_ok(_report(latency_ms={"p95": 100.0}), chunk_ms=80)
    assert lt.realtime_ok(_report(latency_ms={"p95": 100.0}), chunk_ms=160)
    assert not lt.realtime_ok(_report(aborted=True))
    assert not lt.realtime_ok(_report(backlog_unfinished=True))
    assert not lt.realtime_ok(_report(chunks=0))
    assert not lt.realtime_ok(_report(refused_pushes=1))


def test_capacity_bisection():
    calls = []

    def fake_run(n):
        calls.append(n)
        return {"n_streams": n, "realtime_ok": n <= 13}

    seen = []
    cap = lt.bisect_capacity(fake_run, n_lo=1, n_hi=100, rel_tol=0.0, on_point=seen.append)
    assert cap["capacity"] == 13 and cap["bracket"] == [13, 14] and not cap["at_least"]
    assert [p["n_streams"] for p in cap["points"]] == calls and seen == cap["points"]
    assert calls[:2] == [1, 100] and len(calls) <= 12
    assert lt.bisect_capacity(fake_run, n_lo=1, n_hi=8)["at_least"]
    assert lt.bisect_capacity(fake_run, n_lo=20, n_hi=40)["capacity"] == 0
    with pytest.raises(ValueError, match="n_lo"):
        lt.bisect_capacity(fake_run, n_lo=5, n_hi=4)


def test_cli_writes_json_and_plot(tmp_path):
    out = tmp_path / "lt"
    rc = main(["loadtest", "--micro", "--lookahead-ms", "560", "--capacity", "--n-min", "1", "--n-max", "2",
               "--run-s", "1.5", "--threads", "1", "--host-streams", "8", "--host-ticks", "2", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "loadtest.json").read_text())
    assert doc["command"].startswith("nemotron-engine loadtest") and "--capacity" in doc["command"]
    assert doc["machine"]["torch"] == torch.__version__ and doc["settings"]["threads"] == 1
    assert [p["n_streams"] for p in doc["points"]] == [1, 2]
    assert all(p["lookahead_ms"] == 560 and p["chunks"] > 0 for p in doc["points"])
    assert doc["capacity"]["560"]["capacity"] in (0, 1, 2)
    host = doc["host_overhead"][0]
    assert host["n_streams"] == 8 and host["stream_steps"] > 0 and host["host_us_per_stream_step"] > 0
    assert 0 < host["features_us_per_stream_step"] < host["step_us_per_stream_step"] and host["refused_pushes"] == 0
    assert doc["plot"] == "loadtest.png"
    assert (out / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
