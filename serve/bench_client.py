"""The bench's websocket clients: one stream over the native protocol, and N streams at once.

A client sends a clip as 16-bit PCM in `SEND_MS` messages (at real-time pace or as fast as
possible), then "end", and times the first partial and the last final result (`StreamStats`).
`ekd_compress.serve.bench` runs them against each bundle's server, `ekd_compress.serve.soak` for hours.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ekd_compress.serve.bench_audio import _fit

SEND_MS = 100  # one client message: 100 ms of audio


@dataclass
class StreamStats:
    first_partial_ms: float | None
    final_ms: float | None
    audio_s: float
    wall_s: float
    error: str | None = None
    error_kind: str | None = None  # the server's error code (e.g. "busy"), else the exception's class name
    text: str | None = None  # the non-empty final texts, joined by spaces
    send_lag_ms: float | None = None  # real time only: the latest any message left against its schedule


def pcm16(audio: np.ndarray) -> bytes:
    """What the clients send: float samples in [-1, 1] -> little-endian int16 PCM bytes."""
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


class ServerError(RuntimeError):
    """An {"type": "error"} message from the server; .code is its error code (e.g. "busy")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


async def stream_client(url: str, audio: np.ndarray, rate: int, realtime: bool, chunk_s: float,
                        token: str | None = None, delay: float = 0.0, lookahead_s: float = 0.0) -> StreamStats:
    """Stream one clip over the native protocol; returns its latencies.

    chunk_s, lookahead_s: the model's chunk and lookahead (seconds); the first partial is timed from
    sending the audio that completes both."""
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay)
    pcm = pcm16(audio)
    step = int(rate * SEND_MS / 1000) * 2
    headers = {"Authorization": f"Bearer {token}"} if token else None
    first_chunk_bytes = int((chunk_s + lookahead_s + 0.015) * rate) * 2  # fbank needs half a window more
    t_first_chunk_sent = t_first_partial = t_end = t_final = None
    lag = 0.0
    finals: list[str] = []
    try:
        async with connect(url + "/ws", additional_headers=headers, max_size=None, compression=None,
                           open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": rate}))
            json.loads(await ws.recv())

            async def receiver():
                nonlocal t_first_partial, t_final
                async for raw in ws:
                    m = json.loads(raw)
                    if m.get("type") == "partial" and t_first_partial is None:
                        t_first_partial = time.perf_counter()
                    elif m.get("type") == "final":
                        if m.get("text"):
                            finals.append(m["text"])
                        if m.get("reason") == "end":
                            t_final = time.perf_counter()
                    elif m.get("type") == "error":
                        raise ServerError(str(m.get("error")), str(m.get("message")))

            rx = asyncio.create_task(receiver())
            t0 = time.perf_counter()
            for i, start in enumerate(range(0, len(pcm), step)):
                if realtime:
                    wait = t0 + i * SEND_MS / 1000 - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    lag = max(lag, time.perf_counter() - (t0 + i * SEND_MS / 1000))
                await ws.send(pcm[start:start + step])
                if t_first_chunk_sent is None and start + step >= first_chunk_bytes:
                    t_first_chunk_sent = time.perf_counter()
            if realtime:  # the last message's audio must have "happened" before end
                wait = t0 + len(pcm) / 2 / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            t_end = time.perf_counter()
            await ws.send(json.dumps({"type": "end"}))
            await asyncio.wait_for(rx, 120)
    except Exception as e:  # noqa: BLE001 - reported per stream
        kind = e.code if isinstance(e, ServerError) else type(e).__name__
        return StreamStats(None, None, len(audio) / rate, 0.0, f"{type(e).__name__}: {e}", kind)
    fp = (t_first_partial - t_first_chunk_sent) * 1000 if t_first_partial and t_first_chunk_sent else None
    fin = (t_final - t_end) * 1000 if t_final and t_end else None
    return StreamStats(fp, fin, len(audio) / rate, (t_final or time.perf_counter()) - t0, text=" ".join(finals),
                       send_lag_ms=lag * 1000 if realtime else None)


async def run_streams(url: str, clips: Sequence[tuple[np.ndarray, int]], n: int, seconds: float, realtime: bool,
                      chunk_s: float, token: str | None = None, lookahead_s: float = 0.0) -> list[StreamStats]:
    rng = np.random.default_rng(n)
    tasks = []
    for i in range(n):
        x, sr = _fit(clips[i % len(clips)], seconds)
        delay = float(rng.uniform(0, chunk_s)) if realtime and n > 1 else 0.0  # no lockstep
        tasks.append(stream_client(url, x, sr, realtime, chunk_s, token, delay, lookahead_s))
    return await asyncio.gather(*tasks)
