"""Latency / throughput benchmark of bundles through the real server (websocket clients, native protocol).

    ekd-compress bench STUDENT_BUNDLE --vs ENSEMBLE_BUNDLE --streams 4 --audio wavs/ --json

For each bundle a server is started in a subprocess (`ekd_compress.serve.server.serve_subprocess`, so its memory and
CPU are its own; `url=` uses a running server instead), then:

1. latency run: `streams` clients stream the audio concurrently, at real-time pace (`realtime`,
   100 ms messages, serve/bench_client.py) or as fast as possible, for about `seconds` each;
   - chunk_ms: model compute per chunk, from the server's /stats (exact quantiles of the model
     call time each chunk took part in; batched chunks share a call); per_chunk_ms: that time
     divided by the call's chunks, and batch_mean: the chunks per call, so batched and unbatched
     runs compare;
   - first_partial_ms: from sending the audio that completes the first chunk and its lookahead
     (`lookahead_ms` in /health) to receiving the first partial (so the chunk's own duration and
     the lookahead, inherent to the model, are not counted);
   - final_ms: from sending "end" to receiving the last final result;
2. rtf: one stream sent as fast as possible: wall time / audio duration (rtf_runtime: the same
   without server or websocket, `Recognizer.recognize` over every clip in the bench process);
   rtf_cpu: the server's CPU time (all its threads) over the same stream / audio duration, which
   other processes on the machine do not inflate. Both are measured `repeats` times and the best
   pass is kept, as timeit does: single passes on a shared 2-core machine were seen to differ by
   1.7x; every pass is in the report (rtf_passes, rtf_runtime_cpu_passes);
3. max_realtime_streams: N = 1, 2, 4, ... real-time streams for `ramp_seconds` each, until real
   time breaks (p95 chunk compute or p95 final latency above the chunk duration, or a failed
   stream), then bisection between the last level held and the first broken one; no ceiling
   unless `max_streams` (serve/bench_ramp.py, which also says when the clients, or the machine they
   share with the server, were the limit: `ramp_limit`, `ramp_note`);
4. rss_mb: the server's peak resident memory (VmHWM) at the end;
5. the FLOP floor: `flops_per_audio_second` (bundle.json, counted at export) over the machine's
   single-thread matmul rate (serve/machine.py, measured once per run) is the RTF of the matrix
   products alone; `rtf_over_floor` = measured RTF / floor (and the same for rtf_cpu, rtf_runtime).

The report's `ratios` compare every bundle with the ensemble bundle (bundle.json kind
"ensemble"; else the first bundle): chunk compute p50, RTF and FLOPs as reference / bundle,
real-time streams as bundle / reference, so each is "times cheaper" (serve/bench_report.py).

`ekd-compress bench BUNDLE --soak-streams N --soak-seconds S` runs a soak instead (serve/soak.py:
N real-time streams for S seconds; errors, agreement with offline decoding, latency, server RSS).

Without audio files, synthetic speech-like clips are used (harmonic tones with a moving pitch,
noise bursts, pauses): compute latency does not depend on what is said.
Client and server share the machine's cores; the numbers are for that setting.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ekd_compress.serve.bench_audio import _fit, load_audio_dir, synthetic_audio  # noqa: F401 - load_audio_dir: ekd_compress.serve.soak
from ekd_compress.serve.bench_client import run_streams

@dataclass
class BenchConfig:
    streams: int = 4
    seconds: float = 4.0  # audio per stream in the latency run
    realtime: bool = True
    ramp: bool = True
    ramp_seconds: float = 3.0
    max_streams: int | None = None  # None: no ceiling, the ramp goes on until real time breaks
    ramp_refine: int = 2  # bisection steps after the first level that breaks
    matmul_seconds: float = 1.0  # CPU seconds per shape of the machine's matmul-rate measurement
    rtf_seconds: float = 10.0  # audio sent for the RTF measurement
    repeats: int = 3  # RTF and runtime RTF measured this many times; the best (least disturbed) pass is kept
    max_batch: int = 16
    max_wait_ms: float = 5.0
    threads: int = 1
    int8: bool = False
    provider: str = "cpu"
    token: str | None = None

    def __post_init__(self) -> None:
        if self.repeats < 1:  # both RTF measurements loop over it: 0 would leave them unmeasured
            raise ValueError(f"repeats={self.repeats}: measure at least one pass")


@dataclass
class ModelResult:
    bundle: str
    chunk_ms_p50: float | None = None
    chunk_ms_p95: float | None = None
    chunk_ms_p99: float | None = None
    per_chunk_ms_p50: float | None = None  # a chunk's share of its model call: call time / chunks in the call
    batch_mean: float | None = None  # mean chunks per model call in the latency run (as a chunk saw it)
    first_partial_ms_p50: float | None = None
    first_partial_ms_p95: float | None = None
    first_partial_ms_p99: float | None = None
    final_ms_p50: float | None = None
    final_ms_p95: float | None = None
    final_ms_p99: float | None = None
    rtf: float | None = None
    max_realtime_streams: int | None = None  # None: not measured (--no-ramp)
    max_realtime_streams_capped: bool = False
    ramp_limit: str | None = None  # "server", "clients" or "machine": who broke real time (None: capped or no ramp)
    ramp_note: str | None = None
    rss_mb: float | None = None
    rtf_runtime: float | None = None  # Recognizer.recognize in this process, no server: model + features only
    rtf_cpu: float | None = None  # server CPU seconds / audio seconds of the RTF stream
    rtf_runtime_cpu: float | None = None  # CPU seconds of Recognizer.recognize / audio seconds
    rtf_passes: list[float] = field(default_factory=list)  # every pass's RTF (rtf is the lowest)
    rtf_runtime_cpu_passes: list[float] = field(default_factory=list)  # every pass's runtime CPU RTF
    kind: str | None = None  # bundle.json model kind (student, ensemble, ...)
    flops_per_audio_second: float | None = None  # bundle.json (counted at export); None for older bundles
    rtf_floor: float | None = None  # flops_per_audio_second / the machine's 1-thread matmul FLOP/s
    rtf_over_floor: float | None = None  # rtf / rtf_floor
    rtf_cpu_over_floor: float | None = None
    rtf_runtime_cpu_over_floor: float | None = None
    chunk_ms: float | None = None  # chunk duration
    ramp: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "realtime"
    streams: int = 0
    model: str | None = None  # the bundle's model name (bundle.json model.name), else its folder
    params: int | None = None  # model parameters (bundle.json)
    size_mb: float | None = None  # the served ONNX file (INT8 with int8=True), MB
    dev_wer: float | None = None  # the model's dev WER as exported (bundle.json provenance; INT8's with int8=True)


# ============================================================================ server handling
class ServerProcess:
    """A server for `bundle` on a free port in a subprocess (`ekd_compress.serve.server.serve_subprocess`); .url, .stop()."""

    def __init__(self, bundle: str | Path, cfg: BenchConfig, max_connections: int) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="ekd-bench-")
        port_file = Path(self._dir.name) / "port"
        root = Path(__file__).resolve().parents[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        spec = {"bundle": str(bundle), "port_file": str(port_file), "provider": cfg.provider, "threads": cfg.threads,
                "use_int8": bool(cfg.int8),
                "config": {"host": "127.0.0.1", "port": 0, "max_connections": max_connections,
                           "max_per_address": 0,  # every client is local
                           "max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms}}
        cmd = [sys.executable, "-m", "ekd_compress.serve.server", json.dumps(spec)]  # ekd_compress.serve.server.serve_subprocess
        if cfg.token:
            env["EKD_SERVE_TOKEN"] = cfg.token
        self._log = open(Path(self._dir.name) / "server.log", "w+")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.time() > deadline:
                self._log.seek(0)
                tail = self._log.read()[-2000:]
                self.stop()
                raise RuntimeError(f"the server for {bundle} did not start:\n{tail}")
            time.sleep(0.05)
        self.url = f"ws://127.0.0.1:{int(port_file.read_text())}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()
        self._dir.cleanup()


def _http_json(ws_url: str, path: str, token: str | None = None) -> dict[str, Any]:
    http = ws_url.replace("ws://", "http://").replace("wss://", "https://").rstrip("/")
    req = urllib.request.Request(http + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _q(vals: Sequence[float | None], p: float) -> float | None:
    v = [x for x in vals if x is not None]
    return round(float(np.percentile(v, p)), 3) if v else None


def server_cpu_seconds(pid: int | None) -> float | None:
    """CPU time of every thread of process `pid`, s (Linux /proc schedstat, ns resolution); None elsewhere."""
    if pid is None:
        return None
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def bench_url(url: str, label: str, clips: Sequence[tuple[np.ndarray, int]], cfg: BenchConfig,
              log=lambda m: None, server_pid: int | None = None) -> ModelResult:
    """Run the whole benchmark against a running server at ws://HOST:PORT."""
    url = url.rstrip("/")
    health = _http_json(url, "/health", cfg.token)  # without the token /health says only that it is alive
    chunk_s = health["chunk_ms"] / 1000.0
    lookahead_s = health.get("lookahead_ms", 0) / 1000.0  # servers before lookahead_ms: causal bundles only
    res = ModelResult(bundle=label, chunk_ms=health["chunk_ms"], mode="realtime" if cfg.realtime else "fast",
                      streams=cfg.streams, model=health.get("model"))

    # 1. latency run
    since = _http_json(url, "/stats", cfg.token)["next"]
    stats = asyncio.run(run_streams(url, clips, cfg.streams, cfg.seconds, cfg.realtime, chunk_s, cfg.token, lookahead_s))
    errors = [s.error for s in stats if s.error]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(stats)} streams failed, e.g. {errors[0]}")
    served = _http_json(url, f"/stats?since={since}", cfg.token)
    server = served["chunk_ms"]
    res.chunk_ms_p50, res.chunk_ms_p95, res.chunk_ms_p99 = (
        round(server[k], 3) if server[k] is not None else None for k in ("p50", "p95", "p99"))
    share, batch = served.get("per_chunk_ms", {}).get("p50"), served.get("batch_mean")  # older servers: absent
    res.per_chunk_ms_p50 = round(share, 3) if share is not None else None
    res.batch_mean = round(batch, 2) if batch is not None else None
    fps, fins = [s.first_partial_ms for s in stats], [s.final_ms for s in stats]
    res.first_partial_ms_p50, res.first_partial_ms_p95, res.first_partial_ms_p99 = (_q(fps, p) for p in (50, 95, 99))
    res.final_ms_p50, res.final_ms_p95, res.final_ms_p99 = (_q(fins, p) for p in (50, 95, 99))
    log(f"{label}: latency run, {cfg.streams} streams x {cfg.seconds:g} s ({res.mode}): chunk p95 "
        f"{res.chunk_ms_p95} ms, first partial p50 {res.first_partial_ms_p50} ms, final p50 {res.final_ms_p50} ms")

    # 2. RTF, one stream, as fast as possible, `repeats` times: the best pass is kept (timeit's rule)
    x, sr = _fit(clips[0], cfg.rtf_seconds)
    for _ in range(cfg.repeats):
        cpu0 = server_cpu_seconds(server_pid)
        one = asyncio.run(run_streams(url, [(x, sr)], 1, cfg.rtf_seconds, False, chunk_s, cfg.token, lookahead_s))[0]
        cpu1 = server_cpu_seconds(server_pid)
        if one.error:
            raise RuntimeError(f"RTF stream failed: {one.error}")
        rtf = round(one.wall_s / one.audio_s, 5)
        res.rtf_passes.append(rtf)
        if res.rtf is None or rtf < res.rtf:
            res.rtf = rtf
            if cpu0 is not None and cpu1 is not None:
                res.rtf_cpu = round((cpu1 - cpu0) / one.audio_s, 6)
    log(f"{label}: RTF {res.rtf} (server CPU {res.rtf_cpu}; one stream, {cfg.rtf_seconds:g} s of audio as fast as "
        f"possible; best of {cfg.repeats}: {res.rtf_passes})")

    # 3. ramp real-time streams until real time breaks
    if cfg.ramp:
        from ekd_compress.serve.bench_ramp import measure_level, run_ramp

        def level(n: int) -> dict[str, Any]:
            return measure_level(
                lambda k: run_streams(url, clips, k, cfg.ramp_seconds, True, chunk_s, cfg.token, lookahead_s),
                lambda: _http_json(url, "/stats", cfg.token)["next"],
                lambda since: _http_json(url, f"/stats?since={since}", cfg.token)["chunk_ms"], n)

        log(f"{label}: ramping real-time streams ({cfg.ramp_seconds:g} s each) until real time breaks")
        ramp = run_ramp(level, health["chunk_ms"], cfg.max_streams, cfg.ramp_refine, log)
        res.ramp = ramp["levels"]
        res.max_realtime_streams, res.max_realtime_streams_capped = ramp["max_realtime_streams"], ramp["capped"]
        res.ramp_limit, res.ramp_note = ramp["limit"], ramp["note"]
        log(f"{label}: {ramp['note']}")

    # 4. memory
    h = _http_json(url, "/health", cfg.token)
    res.rss_mb = h.get("peak_rss_mb") or h.get("rss_mb")

    # 5. the runtime alone (no server, no websocket), when the bundle is on this machine
    if Path(label).is_dir():
        passes = runtime_rtf(label, clips, cfg)
        res.rtf_runtime, res.rtf_runtime_cpu = min(passes, key=lambda p: p[1])
        res.rtf_runtime_cpu_passes = [cpu for _, cpu in passes]
        log(f"{label}: runtime RTF {res.rtf_runtime} (CPU {res.rtf_runtime_cpu}; {cfg.threads} thread(s), no server; "
            f"best of {cfg.repeats} passes over the clips, CPU: {res.rtf_runtime_cpu_passes})")
        info = json.loads((Path(label) / "bundle.json").read_text()).get("model", {})
        res.kind, res.params = info.get("kind"), info.get("params")
        res.flops_per_audio_second = info.get("flops_per_audio_second")
    return res


def runtime_rtf(bundle: str | Path, clips: Sequence[tuple[np.ndarray, int]], cfg: BenchConfig) -> list[tuple[float, float]]:
    """(wall, CPU) time / audio time of `Recognizer.recognize` (features + model + greedy decoding)
    over the clips, for each of `cfg.repeats` passes; CPU time is this process's, so other processes
    do not inflate it."""
    from ekd_compress.serve.runtime import Recognizer

    rec = Recognizer(bundle, provider=cfg.provider, threads=cfg.threads, use_int8=cfg.int8)
    rec.recognize(*clips[0])  # warm-up
    passes = []
    for _ in range(cfg.repeats):
        audio = wall = cpu = 0.0
        for x, sr in clips:
            t0, c0 = time.perf_counter(), time.process_time()
            rec.recognize(x, sr)
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
            audio += len(x) / sr
        passes.append((round(wall / audio, 5), round(cpu / audio, 6)))
    return passes


def bench_bundles(bundles: Sequence[str | Path], cfg: BenchConfig, audio_dir: str | Path | None = None,
                  url: str | None = None, log=lambda m: None) -> dict[str, Any]:
    """Benchmark each bundle with its own server subprocess (or the server at `url`, one bundle)."""
    from ekd_compress.serve.bench_ramp import MAX_LEVEL
    from ekd_compress.serve.bench_report import ratios
    from ekd_compress.serve.machine import matmul_rate

    if not url:
        for b in bundles:  # a folder that is not a bundle: one line now, not a server's traceback later
            check_bundle(b, cfg.int8)
    clips = load_audio_dir(audio_dir) if audio_dir else synthetic_audio()
    load_start = os.getloadavg()
    log("machine: single-thread matmul rate ...")
    rate = matmul_rate(cfg.matmul_seconds)
    log(f"machine: {rate['gflops']:.1f} GFLOP/s at {rate['peak_shape']} (CPU time; wall {rate['gflops_wall']:.1f}), "
        f"{rate['gflops_chunk']:.1f} at a chunk's {rate['chunk_shape']} ({rate['engine']})")
    models = []
    if url:
        models.append(bench_url(url, str(bundles[0]) if bundles else url, clips, cfg, log))
    else:
        for b in bundles:
            srv = ServerProcess(b, cfg, max_connections=max(cfg.streams, cfg.max_streams or MAX_LEVEL) + 8)
            try:
                models.append(bench_url(srv.url, str(b), clips, cfg, log, server_pid=srv.proc.pid))
            finally:
                srv.stop()
    for m in models:
        describe_model(m, cfg.int8)
        _floors(m, rate["gflops"])
    report = {"models": [asdict(m) for m in models], "config": public_config(cfg),
              "audio": str(audio_dir) if audio_dir else "synthetic", "clips": len(clips),
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "matmul": rate,
                          "loadavg_start": [round(x, 2) for x in load_start],
                          "loadavg_end": [round(x, 2) for x in os.getloadavg()]}}
    report["ratios"] = ratios(report)
    return report


def _floors(m: ModelResult, gflops: float) -> None:
    """Fill a result's FLOP floor and how far each measured RTF is above it."""
    from ekd_compress.serve.machine import rtf_floor

    m.rtf_floor = rtf_floor(m.flops_per_audio_second, gflops)
    if m.rtf_floor:
        for measured, key in ((m.rtf, "rtf_over_floor"), (m.rtf_cpu, "rtf_cpu_over_floor"),
                              (m.rtf_runtime_cpu, "rtf_runtime_cpu_over_floor")):
            if measured is not None:
                setattr(m, key, round(measured / m.rtf_floor, 2))


def public_config(cfg: BenchConfig) -> dict[str, Any]:
    """The bench settings as recorded in reports and MLflow: the token itself never, only whether one was used."""
    out = {k: v for k, v in asdict(cfg).items() if k != "token"}
    out["auth"] = cfg.token is not None
    return out


def check_bundle(bundle: str | Path, int8: bool = False) -> None:
    """Raise BundleError (one line naming the folder and the fix) unless `bundle` can be served."""
    from ekd_compress.contract.bundle import Bundle, BundleError

    b = Bundle.load(bundle)
    if int8 and b.file("int8") is None:
        raise BundleError(f"{bundle} has no INT8 model (files.int8 is null); re-export with "
                          "`ekd-compress export EXPDIR --int8`, or drop --int8")


def describe_model(m: ModelResult, int8: bool = False) -> None:
    """Fill the model's name, parameters, file size and dev WER from its bundle.json (when m.bundle is a bundle)."""
    meta_path = Path(m.bundle) / "bundle.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return
    model = meta.get("model") or {}
    m.model = str(model.get("name") or Path(m.bundle).name)
    m.params = model.get("params") if isinstance(model.get("params"), int) else None
    onnx = (meta.get("files") or {}).get("int8" if int8 else "onnx")
    if onnx and (Path(m.bundle) / onnx).is_file():
        m.size_mb = round((Path(m.bundle) / onnx).stat().st_size / 1e6, 3)
    wer = ((meta.get("int8") or {}).get("wer_int8") if int8 else None) or (meta.get("provenance") or {}).get("dev_wer")
    m.dev_wer = float(wer) if isinstance(wer, (int, float)) else None
