"""The `serve` and `bench` click commands (tiny settings: a few seconds in all)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner
from serve_helpers import ROOT
from websockets.exceptions import ConnectionClosed

from ekd_compress.cli.serve_cmd import bench, serve


def test_serve_command_starts_and_answers(energy_bundle):
    proc, port = _start_serve(energy_bundle, "--max-connections", "3")
    try:
        assert port, "the serve command did not report its port"
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())
        assert health["model"] == "energy" and health["max_connections"] == 3
    finally:
        proc.terminate()
        proc.wait(10)


def _start_serve(bundle, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, int | None]:
    """`ekd-compress serve BUNDLE --port 0 ARGS` in a subprocess; (process, port or None). The
    stderr lines read up to the port are in the process's `startup` attribute."""
    code = "import sys; from ekd_compress.cli.serve_cmd import serve; serve(sys.argv[1:])"
    env = dict(env if env is not None else os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code, str(bundle), "--port", "0", *args], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    port, deadline = None, time.time() + 30
    proc.startup = ""
    while port is None and time.time() < deadline:
        line = proc.stderr.readline()
        proc.startup += line
        if not line and proc.poll() is not None:
            break
        m = re.search(r"page http://127\.0\.0\.1:(\d+)/", line)
        port = int(m.group(1)) if m else None
    return proc, port


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("loop", ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    not _has_uvloop(), reason="uvloop is not installed (pip install uvloop; not on Windows)"))])
def test_sigterm_drains_open_streams_and_exits_0(energy_bundle, loop):
    """SIGTERM: the open stream gets the final result of its audio (reason "shutdown"), then
    close 1001, and the process exits 0 within the grace period (issue 14, item 6), on either
    event loop."""
    from serve_helpers import silence, to_pcm16, tone
    from websockets.sync.client import connect

    proc, port = _start_serve(energy_bundle, "--drain-grace", "5", "--event-loop", loop)
    try:
        assert port, "the serve command did not report its port"
        assert f"event loop: {loop}" in proc.startup
        msgs = []
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
            ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            ws.recv(timeout=5)
            ws.send(to_pcm16(np.concatenate([silence(0.3), tone(0.5), silence(0.2)])))
            msgs.append(json.loads(ws.recv(timeout=5)))
            t0 = time.time()
            proc.send_signal(signal.SIGTERM)
            try:
                while True:
                    msgs.append(json.loads(ws.recv(timeout=10)))
            except ConnectionClosed:
                pass
        assert ws.protocol.close_code == 1001
        assert [(m["text"], m["reason"]) for m in msgs if m["type"] == "final"] == [("a", "shutdown")], msgs
        assert proc.wait(15) == 0 and time.time() - t0 < 10
        assert "draining: 1 open streams" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_token_from_file_or_env_never_empty(energy_bundle, tmp_path):
    """The token comes from --token-file or EKD_SERVE_TOKEN (not the process list); an empty
    one is refused with a clear error instead of silently serving without authentication."""
    from ekd_compress.serve.server import resolve_token

    env = {k: v for k, v in os.environ.items() if k != "EKD_SERVE_TOKEN"}
    r = CliRunner().invoke(serve, [str(energy_bundle)], env={"EKD_SERVE_TOKEN": ""})
    assert r.exit_code != 0 and "EKD_SERVE_TOKEN is set but empty" in r.output
    empty = tmp_path / "empty"
    empty.write_text("\n")
    r = CliRunner().invoke(serve, [str(energy_bundle), "--token-file", str(empty)])
    assert r.exit_code != 0 and "is empty" in r.output
    assert resolve_token(environ={"EKD_SERVE_TOKEN": " t0k "}) == "t0k" and resolve_token(environ={}) is None
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    assert resolve_token(token_file=secret, environ={"EKD_SERVE_TOKEN": "other"}) == "s3cret"

    proc, port = _start_serve(energy_bundle, "--token-file", str(secret), env=env)
    try:
        assert port, "the serve command did not report its port"
        assert "s3cret" not in " ".join(proc.args)
        base = f"http://127.0.0.1:{port}"
        assert json.loads(urllib.request.urlopen(base + "/health", timeout=5).read()) == {"status": "ok"}
        req = urllib.request.Request(base + "/health", headers={"Authorization": "Bearer s3cret"})
        assert json.loads(urllib.request.urlopen(req, timeout=5).read())["model"] == "energy"
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_command_rejects_bad_bundle(tmp_path):
    r = CliRunner().invoke(serve, [str(tmp_path)])
    assert r.exit_code != 0 and "bundle.json is missing" in r.output


def test_bench_json(energy_bundle, gru_bundle, tmp_path):
    """Both bundles are measured, in order; the printed JSON is the full report's summary; the
    percentiles are ordered; the ramp tried 1 then 2 streams and max_realtime_streams is the
    last level held by the report's own rule; one stream sent as fast as possible beats real time."""
    full_path = tmp_path / "bench.json"
    args = [str(energy_bundle), "--vs", str(gru_bundle), "--streams", "2", "--seconds", "1", "--ramp-seconds", "1",
            "--max-streams", "2", "--rtf-seconds", "1", "--matmul-seconds", "0.05", "--no-mlflow", "--json",
            "--out", str(full_path)]
    r = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    from ekd_compress.serve.bench_report import JSON_KEYS

    keys = set(JSON_KEYS)
    assert {"bundle", "model", "params", "size_mb", "dev_wer", "chunk_ms_p50", "rtf", "rtf_cpu", "max_realtime_streams", "flops_per_audio_second",
            "rtf_over_floor"} <= keys
    assert [set(m) for m in report["models"]] == [keys, keys]
    assert report["machine"]["matmul"]["gflops"] > 0
    # the gru bundle (kind student) against the first bundle (no ensemble here): times cheaper
    (ratio,) = report["ratios"]
    assert ratio["bundle"] == str(gru_bundle) and ratio["vs"] == str(energy_bundle)
    assert [m["bundle"] for m in report["models"]] == [str(energy_bundle), str(gru_bundle)]
    assert [m["model"] for m in report["models"]] == ["energy", "tiny-gru"]
    assert all(m["size_mb"] > 0 for m in report["models"])
    full = json.loads(full_path.read_text())
    assert [{k: m[k] for k in keys} for m in full["models"]] == report["models"], "--json must summarise --out"
    assert full["config"]["streams"] == 2 and full["config"]["max_streams"] == 2 and full["audio"] == "synthetic"
    for m in full["models"]:
        name = m["bundle"]
        assert 0 < m["chunk_ms_p50"] <= m["chunk_ms_p95"] <= m["chunk_ms_p99"], (name, m)
        assert 1 <= m["batch_mean"] <= 2 and 0 < m["per_chunk_ms_p50"] <= m["chunk_ms_p50"], (name, m)
        assert 0 < m["final_ms_p50"] <= m["final_ms_p95"] <= m["final_ms_p99"], (name, m)
        assert m["first_partial_ms_p50"] is not None and m["first_partial_ms_p50"] > 0, (name, m)
        assert 0 < m["rtf"] < 1.0, f"{name}: one stream sent as fast as possible took rtf={m['rtf']}"
        assert m["rss_mb"] > 10, (name, m)
        assert m["mode"] == "realtime" and m["streams"] == 2 and m["chunk_ms"] > 0
        ramp = m["ramp"]
        assert [step["streams"] for step in ramp] in ([1], [1, 2]), f"{name}: ramp levels {ramp}"
        for step in ramp:
            rule = (step["failed"] == 0 and step["chunk_ms_p95"] <= m["chunk_ms"]
                    and step["final_ms_p95"] is not None and step["final_ms_p95"] <= m["chunk_ms"])
            assert step["held"] == rule, f"{name}: ramp step {step} vs chunk {m['chunk_ms']} ms"
        assert all(step["held"] for step in ramp[:-1]), f"{name}: the ramp went on after a level failed: {ramp}"
        assert len(ramp) == 2 or not ramp[0]["held"], f"{name}: the ramp stopped after a level held: {ramp}"
        held = [step["streams"] for step in ramp if step["held"]]
        assert m["max_realtime_streams"] == (held[-1] if held else 0), f"{name}: {m['max_realtime_streams']} vs {ramp}"
        assert m["max_realtime_streams_capped"] == (m["max_realtime_streams"] == 2)
