"""Streaming speech recognition server: websockets (asyncio), batched decoding off the event loop.

    ekd-compress serve BUNDLE --port 2700          # or: python -m serve.server BUNDLE --port 2700

Endpoints (one port):

    ws://HOST:PORT/ws       native protocol (below)
    ws://HOST:PORT/         Vosk-compatible protocol (below), what Vosk clients, Asterisk, Jigasi
                            and FreeSWITCH integrations connect to
    GET  /                  (plain HTTP) the browser demo page: microphone -> live text
    GET  /health            JSON: {"status": "ok", "model", "streams", "max_connections", "rss_mb", ...}
    GET  /metrics           Prometheus text format (prometheus-client)
    GET  /stats?since=N     JSON: exact per-chunk compute latency quantiles of chunks N.. (bench)

Native protocol (`/ws`):

    client -> {"type": "start", "sample_rate": 16000}      first message; optional
              "endpointing": true|false (default true). sample_rate: integer Hz within
              [min_sample_rate, max_sample_rate] (8000-96000 by default); other rates than the
              model's are resampled on the server.
    client -> binary messages: mono little-endian int16 PCM at that rate, any size up to the
              message limit (an odd trailing byte is kept for the next message).
    client -> {"type": "end"}                              no more audio.
    server -> {"type": "ready", "sample_rate": 16000, "model_sample_rate": 16000, "chunk_ms": 320}
              in reply to start.
    server -> {"type": "partial", "text": "...", "start": s}  after each audio message that
              completed one or more model chunks (chunk_ms of audio); text of the open segment.
    server -> {"type": "final", "text": "...", "words": [{"word", "start", "end", "conf"}],
               "start": s, "end": s, "reason": "trailing_silence" | "max_length" | "end"}
              when an endpoint rule closes a segment with text, and once after "end" (the
              last one, possibly empty text, reason "end"); then the server closes (1000).
              Times are seconds from the start of the stream.
    server -> {"type": "error", "error": CODE, "message": "..."} then a close with a
              websocket close code: bad_json / bad_message / bad_sample_rate (1007),
              not_started / already_started / idle_timeout / unauthorized (1008),
              too_big (1009), busy (1013), internal (1011).

Vosk-compatible protocol (`/`): text `{"config": {"sample_rate": 8000}}` (optional, before audio;
other config keys are accepted and ignored), binary int16 PCM frames, then text `{"eof" : 1}`.
Exactly one reply per binary frame: `{"partial": "..."}`, or at an endpoint
`{"result": [{"conf", "start", "end", "word"}], "text": "..."}` (`{"text": ""}` when the
segment had no words). After eof: the final result, then the server closes. Errors: `{"error": "..."}`
and a close as above.

Limits: max connections (beyond it, the HTTP upgrade gets 503 with a hint and Retry-After),
max message size (error too_big), idle timeout (no message for idle_timeout_s), optional bearer
token (`Authorization: Bearer TOKEN` or `?token=TOKEN`; the page and /health stay open).
A client's errors close only its own connection.

Batching: each connection feeds audio into its `Stream`; ready chunks are queued, and one
worker task gathers up to max_batch streams (waiting at most max_wait_ms after the first) and
runs `Recognizer.decode_batch` in a worker thread, one chunk per stream per model call.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import mimetypes
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from serve.runtime import EndpointConfig, Recognizer, Segment, Stream

log = logging.getLogger("serve")
STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 2700  # 0 = any free port
    max_connections: int = 64
    max_batch: int = 16  # streams per model call
    max_wait_ms: float = 5.0  # wait after the first ready chunk for more to batch
    max_message_bytes: int = 1 << 20  # 1 MiB = 32 s of 16 kHz int16
    idle_timeout_s: float = 30.0
    token: str | None = None
    min_sample_rate: int = 8000
    max_sample_rate: int = 96000
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_batch", "max_message_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be at least 1")
        if self.max_wait_ms < 0 or self.idle_timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and idle_timeout_s > 0")


class ClientError(Exception):
    """A client mistake: reported to that client, then its connection is closed."""

    def __init__(self, code: str, message: str, close_code: int = 1007) -> None:
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB."""
    try:
        status = Path("/proc/self/status").read_text()
        vals = {line.split(":")[0]: float(line.split()[1]) / 1024 for line in status.splitlines()
                if line.startswith(("VmRSS", "VmHWM"))}
        return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


# ============================================================================ metrics
class Metrics:
    """Prometheus metrics in a private registry (several servers may share a process), plus a
    bounded list of exact per-chunk compute times for /stats."""

    def __init__(self, model: str, provider: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        p = "ekd_serve_"
        self.active = Gauge(p + "connections_active", "Open websocket streams", registry=r)
        self.connections = Counter(p + "connections", "Accepted websocket connections", ["protocol"], registry=r)
        self.rejected = Counter(p + "rejected", "Refused requests", ["reason"], registry=r)
        self.errors = Counter(p + "client_errors", "Connections closed for a client error", ["error"], registry=r)
        self.audio = Counter(p + "audio_seconds", "Audio received, seconds", registry=r)
        self.chunks = Counter(p + "chunks", "Model chunks decoded", registry=r)
        self.partials = Counter(p + "partials", "Partial results sent", registry=r)
        self.finals = Counter(p + "finals", "Final results sent", registry=r)
        self.batch = Histogram(p + "batch_size", "Streams per model call", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.compute = Histogram(p + "chunk_compute_seconds", "Model call time seen by each chunk in it",
                                 registry=r, buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .32, .5, 1, 2))
        self.queue_wait = Histogram(p + "queue_wait_seconds", "Ready chunk to model call start", registry=r,
                                    buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1))
        info = Gauge(p + "model_info", "Served model", ["model", "provider"], registry=r)
        info.labels(model=model, provider=provider).set(1)
        self._chunk_ms: deque[float] = deque(maxlen=200_000)
        self._chunk_count = 0
        self._lock = threading.Lock()

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch.observe(size)
        self.chunks.inc(size)
        with self._lock:
            for _ in range(size):
                self.compute.observe(seconds)
                self._chunk_ms.append(seconds * 1000.0)
            self._chunk_count += size

    def stats(self, since: int = 0) -> dict[str, Any]:
        with self._lock:
            total = self._chunk_count
            first = total - len(self._chunk_ms)
            vals = np.array(list(self._chunk_ms)[max(since - first, 0):], dtype=np.float64)
        q = {f"p{p}": (float(np.percentile(vals, p)) if vals.size else None) for p in (50, 95, 99)}
        q["mean"] = float(vals.mean()) if vals.size else None
        return {"since": since, "next": total, "chunks": int(vals.size), "chunk_ms": q}

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ============================================================================ batching
class BatchScheduler:
    """Gathers streams with ready chunks and decodes them in batches in one worker thread."""

    def __init__(self, recognizer: Recognizer, max_batch: int, max_wait_ms: float, metrics: Metrics,
                 active_streams=None) -> None:
        self.rec = recognizer
        self.active_streams = active_streams  # () -> int: no point waiting for streams that do not exist
        self.max_batch = max_batch if recognizer.max_batch is None else 1
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self._pending: list[tuple[Stream, asyncio.Future, float]] = []
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ekd-decode")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ekd-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, fut, _ in self._pending:
            if not fut.done():
                fut.cancel()
        self._pool.shutdown(wait=True)

    async def decode(self, stream: Stream) -> int:
        """Decode every ready chunk of `stream` (batched with other streams); returns the count."""
        n = stream.ready_chunks
        if not n:
            return 0
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((stream, fut, time.perf_counter()))
        self._wake.set()
        await fut
        return n

    def _decode_in_thread(self, streams: list[Stream]) -> tuple[float, list[BaseException | None]]:
        t0 = time.perf_counter()
        try:
            self.rec.decode_batch(streams)
            errors: list[BaseException | None] = [None] * len(streams)
        except Exception:  # retry one by one so one bad stream cannot fail the others
            log.exception("batched decode failed; retrying streams one by one")
            errors = []
            for s in streams:
                try:
                    self.rec.decode_batch([s])
                    errors.append(None)
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
        return time.perf_counter() - t0, errors

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            deadline = self._pending[0][2] + self.max_wait
            while len(self._pending) < self.max_batch and (
                    self.active_streams is None or len(self._pending) < self.active_streams()):
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                    self._wake.clear()
                except asyncio.TimeoutError:
                    break
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            now = time.perf_counter()
            for _, _, t in batch:
                self.metrics.queue_wait.observe(now - t)
            streams = [s for s, _, _ in batch]
            seconds, errors = await loop.run_in_executor(self._pool, self._decode_in_thread, streams)
            self.metrics.observe_batch(len(streams), seconds)
            again = []
            for (s, fut, _), err in zip(batch, errors):
                if fut.done():  # the client went away
                    continue
                if err is not None:
                    fut.set_exception(err)
                elif s.ready_chunks:
                    again.append((s, fut, time.perf_counter()))
                else:
                    fut.set_result(None)
            if again:
                self._pending.extend(again)
            if self._pending:
                self._wake.set()


# ============================================================================ server
def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _words_native(seg: Segment) -> list[dict[str, Any]]:
    return [w.to_dict() for w in seg.words]


def _vosk_result(segs: list[Segment]) -> dict[str, Any]:
    words = [w for s in segs for w in s.words]
    text = " ".join(s.text for s in segs if s.text)
    out: dict[str, Any] = {}
    if words:
        out["result"] = [{"conf": round(w.conf, 6), "start": round(w.start, 3), "end": round(w.end, 3), "word": w.word}
                         for w in words]
    out["text"] = text
    return out


class RecognitionServer:
    """The websocket/HTTP server around one `Recognizer`. `await start()`, `await stop()`."""

    def __init__(self, recognizer: Recognizer, config: ServerConfig | None = None) -> None:
        self.rec = recognizer
        self.config = config or ServerConfig()
        self.metrics = Metrics(recognizer.bundle.name, recognizer.provider)
        self.active = 0
        self.started = time.time()
        self._server = None
        self._scheduler: BatchScheduler | None = None
        self._feat_pool = ThreadPoolExecutor(1, thread_name_prefix="ekd-features")
        self.port: int | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> "RecognitionServer":
        from websockets.asyncio.server import serve

        c = self.config
        self._scheduler = BatchScheduler(self.rec, c.max_batch, c.max_wait_ms, self.metrics, lambda: self.active)
        self._scheduler.start()
        self._server = await serve(
            self._handle, c.host, c.port, process_request=self._process_request,
            max_size=4 * c.max_message_bytes + 1024, compression=None, ping_interval=20, ping_timeout=20,
            close_timeout=2, logger=logging.getLogger("serve.websockets"),
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving %s on ws://%s:%d (native /ws, Vosk /, page /)", self.rec.bundle.name, c.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._scheduler is not None:
            await self._scheduler.stop()
        self._feat_pool.shutdown(wait=True)

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()

    # ------------------------------------------------------------------ HTTP side
    def _authorized(self, request) -> bool:
        token = self.config.token
        if not token:
            return True
        given = ""
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        else:
            given = (parse_qs(urlsplit(request.path).query).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), token.encode())

    def _respond(self, connection, status: HTTPStatus, body: str, content_type: str, extra: dict | None = None):
        resp = connection.respond(status, body)
        for k, v in {"Content-Type": content_type, "Cache-Control": "no-store", **(extra or {})}.items():
            if k in resp.headers:
                del resp.headers[k]  # websockets' Headers is a multi-dict: assignment would append
            resp.headers[k] = v
        return resp

    def health(self) -> dict[str, Any]:
        rss, peak = rss_mb()
        b = self.rec.bundle
        return {"status": "ok", "model": b.name, "bundle": str(b.path), "provider": self.rec.provider,
                "int8": self.rec.use_int8, "sample_rate": b.sample_rate, "chunk_ms": round(b.chunk_seconds * 1000),
                "streams": self.active, "max_connections": self.config.max_connections,
                "chunks_decoded": self.rec.chunks_decoded, "uptime_s": round(time.time() - self.started, 1),
                "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1), "pid": os.getpid()}

    def _process_request(self, connection, request):
        url = urlsplit(request.path)
        path = url.path
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if upgrade:
            if path not in ("/", "/ws"):
                self.metrics.rejected.labels("not_found").inc()
                return self._respond(connection, HTTPStatus.NOT_FOUND,
                                     f"no websocket endpoint at {path}; connect to /ws (native) or / (Vosk)\n",
                                     "text/plain; charset=utf-8")
            if not self._authorized(request):
                self.metrics.rejected.labels("unauthorized").inc()
                return self._respond(connection, HTTPStatus.UNAUTHORIZED,
                                     "missing or wrong token: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN\n",
                                     "text/plain; charset=utf-8", {"WWW-Authenticate": "Bearer"})
            if self.active >= self.config.max_connections:
                self.metrics.rejected.labels("busy").inc()
                return self._respond(
                    connection, HTTPStatus.SERVICE_UNAVAILABLE,
                    f"server busy: {self.active} streams open (max {self.config.max_connections}); "
                    "retry in a few seconds, or start the server with a higher --max-connections\n",
                    "text/plain; charset=utf-8", {"Retry-After": "5"})
            return None
        if path in ("/", "/index.html"):
            return self._static(connection, "index.html")
        if path == "/health":
            return self._respond(connection, HTTPStatus.OK, _json(self.health()), "application/json")
        if path in ("/metrics", "/stats"):
            if not self._authorized(request):
                self.metrics.rejected.labels("unauthorized").inc()
                return self._respond(connection, HTTPStatus.UNAUTHORIZED, "missing or wrong token\n",
                                     "text/plain; charset=utf-8", {"WWW-Authenticate": "Bearer"})
            if path == "/metrics":
                return self._respond(connection, HTTPStatus.OK, self.metrics.exposition().decode(),
                                     "text/plain; version=0.0.4; charset=utf-8")
            try:
                since = int((parse_qs(url.query).get("since") or ["0"])[0])
            except ValueError:
                since = 0
            stats = self.metrics.stats(since)
            stats.update(streams=self.active, rss_mb=round(rss_mb()[0], 1))
            return self._respond(connection, HTTPStatus.OK, _json(stats), "application/json")
        name = path.lstrip("/")
        if name and "/" not in name and (STATIC_DIR / name).is_file():
            return self._static(connection, name)
        self.metrics.rejected.labels("not_found").inc()
        return self._respond(connection, HTTPStatus.NOT_FOUND, f"{path} not found; try / (page), /health, /metrics\n",
                             "text/plain; charset=utf-8")

    def _static(self, connection, name: str):
        path = STATIC_DIR / name
        if not path.is_file():
            return self._respond(connection, HTTPStatus.NOT_FOUND, f"{name} is missing from {STATIC_DIR}\n",
                                 "text/plain; charset=utf-8")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        return self._respond(connection, HTTPStatus.OK, path.read_text(encoding="utf-8"), ctype)

    # ------------------------------------------------------------------ websocket side
    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        protocol = "native" if urlsplit(ws.request.path).path == "/ws" else "vosk"
        self.active += 1
        self.metrics.active.set(self.active)
        try:
            if self.active > self.config.max_connections:  # lost a race with another handshake
                self.metrics.rejected.labels("busy").inc()
                await self._error(ws, protocol, ClientError("busy", "server busy; retry in a few seconds", 1013))
                return
            self.metrics.connections.labels(protocol).inc()
            session = _Session(self, ws, protocol)
            await session.run()
        except ClientError as e:
            self.metrics.errors.labels(e.code).inc()
            await self._error(ws, protocol, e)
        except ConnectionClosed:
            pass  # the client went away: nothing to report to
        except Exception:
            log.exception("stream failed")
            self.metrics.errors.labels("internal").inc()
            await self._error(ws, protocol, ClientError("internal", "internal server error", 1011))
        finally:
            self.active -= 1
            self.metrics.active.set(self.active)

    async def _error(self, ws, protocol: str, e: ClientError) -> None:
        from websockets.exceptions import ConnectionClosed

        msg = {"type": "error", "error": e.code, "message": e.message} if protocol == "native" else \
            {"error": e.message, "code": e.code}
        try:
            await ws.send(_json(msg))
            await ws.close(e.close_code, e.code)
        except ConnectionClosed:
            pass


class _Session:
    """One websocket connection: protocol state machine around a Stream."""

    def __init__(self, server: RecognitionServer, ws, protocol: str) -> None:
        self.server, self.ws, self.protocol = server, ws, protocol
        self.cfg = server.config
        self.stream: Stream | None = None
        self.carry = b""  # odd byte of int16 PCM left from the previous message
        self.sent_chunks = 0

    async def recv(self):
        try:
            return await asyncio.wait_for(self.ws.recv(), self.cfg.idle_timeout_s)
        except asyncio.TimeoutError:
            raise ClientError("idle_timeout", f"no message for {self.cfg.idle_timeout_s:g} s; closing", 1008) from None

    def _rate(self, value: Any) -> int:
        c = self.cfg
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
                or not c.min_sample_rate <= value <= c.max_sample_rate:
            raise ClientError("bad_sample_rate", f"sample_rate {value!r} is not supported; send an integer rate in Hz "
                                                 f"between {c.min_sample_rate} and {c.max_sample_rate}, e.g. 16000")
        return int(value)

    def _parse(self, text: str) -> dict[str, Any]:
        try:
            msg = json.loads(text)
        except json.JSONDecodeError as e:
            raise ClientError("bad_json", f"malformed JSON ({e.msg} at char {e.pos}); send one JSON object "
                                          "per text message") from None
        if not isinstance(msg, dict):
            raise ClientError("bad_message", "expected a JSON object")
        return msg

    def _new_stream(self, rate: int, endpointing: bool = True) -> None:
        ep = self.cfg.endpoint if endpointing else EndpointConfig(enabled=False)
        self.stream = self.server.rec.create_stream(rate, endpoint=ep)

    async def _audio(self, data: bytes) -> int:
        """Feed int16 PCM to the stream and decode what became ready; returns chunks decoded."""
        if len(data) > self.cfg.max_message_bytes:
            raise ClientError("too_big", f"message of {len(data)} bytes exceeds the limit of "
                                         f"{self.cfg.max_message_bytes}; send smaller pieces (e.g. 100-500 ms)", 1009)
        data = self.carry + data
        self.carry = data[len(data) - len(data) % 2:]
        samples = np.frombuffer(data[: len(data) - len(data) % 2], dtype="<i2").astype(np.float32) / 32768.0
        stream = self.stream
        assert stream is not None
        self.server.metrics.audio.inc(samples.shape[0] / stream.sample_rate)
        if samples.shape[0] > stream.sample_rate // 4:  # big pieces: features off the event loop
            await asyncio.get_running_loop().run_in_executor(self.server._feat_pool, stream.accept_waveform, samples)
        elif samples.shape[0]:
            stream.accept_waveform(samples)
        return await self.server._scheduler.decode(stream)

    async def _finish(self) -> list[Segment]:
        stream = self.stream
        assert stream is not None
        stream.input_finished()
        await self.server._scheduler.decode(stream)
        segs = stream.pop_segments()
        last = stream.close()
        return segs + ([last] if last is not None else [])

    async def send(self, obj: dict[str, Any]) -> None:
        await self.ws.send(_json(obj))

    async def run(self) -> None:
        if self.protocol == "native":
            await self._run_native()
        else:
            await self._run_vosk()

    # ------------------------------------------------------------------ native
    async def _send_final(self, seg: Segment) -> None:
        self.server.metrics.finals.inc()
        await self.send({"type": "final", "text": seg.text, "words": _words_native(seg), "start": round(seg.start, 3),
                         "end": round(seg.end, 3), "reason": seg.reason})

    async def _run_native(self) -> None:
        b = self.server.rec.bundle
        while True:
            msg = await self.recv()
            if isinstance(msg, bytes):
                if self.stream is None:
                    raise ClientError("not_started", 'audio before the start message; send {"type": "start", '
                                                     '"sample_rate": 16000} first', 1008)
                n = await self._audio(msg)
                if n:
                    for seg in self.stream.pop_segments():
                        if seg.text:
                            await self._send_final(seg)
                    self.server.metrics.partials.inc()
                    await self.send({"type": "partial", "text": self.stream.result(),
                                     "start": round(self.stream._seg_start * b.frame_seconds, 3)})
                continue
            if len(msg) > self.cfg.max_message_bytes:
                raise ClientError("too_big", "text message too large", 1009)
            m = self._parse(msg)
            kind = m.get("type")
            if kind == "start":
                if self.stream is not None:
                    raise ClientError("already_started", "start was already sent on this connection", 1008)
                rate = self._rate(m.get("sample_rate", b.sample_rate))
                endpointing = m.get("endpointing", True)
                if not isinstance(endpointing, bool):
                    raise ClientError("bad_message", "endpointing must be true or false")
                self._new_stream(rate, endpointing)
                await self.send({"type": "ready", "sample_rate": rate, "model_sample_rate": b.sample_rate,
                                 "chunk_ms": round(b.chunk_seconds * 1000)})
            elif kind == "end":
                if self.stream is None:
                    raise ClientError("not_started", "end before start", 1008)
                segs = await self._finish()
                t = self.stream.seconds
                last = segs.pop() if segs and segs[-1].reason == "end" else Segment("", [], t, t, "end")
                for seg in segs:
                    if seg.text:
                        await self._send_final(seg)
                await self._send_final(last)
                await self.ws.close(1000, "end")
                return
            else:
                raise ClientError("bad_message", f"unknown message type {kind!r}; use start, binary audio, end")

    # ------------------------------------------------------------------ Vosk
    async def _run_vosk(self) -> None:
        b = self.server.rec.bundle
        while True:
            msg = await self.recv()
            if isinstance(msg, bytes):
                if self.stream is None:
                    self._new_stream(b.sample_rate)  # Vosk: config is optional
                await self._audio(msg)
                segs = self.stream.pop_segments()
                if segs:
                    self.server.metrics.finals.inc()
                    await self.send(_vosk_result(segs))
                else:
                    self.server.metrics.partials.inc()
                    await self.send({"partial": self.stream.result()})
                continue
            if len(msg) > self.cfg.max_message_bytes:
                raise ClientError("too_big", "text message too large", 1009)
            m = self._parse(msg)
            if "config" in m:
                conf = m["config"]
                if not isinstance(conf, dict):
                    raise ClientError("bad_message", 'config must be an object, e.g. {"config": {"sample_rate": 16000}}')
                if "sample_rate" in conf:
                    rate = self._rate(conf["sample_rate"])
                    if self.stream is not None and self.stream.samples_in and rate != self.stream.sample_rate:
                        raise ClientError("bad_sample_rate", "sample_rate cannot change after audio was sent", 1007)
                    self._new_stream(rate)
            elif "eof" in m:
                if self.stream is None:
                    self._new_stream(b.sample_rate)
                segs = await self._finish()
                self.server.metrics.finals.inc()
                await self.send(_vosk_result(segs))
                await self.ws.close(1000, "eof")
                return
            else:
                raise ClientError("bad_message", 'expected {"config": {...}} or {"eof" : 1}')


# ============================================================================ running
class ServerThread:
    """A RecognitionServer on its own event loop in a daemon thread (tests, in-process bench).

        with ServerThread(recognizer, ServerConfig(port=0)) as srv:
            url = f"ws://127.0.0.1:{srv.port}/ws"
    """

    def __init__(self, recognizer: Recognizer, config: ServerConfig | None = None) -> None:
        self.server = RecognitionServer(recognizer, config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ekd-server", daemon=True)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def start(self) -> "ServerThread":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_server(bundle: str | Path, config: ServerConfig | None = None, provider: str = "cpu", threads: int = 1,
               use_int8: bool = False, decoder: str = "greedy", beam: int = 8, lm_path: str | None = None,
               lm_weight: float = 0.5, on_ready=None) -> None:
    """Load the bundle and serve until interrupted (Ctrl-C / SIGTERM)."""
    import signal

    config = config or ServerConfig()
    rec = Recognizer(bundle, provider=provider, threads=threads, use_int8=use_int8, decoder=decoder, beam=beam,
                     lm_path=lm_path, lm_weight=lm_weight, endpoint=config.endpoint)

    async def main() -> None:
        server = RecognitionServer(rec, config)
        await server.start()
        if on_ready:
            on_ready(server)
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
            except (NotImplementedError, RuntimeError):
                pass
        try:
            await stop
        finally:
            await server.stop()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> None:
    """`python -m serve.server BUNDLE [--host H] [--port P] ...` (the CLI's serve command, without click)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m serve.server", description="Serve a bundle over websockets.")
    p.add_argument("bundle")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2700)
    p.add_argument("--max-connections", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--token", default=os.environ.get("EKD_SERVE_TOKEN"))
    p.add_argument("--int8", action="store_true")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--port-file", help="write the bound port here once listening (for --port 0)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ServerConfig(host=a.host, port=a.port, max_connections=a.max_connections, max_batch=a.max_batch,
                       max_wait_ms=a.max_wait_ms, token=a.token)

    def ready(server: RecognitionServer) -> None:
        if a.port_file:
            Path(a.port_file).write_text(str(server.port))

    run_server(a.bundle, cfg, provider=a.provider, threads=a.threads, use_int8=a.int8, on_ready=ready)


if __name__ == "__main__":
    main()
