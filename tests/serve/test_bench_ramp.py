"""The capacity ramp: no ceiling, it stops when real time breaks, bisects, and says who broke it."""
from __future__ import annotations

import os
import time

import pytest
from serve_helpers import make_heavy_bundle

from ekd_compress.serve.bench import BenchConfig, bench_bundles
from ekd_compress.serve.bench_ramp import level_verdict, run_ramp

CHUNK_MS = 320.0


def fake_level(capacity: int, client_limit: int | None = None, machine_cpu: float | None = None,
               client_cpu: float = 0.3):
    """measure(n): held up to `capacity` streams; from `client_limit` streams on the clients' sends
    lag, with the client process at `client_cpu` of a core and the machine's cores `machine_cpu` busy."""
    tried = []

    def measure(n: int) -> dict:
        tried.append(n)
        lagging = client_limit is not None and n >= client_limit
        return {"failed": 0, "chunk_ms_p95": 10.0 if n <= capacity else 2 * CHUNK_MS,
                "final_ms_p95": 20.0 if n <= capacity and not lagging else 3 * CHUNK_MS,
                "send_lag_ms_p95": 300.0 if lagging else 1.0, "client_cpu": client_cpu if lagging else 0.1,
                "machine_cpu": machine_cpu if lagging else 0.4}
    return measure, tried


def test_ramp_doubles_until_real_time_breaks_then_bisects():
    measure, tried = fake_level(capacity=10)
    r = run_ramp(measure, CHUNK_MS, max_streams=None, refine=2)
    assert tried == [1, 2, 4, 8, 16, 12, 10]  # no ceiling at 64 or anywhere: it stops because 16 broke
    assert r["max_realtime_streams"] == 10 and not r["capped"] and r["limit"] == "server"
    assert [lv["held"] for lv in r["levels"]] == [True, True, True, True, False, False, True]
    assert "12 streams on the server" in r["note"]  # the smallest level that broke


def test_ramp_far_above_the_old_ceiling():
    measure, tried = fake_level(capacity=300)
    r = run_ramp(measure, CHUNK_MS, refine=0)
    assert tried[-1] == 512 and r["max_realtime_streams"] == 256


def test_clients_that_cannot_keep_up_are_named():
    measure, _ = fake_level(capacity=1000, client_limit=64, client_cpu=0.97)  # the client process is CPU-bound
    r = run_ramp(measure, CHUNK_MS, refine=1)
    assert r["limit"] == "clients" and r["max_realtime_streams"] == 48  # 64 broke, bisected to 48
    assert "client process was CPU-bound (97% of a core)" in r["note"] and "may hold more" in r["note"]


def test_late_sends_from_clients_with_cpu_to_spare_are_the_servers():
    """A websocket stops taking a client's messages while the server has not read the earlier ones:
    clients at a third of a core, on a machine with idle cores, are late because the server is."""
    measure, _ = fake_level(capacity=1000, client_limit=64, machine_cpu=0.7)
    r = run_ramp(measure, CHUNK_MS, refine=1)
    assert r["limit"] == "server" and r["max_realtime_streams"] == 48
    assert "64 streams on the server" in r["note"] and "held back by the server" in r["note"] and "30% of a core" in r["note"]


def test_lagging_clients_on_a_busy_machine_blame_the_machine():
    """Clients that lag at a third of a core while every core is busy did not run out by
    themselves: the machine (server and clients together) ran out."""
    measure, _ = fake_level(capacity=1000, client_limit=64, machine_cpu=0.97)
    r = run_ramp(measure, CHUNK_MS, refine=1)
    assert r["limit"] == "machine" and r["max_realtime_streams"] == 48
    assert "cores were 97% busy" in r["note"] and "the clients ran out of cores" in r["note"]
    assert [lv["machine_cpu"] for lv in r["levels"]][-2:] == [0.97, 0.4]  # 64 broke, 48 held


def test_machine_load_is_a_share_of_all_cores():
    from ekd_compress.serve.bench_ramp import MachineLoad

    with MachineLoad() as idle:
        time.sleep(0.2)
    with MachineLoad() as busy:
        end = time.process_time() + 0.3
        while time.process_time() < end:  # one core busy for 0.3 s
            pass
    if idle.share is None:  # no /proc/stat (not Linux): nothing is claimed
        assert busy.share is None
        return
    assert 0.0 <= idle.share <= 1.0 and 0.0 < busy.share <= 1.0
    assert busy.share >= 0.9 / (os.cpu_count() or 1)  # at least the one core this loop kept busy


def test_a_ceiling_reports_capped():
    measure, tried = fake_level(capacity=1000)
    r = run_ramp(measure, CHUNK_MS, max_streams=6)
    assert tried == [1, 2, 4, 6] and r["capped"] and r["max_realtime_streams"] == 6 and r["limit"] is None


def test_level_verdict_rules():
    assert level_verdict(0, 10.0, 20.0, CHUNK_MS, 1.0, 0.2) == (True, None)
    assert level_verdict(1, 10.0, 20.0, CHUNK_MS, 1.0, 0.2) == (False, "server")  # a failed stream
    assert level_verdict(0, 400.0, 20.0, CHUNK_MS, 1.0, 0.2) == (False, "server")
    assert level_verdict(0, 10.0, 400.0, CHUNK_MS, 1.0, 0.95) == (False, "clients")  # the client process is saturated
    assert level_verdict(0, 10.0, 400.0, CHUNK_MS, 400.0, 0.3, 0.5) == (False, "server")  # late sends: backpressure
    assert level_verdict(0, 10.0, 400.0, CHUNK_MS, 400.0, 0.3, 0.95) == (False, "machine")  # every core busy
    assert level_verdict(0, 10.0, 400.0, CHUNK_MS, 400.0, 0.3, None) == (False, "server")  # no /proc/stat


def test_real_bench_ramp_stops_when_a_heavy_bundle_breaks_real_time(tmp_path):
    """A bundle costing ~2 GFLOP per 160 ms chunk and stream: real time must break within a
    handful of streams; the ramp stops there (plus its bisection) and reports the floor."""
    bundle = make_heavy_bundle(tmp_path / "heavy")
    cfg = BenchConfig(streams=1, seconds=1.0, ramp_seconds=1.0, rtf_seconds=1.0, ramp_refine=1, matmul_seconds=0.05,
                      repeats=2)
    with pytest.raises(ValueError, match="repeats=0: measure at least one pass"):
        BenchConfig(repeats=0)
    report = bench_bundles([bundle], cfg)
    m = report["models"][0]
    # the RTFs are the best of `repeats` passes, and every pass is reported
    assert len(m["rtf_passes"]) == 2 and m["rtf"] == min(m["rtf_passes"])
    assert len(m["rtf_runtime_cpu_passes"]) == 2 and m["rtf_runtime_cpu"] == min(m["rtf_runtime_cpu_passes"])
    levels = [lv["streams"] for lv in m["ramp"]]
    broke = [lv for lv in m["ramp"] if not lv["held"]]
    assert broke, f"real time never broke: {m['ramp']}"
    first = levels.index(broke[0]["streams"])
    assert levels[:first + 1] == [2 ** i for i in range(first + 1)]  # doubling up to the first break
    assert len(levels) <= first + 2  # then at most ramp_refine (1) bisection step
    assert levels[-1] <= 64
    held = [lv["streams"] for lv in m["ramp"] if lv["held"]]
    assert m["max_realtime_streams"] == max(held, default=0) and not m["max_realtime_streams_capped"]
    assert m["ramp_limit"] in ("server", "clients") and m["ramp_note"]
    assert m["flops_per_audio_second"] > 1e10 and m["rtf_floor"] > 0.05  # the FLOP floor from bundle.json
    assert report["machine"]["matmul"]["gflops"] > 0 and m["rtf_cpu"] > 0
    assert m["rtf_cpu_over_floor"] > 0.3  # cannot beat its own arithmetic by much


def test_matmul_rate_without_onnx_uses_numpy_on_one_thread(monkeypatch):
    """The serve image has no `onnx`: the machine's rate then comes from numpy's BLAS in a
    subprocess pinned to one thread."""
    import builtins

    from ekd_compress.serve import machine

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError("no onnx here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    rate = machine.matmul_rate(0.02)
    assert rate["engine"].startswith("numpy") and rate["gflops"] > 0 and rate["gflops_chunk"] > 0
    assert machine.rtf_floor(1e9, rate["gflops"]) == pytest.approx(1.0 / rate["gflops"], rel=1e-12)
