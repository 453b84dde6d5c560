"""Soak test of a bundle through the real server: N real-time streams held for a given time.

    ekd-compress bench BUNDLE --soak-streams 50 --soak-seconds 600 --audio wavs/ --out soak.json

The server is started in a subprocess as `ekd_compress.serve.bench` does (`ServerProcess`, so its memory is
its own), then `streams` clients each send utterances one after another, at real-time pace
(100 ms messages), until `seconds` have passed. Each utterance is one clip of the bench's audio
set (`--audio DIR`, else the synthetic speech-like clips) on its own connection: the native
protocol closes the connection after the final result of "end", so a stream reconnects per
utterance. No utterance starts after `seconds`; those in flight finish within the drain bound
(the longest clip plus `drain_s`), after which any left are cancelled and counted as errors
of kind "drain_timeout".

Reported (`soak_bundle` returns a dict; `table` formats it):
- utterances (started), completed, errors and errors_by_kind (the server's error code, e.g.
  "busy", else the client exception's class name; "no_final" when the connection closed
  without a final result);
- agreement (agreed: how many): share of completed utterances whose streamed transcript (the non-empty finals,
  joined) has the same words as offline decoding of the same clip (`Recognizer.recognize` in
  this process, same endpoint rules as the server), with up to 5 mismatches as examples;
- first_partial_ms_* and final_ms_* (end of audio to the last final) p50/p95/p99, as in the bench;
- rss_mib_start / _middle / _end: the server's VmRSS (from /proc/PID/status) before the first
  stream, at seconds / 2 and after the drain; rss_mib_peak: its VmHWM at the end.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ekd_compress.serve.bench import (BenchConfig, ServerProcess, _http_json, _q, check_bundle, load_audio_dir,
                                      synthetic_audio)
from ekd_compress.serve.bench_client import StreamStats, pcm16, stream_client

MAX_MISMATCH_EXAMPLES = 5
ERROR_PAUSE_S = 0.2  # a stream waits this long after a failed utterance (bounds the retries per second)


def proc_memory_mib(pid: int) -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) of process `pid` in MiB from /proc/PID/status; (None, None) where unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, None
    vals = {line.split(":")[0]: round(float(line.split()[1]) / 1024, 1) for line in status.splitlines()
            if line.startswith(("VmRSS:", "VmHWM:"))}
    return vals.get("VmRSS"), vals.get("VmHWM")


def offline_transcripts(bundle: str | Path, clips: Sequence[tuple[np.ndarray, int]], cfg: BenchConfig) -> list[str]:
    """Each clip decoded offline (whole signal, `Recognizer.recognize`) with the server's default
    endpoint rules; the non-empty segment texts joined by spaces. The clip is decoded as the server
    receives it: as the int16 PCM the clients send (models can be sensitive to the last bit)."""
    from ekd_compress.serve.runtime import EndpointConfig, Recognizer

    rec = Recognizer(bundle, provider=cfg.provider, threads=cfg.threads, use_int8=cfg.int8)
    out = []
    for x, sr in clips:
        sent = np.frombuffer(pcm16(x), "<i2").astype(np.float32) / 32768.0  # as serve/protocol.py reads it
        out.append(" ".join(seg.text for seg in rec.recognize(sent, sr, endpoint=EndpointConfig()) if seg.text))
    return out


def _words(text: str | None) -> list[str]:
    return (text or "").split()


async def hold_streams(url: str, clips: Sequence[tuple[np.ndarray, int]], streams: int, seconds: float,
                       chunk_s: float, drain_s: float, token: str | None = None,
                       at_middle: Callable[[], Any] = lambda: None,
                       lookahead_s: float = 0.0) -> tuple[list[tuple[int, StreamStats]], int, Any]:
    """`streams` clients send clips one after another (a new connection each) for `seconds`.

    Returns ([(clip index, stats) per finished utterance], utterances cancelled at the drain bound,
    what `at_middle()` returned when called at seconds / 2)."""
    stop_at = time.monotonic() + seconds
    results: list[tuple[int, StreamStats]] = []
    in_flight = [0]  # utterances sent but not finished (those left at the drain bound are cancelled)
    rng = np.random.default_rng(streams)

    async def client(i: int) -> None:
        k = i  # streams start on different clips
        delay = float(rng.uniform(0, chunk_s)) if streams > 1 else 0.0  # no lockstep
        while time.monotonic() < stop_at:
            x, sr = clips[k % len(clips)]
            in_flight[0] += 1
            st = await stream_client(url, x, sr, True, chunk_s, token, delay, lookahead_s)
            in_flight[0] -= 1
            results.append((k % len(clips), st))
            delay, k = 0.0, k + 1
            if st.error:
                await asyncio.sleep(ERROR_PAUSE_S)

    async def middle() -> Any:
        await asyncio.sleep(seconds / 2)
        return at_middle()

    mid = asyncio.create_task(middle())
    tasks = [asyncio.create_task(client(i)) for i in range(streams)]
    longest_s = max(len(x) / sr for x, sr in clips)
    _, pending = await asyncio.wait(tasks, timeout=seconds + longest_s + drain_s)
    cancelled = in_flight[0]
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return results, cancelled, await mid


def soak_bundle(bundle: str | Path, streams: int, seconds: float, cfg: BenchConfig | None = None,
                audio_dir: str | Path | None = None, drain_s: float = 10.0,
                log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Start a server on `bundle`, hold `streams` real-time streams for `seconds`, report (see the
    module docstring). Stops by itself within seconds + longest clip + drain_s, plus the server's
    start-up and, for connections cancelled at that bound, websockets' close timeout (10 s)."""
    if streams < 1:
        raise ValueError(f"--soak-streams must be >= 1 (got {streams})")
    if not seconds > 0:
        raise ValueError(f"--soak-seconds must be > 0 (got {seconds})")
    if not drain_s >= 0:
        raise ValueError(f"--soak-drain-seconds must be >= 0 (got {drain_s})")
    cfg = cfg or BenchConfig()
    check_bundle(bundle, cfg.int8)
    clips = load_audio_dir(audio_dir) if audio_dir else synthetic_audio()
    offline = offline_transcripts(bundle, clips, cfg)
    srv = ServerProcess(bundle, cfg, max_connections=streams + 8)
    try:
        pid = srv.proc.pid
        health = _http_json(srv.url, "/health", cfg.token)
        chunk_ms, lookahead_ms = health["chunk_ms"], health.get("lookahead_ms", 0)
        rss_start, _ = proc_memory_mib(pid)
        log(f"soak: {streams} streams x {seconds:g} s on {bundle} (server pid {pid}, RSS {rss_start} MiB)")
        t0 = time.monotonic()
        results, cancelled, rss_middle = asyncio.run(hold_streams(
            srv.url, clips, streams, seconds, chunk_ms / 1000.0, drain_s, cfg.token,
            at_middle=lambda: proc_memory_mib(pid)[0], lookahead_s=lookahead_ms / 1000.0))
        wall_s = time.monotonic() - t0
        rss_end, rss_peak = proc_memory_mib(pid)
    finally:
        srv.stop()

    kinds: Counter[str] = Counter()
    ok: list[tuple[int, StreamStats]] = []
    for clip, st in results:
        if st.error:
            kinds[st.error_kind or "unknown"] += 1
        elif st.final_ms is None:
            kinds["no_final"] += 1
        else:
            ok.append((clip, st))
    if cancelled:
        kinds["drain_timeout"] += cancelled
    mismatches = [{"clip": c, "streamed": st.text, "offline": offline[c]} for c, st in ok
                  if _words(st.text) != _words(offline[c])]
    fps, fins = [st.first_partial_ms for _, st in ok], [st.final_ms for _, st in ok]
    report: dict[str, Any] = {
        "bundle": str(bundle), "streams": streams, "seconds": seconds, "drain_s": drain_s,
        "wall_s": round(wall_s, 3), "connection": "per_utterance", "chunk_ms": chunk_ms,
        "utterances": len(results) + cancelled, "completed": len(ok),
        "errors": sum(kinds.values()), "errors_by_kind": dict(sorted(kinds.items())),
        "agreed": len(ok) - len(mismatches), "agreement": round(1 - len(mismatches) / len(ok), 4) if ok else None,
        "mismatches": mismatches[:MAX_MISMATCH_EXAMPLES],
        **{f"first_partial_ms_p{p}": _q(fps, p) for p in (50, 95, 99)},
        **{f"final_ms_p{p}": _q(fins, p) for p in (50, 95, 99)},
        "rss_mib_start": rss_start, "rss_mib_middle": rss_middle, "rss_mib_end": rss_end, "rss_mib_peak": rss_peak,
        "audio": str(audio_dir) if audio_dir else "synthetic", "clips": len(clips), "offline": offline,
        "config": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms, "threads": cfg.threads,
                   "int8": cfg.int8, "provider": cfg.provider},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    log(f"soak: {report['utterances']} utterances in {report['wall_s']} s, {report['errors']} errors, "
        f"agreement {report['agreement']}")
    return report


def table(report: dict[str, Any]) -> str:
    """The short terminal summary of a `soak_bundle` report."""
    def fmt(v: Any) -> str:
        return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))

    errors = fmt(report["errors"])
    if report["errors_by_kind"]:
        errors += " (" + ", ".join(f"{k} {n}" for k, n in report["errors_by_kind"].items()) + ")"
    rows = [
        ("bundle", Path(report["bundle"]).name),
        ("streams x seconds", f"{report['streams']} x {report['seconds']:g} s (wall {report['wall_s']:.1f} s)"),
        ("utterances / completed", f"{report['utterances']} / {report['completed']}"),
        ("errors", errors),
        ("agreement with offline", "-" if report["agreement"] is None else
         f"{report['agreement']:.4f} ({report['agreed']} of {report['completed']})"),
        ("first partial p50/p95/p99 ms", "/".join(fmt(report[f"first_partial_ms_p{p}"]) for p in (50, 95, 99))),
        ("final p50/p95/p99 ms", "/".join(fmt(report[f"final_ms_p{p}"]) for p in (50, 95, 99))),
        ("server RSS start/middle/end MiB", "/".join(fmt(report[f"rss_mib_{w}"]) for w in ("start", "middle", "end"))),
        ("server peak RSS MiB", fmt(report["rss_mib_peak"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
