"""Streaming speech recognition server: websockets (asyncio), batched decoding off the event loop.

    ekd-compress serve BUNDLE --port 2700

Endpoints and the two websocket protocols (native `/ws`, Vosk-compatible `/`), their messages,
error codes and close codes: `ekd_compress.serve.protocol`'s docstring (beside the code that implements them).

Limits (each a `serve` option; 0 turns the optional ones off):
  --max-connections 64   beyond it the HTTP upgrade gets 503 with a hint and Retry-After.
  --max-per-address 16   open connections per client address; beyond it 429 with Retry-After
                         (behind a reverse proxy every client shares its address: raise or 0).
  --max-message-kb 1024  websockets' max_size is the limit itself: a larger message is refused
                         while it arrives, with close 1009 and a reason naming the limit (no
                         JSON error first).
  --max-queue 2          frames buffered per connection before reading pauses, so a connection
                         holds about max_queue + 1 messages' worth of memory at most.
  --max-configs 8        Vosk config messages per connection (too_many_configs, 1008).
  --idle-timeout 30      no message for this long: idle_timeout (1008).
  --max-session 3600     session length (s): the stream gets the final result of its audio,
                         then session_too_long (1008).
  --min-data-rate 1000   bytes/s a client must send over each 10 s window (real-time 16 kHz
                         int16 is 32,000): else the final result, then too_slow (1008).
Native finals sent because of a limit carry the error code as their reason.

Authentication (optional): a bearer token (`Authorization: Bearer TOKEN` or `?token=TOKEN`),
compared in constant time (hmac.compare_digest), read from --token-file or EKD_SERVE_TOKEN
(`--token` still works but shows in the process list). An empty token is an error, never an
open server. After 10 wrong tokens within 60 s an address gets 429 (Retry-After) until the
oldest falls out of the window. With a token set, the websockets, /metrics and /stats need it, and /health answers
only {"status": "ok"} without it (the details with it); the page stays open. Every HTTP answer
carries X-Content-Type-Options: nosniff. A browser's websocket upgrade (it sends Origin) is
refused with 403 unless it comes from the server's own page or an --allowed-origin, token or not.

Metrics: ekd_serve_rejected_total{reason} counts refused HTTP requests (not_found,
unauthorized, auth_throttled, bad_origin, bad_request, busy, per_address) and ekd_serve_client_errors_total{error} closed
websockets by error code (the codes above, too_big, too_many_configs, too_slow,
session_too_long, internal); every label is listed from the start at 0.

A client's errors close only its own connection.

Shutdown (graceful drain): on SIGTERM or Ctrl-C the server stops listening (upgrades still in
flight get 503), and every open stream gets the final result of the audio it sent so far (native:
the closed segments, then the last one with reason "shutdown"; Vosk: one result), then a close
1001 "server shutting down". Streams still open after the grace period (`--drain-grace`, 8 s by
default) are closed 1001 as they are; then the process exits 0. In Docker, `docker stop` sends
SIGTERM and kills the container 10 s later (`docker stop -t N`, compose `stop_grace_period`):
keep --drain-grace a little below that. Clients should reconnect on 1001.

Batching: each connection feeds audio into its `Stream`; ready chunks are queued, and one
worker task gathers up to max_batch streams (waiting at most max_wait_ms after the first) and
runs `Recognizer.decode_batch` in a worker thread, one chunk per stream per model call.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine
from urllib.parse import urlsplit

from ekd_compress.serve.http_routes import STATIC_DIR, HTTPRoutes, _peer  # noqa: F401 (re-exported)
from ekd_compress.serve.metrics import Metrics, rss_mb  # noqa: F401 (re-exported)
from ekd_compress.serve.protocol import ClientError, SessionOver, _json, _Session, _vosk_result, _words_native  # noqa: F401
from ekd_compress.serve.runtime import EndpointConfig, Recognizer, Segment, Stream  # noqa: F401 (re-exported)
from ekd_compress.serve.scheduler import BatchScheduler

__all__ = ["BatchScheduler", "ClientError", "Metrics", "RecognitionServer", "ServerConfig", "ServerThread",
           "resolve_token", "rss_mb", "run_server", "serve_subprocess"]

log = logging.getLogger("serve")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 2700  # 0 = any free port
    max_connections: int = 64
    max_batch: int = 16  # streams per model call
    max_wait_ms: float = 5.0  # wait after the first ready chunk for more to batch
    max_message_bytes: int = 1 << 20  # 1 MiB = 32 s of 16 kHz int16; larger messages are refused while received
    max_queue: int = 2  # incoming frames buffered per connection before reading pauses (TCP backpressure)
    max_configs: int = 8  # Vosk config messages per connection
    drain_grace_s: float = 8.0  # shutdown: time for open streams to get their final results (< docker stop's 10 s)
    idle_timeout_s: float = 30.0
    max_session_s: float = 3600.0  # longest session (0: unlimited); a slot cannot be held forever
    min_bytes_per_s: float = 1000.0  # minimum data rate over each rate_window_s (0: none); real time is 16,000+
    rate_window_s: float = 10.0
    max_per_address: int = 16  # open connections per client address (0: unlimited; behind a proxy all share one)
    token: str | None = None  # None: no authentication; never "" (see resolve_token)
    allowed_origins: tuple[str, ...] = ()  # browser origins besides the server's own page ("*": any)
    max_auth_failures: int = 10  # wrong tokens per address per auth_window_s, then 429 (0: no throttle)
    auth_window_s: float = 60.0
    min_sample_rate: int = 8000
    max_sample_rate: int = 96000
    event_loop: str = "auto"  # "auto": uvloop when installed, else asyncio's own; "asyncio"; "uvloop"
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_batch", "max_message_bytes", "max_queue", "max_configs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be at least 1")
        if self.max_wait_ms < 0 or self.idle_timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and idle_timeout_s > 0")
        for name in ("max_session_s", "min_bytes_per_s", "max_per_address", "max_auth_failures"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 0 (0 turns the limit off)")
        self.allowed_origins = tuple(o.rstrip("/") for o in self.allowed_origins)
        for name in ("rate_window_s", "auth_window_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be > 0 seconds")
        if self.token is not None and not self.token.strip():
            raise ValueError("the token is empty: authentication would be off without saying so; set a non-empty "
                             "token (--token-file or EKD_SERVE_TOKEN), or unset EKD_SERVE_TOKEN for an open server")
        if not self.drain_grace_s >= 0:
            raise ValueError(f"drain_grace_s={self.drain_grace_s!r}: must be >= 0 seconds (0: close at once)")
        check_event_loop(self.event_loop)


EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def check_event_loop(choice: str) -> str:
    """`choice` if it names an event loop `loop_runner` knows (EVENT_LOOPS), else a ValueError naming them."""
    if choice not in EVENT_LOOPS:
        raise ValueError(f"event_loop={choice!r}: use one of {', '.join(EVENT_LOOPS)}")
    return choice


def loop_runner(choice: str = "auto") -> tuple[str, Callable[[Coroutine[Any, Any, None]], None]]:
    """The event loop `run_server` runs on: (its name, a function that runs a coroutine to the end).

    uvloop (libuv) does the same work as asyncio's own loop with less CPU per message; "auto"
    takes it where it is installed (`pip install 'ekd-compress[serve]'` on Linux and macOS)."""
    if check_event_loop(choice) != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise RuntimeError("event_loop='uvloop' but uvloop is not installed: pip install uvloop "
                                   "(or use event_loop='auto' / 'asyncio')") from None
        else:
            return "uvloop", uvloop.run
    return "asyncio", asyncio.run


class RecognitionServer(HTTPRoutes):
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
        # New streams (resampler filters: tens of ms at an unusual rate) are built here, off the event
        # loop and away from the features of good clients' audio in _feat_pool.
        self._stream_pool = ThreadPoolExecutor(1, thread_name_prefix="ekd-streams")
        self.port: int | None = None
        self.sessions: set[_Session] = set()
        self.per_address: dict[str, int] = {}  # open connections per client address
        self._auth_failures = {}
        self.draining = False
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> "RecognitionServer":
        from websockets.asyncio.server import serve

        c = self.config
        self._scheduler = BatchScheduler(self.rec, c.max_batch, c.max_wait_ms, self.metrics, lambda: self.active)
        self._scheduler.start()
        try:
            self._server = await serve(
                self._handle, c.host, c.port, process_request=self._process_request,
                max_size=c.max_message_bytes, max_queue=c.max_queue, compression=None, ping_interval=20,
                ping_timeout=20, close_timeout=2, logger=logging.getLogger("serve.websockets"),
            )
        except OSError as e:
            await self._scheduler.stop()
            self._feat_pool.shutdown(wait=False)
            raise PortUnavailable(_bind_hint(c.host, c.port, e)) from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving %s on ws://%s:%d (native /ws, Vosk /, page /)", self.rec.bundle.name, c.host, self.port)
        return self

    async def stop(self) -> None:
        """Close every connection with 1001 at once (see `drain` for a graceful shutdown)."""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._scheduler is not None:
            await self._scheduler.stop()
        self._feat_pool.shutdown(wait=True)
        self._stream_pool.shutdown(wait=True)

    async def drain(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: stop accepting (new upgrades get 503), give every open stream the
        final result of its audio so far and close it with 1001, waiting at most `grace_s`
        (default config.drain_grace_s); streams still open then are closed with 1001 as they
        are. Then `stop()`."""
        grace = self.config.drain_grace_s if grace_s is None else grace_s
        self.draining = True
        if self._server is not None:
            log.info("draining: %d open streams get their final results (grace %g s)", len(self.sessions), grace)
            self._server.close(close_connections=False)  # stop listening; opening handshakes get 503
            for session in list(self.sessions):
                session.drain()
            try:
                await asyncio.wait_for(self._server.wait_closed(), grace)
            except asyncio.TimeoutError:
                left = self._server.connections
                log.warning("drain grace of %g s over: closing %d streams without their final results", grace,
                            len(left))
                if left:
                    await asyncio.wait([asyncio.ensure_future(c.close(1001, "server shutting down")) for c in left],
                                       timeout=5)
        await self.stop()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()

    # ------------------------------------------------------------------ websocket side
    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        protocol = "native" if urlsplit(ws.request.path).path == "/ws" else "vosk"
        addr = _peer(ws)
        self.active += 1
        self.per_address[addr] = self.per_address.get(addr, 0) + 1
        self.metrics.active.set(self.active)
        session: _Session | None = None
        try:
            if self.draining:  # the upgrade raced the start of a drain
                await ws.close(1001, "server shutting down")
                return
            if self.active > self.config.max_connections:  # lost a race with another handshake
                self.metrics.rejected.labels("busy").inc()
                await self._error(ws, protocol, ClientError("busy", "server busy; retry in a few seconds", 1013))
                return
            cap = self.config.max_per_address
            if cap and self.per_address[addr] > cap:  # lost a race with a handshake from the same address
                self.metrics.rejected.labels("per_address").inc()
                await self._error(ws, protocol, ClientError(
                    "busy", f"more than {cap} connections from {addr}; close one and retry", 1013))
                return
            self.metrics.connections.labels(protocol).inc()
            session = _Session(self, ws, protocol)
            self.sessions.add(session)
            await session.run()
        except SessionOver:
            pass  # drained: results sent, connection closed
        except ClientError as e:
            self.metrics.errors.labels(e.code).inc()
            log.info("closing %s stream from %s: %s (%d): %s", protocol, _peer(ws), e.code, e.close_code, e.message)
            await self._error(ws, protocol, e)
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == 1009:  # websockets refused a message over max_size
                self.metrics.errors.labels("too_big").inc()
                log.info("closing %s stream from %s: too_big (1009): %s", protocol, _peer(ws), e.sent.reason)
            # else: the client went away: nothing to report to
        except Exception:
            log.exception("stream failed")
            self.metrics.errors.labels("internal").inc()
            await self._error(ws, protocol, ClientError("internal", "internal server error", 1011))
        finally:
            if session is not None:
                self.sessions.discard(session)
            self.per_address[addr] -= 1
            if not self.per_address[addr]:
                del self.per_address[addr]
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


# ============================================================================ running
class PortUnavailable(RuntimeError):
    """The server cannot listen on the configured host and port; the message names the fix."""


def _bind_hint(host: str, port: int, error: OSError) -> str:
    import errno

    if error.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use (another server?); choose another with --port N "
                "(--port 0 picks a free one) or stop the process listening there")
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to listen on port {port} on {host}; use a port above 1023, e.g. --port 2700"
    if error.errno == errno.EADDRNOTAVAIL or isinstance(error, OSError) and "address" in str(error).lower():
        return f"cannot listen on {host}:{port} ({error.strerror or error}); use --host 127.0.0.1 or 0.0.0.0"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


def resolve_token(token: str | None = None, token_file: str | Path | None = None,
                  environ: dict[str, str] | None = None) -> str | None:
    """The bearer token from --token-file, --token (deprecated: visible in the process list) or
    EKD_SERVE_TOKEN, in that order of the arguments given; None for an open server (none set).
    An empty token (an empty file, EKD_SERVE_TOKEN="") is an error, never a silent open server."""
    environ = os.environ if environ is None else environ
    if token is not None and token_file is not None:
        raise ValueError("both --token and --token-file given; use --token-file alone")
    if token_file is not None:
        try:
            value = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--token-file {token_file}: cannot read it ({e})") from None
        if not value:
            raise ValueError(f"--token-file {token_file} is empty; write the token into it")
        return value
    if token is not None:
        if not token.strip():
            raise ValueError("--token is empty; give a token (better: --token-file or EKD_SERVE_TOKEN, which "
                             "stay out of the process list)")
        log.warning("--token is visible to every user in the process list; prefer --token-file or EKD_SERVE_TOKEN")
        return token.strip()
    if "EKD_SERVE_TOKEN" in environ:
        value = environ["EKD_SERVE_TOKEN"].strip()
        if not value:
            raise ValueError("EKD_SERVE_TOKEN is set but empty, which would turn authentication off; set a token, "
                             "or unset the variable for an open server")
        return value
    return None



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

    def drain(self, grace_s: float | None = None) -> None:
        """`RecognitionServer.drain` (graceful shutdown), then end the thread."""
        if self._thread.is_alive():
            grace = self.server.config.drain_grace_s if grace_s is None else grace_s
            asyncio.run_coroutine_threadsafe(self.server.drain(grace), self._loop).result(grace + 30)
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
            await server.drain()  # SIGTERM / Ctrl-C: final results for open streams, then exit 0
        finally:
            await server.stop()

    name, run = loop_runner(config.event_loop)
    log.info("event loop: %s", name)
    run(main())


def serve_subprocess(spec: dict) -> None:
    """Serve one bundle as the benchmark's server subprocess (serve/bench.py `ServerProcess`).

    spec: {"bundle": path, "port_file": path the bound port is written to once listening
    (for port 0), "config": ServerConfig keyword arguments (numbers and strings), "provider",
    "threads", "use_int8"}; the token comes from EKD_SERVE_TOKEN. Not a command line: people
    run `ekd-compress serve`.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ServerConfig(**spec["config"], token=resolve_token())

    def ready(server: RecognitionServer) -> None:
        Path(spec["port_file"]).write_text(str(server.port))

    run_server(spec["bundle"], cfg, provider=spec["provider"], threads=spec["threads"], use_int8=spec["use_int8"],
               on_ready=ready)


if __name__ == "__main__":  # serve/bench.py: python -m ekd_compress.serve.server SPEC_JSON (light: no click, no CLI imports)
    import json
    import sys

    serve_subprocess(json.loads(sys.argv[1]))
