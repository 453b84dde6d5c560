"""Websocket protocols of the recognition server: message parsing and validation, and the
per-connection state machines of the native (`/ws`) and Vosk-compatible (`/`) protocols
(`_Session`), specified below. Re-exported by `ekd_compress.serve.server` (limits, authentication,
shutdown and batching are described there).

Endpoints (one port):

    ws://HOST:PORT/ws       native protocol (below)
    ws://HOST:PORT/         Vosk-compatible protocol (below), what Vosk clients, Asterisk, Jigasi
                            and FreeSWITCH integrations connect to
    GET  /                  (plain HTTP) the browser demo page: microphone -> live text
    GET  /health            JSON: {"status": "ok", "model", "output": "words"|"phones", "streams",
                            "max_connections", "rss_mb", ...}
                            (only {"status": "ok"} without the token, when one is set)
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
    server -> {"type": "ready", "sample_rate": 16000, "model_sample_rate": 16000, "chunk_ms": 320,
               "lookahead_ms": 0}
              in reply to start. lookahead_ms: audio past a chunk the model waits for before
              decoding it (0 for a causal model), so a partial lags its audio by at least that.
    server -> {"type": "partial", "text": "...", "start": s}  after each audio message that
              completed one or more model chunks (chunk_ms of audio); text of the open segment.
    server -> {"type": "final", "text": "...", "words": [{"word", "start", "end", "conf"}],
               "start": s, "end": s, "reason": "trailing_silence" | "max_length" | "end" | "shutdown"}
              when an endpoint rule closes a segment with text, and once after "end" (the
              last one, possibly empty text, reason "end"); then the server closes (1000).
              Times are seconds from the start of the stream.
    server -> {"type": "error", "error": CODE, "message": "..."} then a close with a
              websocket close code: bad_json / bad_message / bad_sample_rate (1007),
              not_started / already_started / idle_timeout / unauthorized (1008),
              too_big (1009), busy (1013), internal (1011). bad_json covers malformed JSON
              and JSON Python would accept but the protocol does not: NaN, Infinity,
              numbers beyond float range (1e400), integers over 4,300 digits, nesting too
              deep. Each such close is logged on one line (code, close code, client
              address), never with a traceback; 1011 is kept for server bugs.

Phone models (a bundle with token_kind "phone", trained with `tokens.kind: phone`) write phones,
not words: every "text" / "partial" is a phone string such as "HH AH L OW" (ARPAbet from the
model's lexicon.txt, stress-stripped), and each entry of "words" / "result" is one phone with its
times and confidence (its "word" field holds the phone). /health says "output": "phones".

Vosk-compatible protocol (`/`): text `{"config": {"sample_rate": 8000}}` (optional, before audio;
other config keys are accepted and ignored; a repeated config at the same rate keeps the stream
and its audio, another rate after audio is bad_sample_rate; more than max_configs config
messages on one connection close it with too_many_configs, 1008), binary int16 PCM frames, then text `{"eof" : 1}`.
Exactly one reply per binary frame: `{"partial": "..."}`, or at an endpoint
`{"result": [{"conf", "start", "end", "word"}], "text": "..."}` (`{"text": ""}` when the
segment had no words). After eof: the final result, then the server closes. Errors: `{"error": "..."}`
and a close as above.

HTTP: an ambiguous request (the Upgrade or Authorization header sent twice) gets 400; any
path that is not a route or a file of serve/static gets 404 (request paths never reach the
filesystem, and are echoed back cut to 100 characters).
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ekd_compress.serve.runtime import EndpointConfig, Segment, Stream

if TYPE_CHECKING:
    from ekd_compress.serve.server import RecognitionServer


class SessionOver(Exception):
    """The session was ended by the server on purpose (shutdown drain): results were sent and
    the connection closed; nothing more to report."""


class ClientError(Exception):
    """A client mistake: reported to that client, then its connection is closed."""

    def __init__(self, code: str, message: str, close_code: int = 1007) -> None:
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code


# ============================================================================ messages
def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: error messages never echo a whole hostile message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON; send finite numbers")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def parse_json(text: str) -> Any:
    """Strict JSON: NaN, Infinity and numbers beyond float range (1e400) are refused, and so is
    input nested too deeply or with integers too long to convert (Python's 4,300-digit limit).
    Raises ValueError with a short reason for any of these, and for malformed JSON."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise ValueError(f"{e.msg} at char {e.pos}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as e:
        raise ValueError(str(e)[:80]) from None


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

class _Session:
    """One websocket connection: protocol state machine around a Stream."""

    def __init__(self, server: RecognitionServer, ws, protocol: str) -> None:
        self.server, self.ws, self.protocol = server, ws, protocol
        self.cfg = server.config
        self.stream: Stream | None = None
        self.carry = b""  # odd byte of int16 PCM left from the previous message
        self.sent_chunks = 0
        self.configs = 0  # Vosk config messages so far (capped: each may build a stream)
        self._drain = asyncio.Event()
        self.started = time.monotonic()
        self.window_start, self.window_bytes = self.started, 0  # minimum data rate, per rate_window_s

    def drain(self) -> None:
        """Server shutdown: at its next wait for a message this session sends the final result
        of the audio so far (native: reason "shutdown"), then closes with 1001."""
        self._drain.set()

    async def recv(self):
        """The next message. Meanwhile watch the idle timeout, the session length, the minimum
        data rate and a shutdown drain: each ends the session with its final results first."""
        c = self.cfg
        while True:
            if self._drain.is_set():
                await self._shutdown()
            now = time.monotonic()
            await self._check_limits(now)
            timeout, idle = c.idle_timeout_s, True
            if c.max_session_s and self.started + c.max_session_s - now < timeout:
                timeout, idle = self.started + c.max_session_s - now, False
            if c.min_bytes_per_s and self.window_start + c.rate_window_s - now < timeout:
                timeout, idle = self.window_start + c.rate_window_s - now, False
            receive = asyncio.ensure_future(self.ws.recv())
            drained = asyncio.ensure_future(self._drain.wait())
            try:
                done, _ = await asyncio.wait({receive, drained}, timeout=max(timeout, 0.0),
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                drained.cancel()
                if not receive.done():
                    receive.cancel()  # websockets: cancelling recv() loses no message
            if receive in done:
                msg = receive.result()
                self.window_bytes += len(msg)
                return msg
            try:
                await receive
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 (the connection's fate is handled below)
                pass
            if idle and not self._drain.is_set():
                raise ClientError("idle_timeout", f"no message for {c.idle_timeout_s:g} s; closing", 1008)

    async def _check_limits(self, now: float) -> None:
        """Session length and minimum data rate: on a breach send the final results of the audio
        so far, then raise the ClientError (1008) that closes the connection."""
        c = self.cfg
        error = None
        if c.max_session_s and now - self.started >= c.max_session_s:
            error = ClientError("session_too_long", f"session longer than {c.max_session_s:g} s (the server's "
                                                    "--max-session); open a new connection to go on", 1008)
        elif c.min_bytes_per_s and now - self.window_start >= c.rate_window_s:
            need = c.min_bytes_per_s * c.rate_window_s
            if self.window_bytes < need:
                error = ClientError("too_slow", f"{self.window_bytes} bytes in {c.rate_window_s:g} s, under the "
                                                f"server's minimum data rate of {c.min_bytes_per_s:g} bytes/s "
                                                "(--min-data-rate); stream audio in real time", 1008)
            self.window_start, self.window_bytes = now, 0
        if error is not None:
            await self._flush(error.code)
            raise error

    async def _shutdown(self) -> None:
        """Drain: the final result(s) of the audio so far, then close 1001; raises SessionOver."""
        await self._flush("shutdown")
        await self.ws.close(1001, "server shutting down")
        raise SessionOver()

    async def _flush(self, reason: str) -> None:
        """No more audio: send the remaining results (native: every closed segment with text, then
        the last segment with `reason`; Vosk: one result). Nothing when no stream was started."""
        if self.stream is None:
            return
        segs = await self._finish()
        if self.protocol == "native":
            t = self.stream.seconds
            last = segs.pop() if segs and segs[-1].reason == "end" else Segment("", [], t, t, "end")
            last.reason = reason
            for seg in segs:
                if seg.text:
                    await self._send_final(seg)
            await self._send_final(last)
        else:
            self.server.metrics.finals.inc()
            await self.send(_vosk_result(segs))

    def _rate(self, value: Any) -> int:
        c = self.cfg
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value != int(value) or not c.min_sample_rate <= value <= c.max_sample_rate:
            raise ClientError("bad_sample_rate", f"sample_rate {_short(value)} is not supported; send an integer rate in Hz "
                                                 f"between {c.min_sample_rate} and {c.max_sample_rate}, e.g. 16000")
        return int(value)

    def _parse(self, text: str) -> dict[str, Any]:
        try:
            msg = parse_json(text)
        except ValueError as e:
            raise ClientError("bad_json", f"malformed JSON ({e}); send one JSON object per text message") from None
        if not isinstance(msg, dict):
            raise ClientError("bad_message", "expected a JSON object")
        return msg

    async def _new_stream(self, rate: int, endpointing: bool = True) -> None:
        """A new Stream at `rate`, built off the event loop (its resampler's filters take tens of
        ms at unusual rates the first time; `ekd_compress.serve.resample` caches them per rate pair)."""
        ep = self.cfg.endpoint if endpointing else EndpointConfig(enabled=False)
        create = self.server.rec.create_stream
        self.stream = await asyncio.get_running_loop().run_in_executor(
            self.server._stream_pool, lambda: create(rate, endpoint=ep))

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
                await self._new_stream(rate, endpointing)
                await self.send({"type": "ready", "sample_rate": rate, "model_sample_rate": b.sample_rate,
                                 "chunk_ms": round(b.chunk_seconds * 1000),
                                 "lookahead_ms": round(b.lookahead_seconds * 1000)})
            elif kind == "end":
                if self.stream is None:
                    raise ClientError("not_started", "end before start", 1008)
                await self._flush("end")
                await self.ws.close(1000, "end")
                return
            else:
                raise ClientError("bad_message", f"unknown message type {_short(kind)}; use start, binary audio, end")

    # ------------------------------------------------------------------ Vosk
    async def _run_vosk(self) -> None:
        b = self.server.rec.bundle
        while True:
            msg = await self.recv()
            if isinstance(msg, bytes):
                if self.stream is None:
                    await self._new_stream(b.sample_rate)  # Vosk: config is optional
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
                self.configs += 1
                if self.configs > self.cfg.max_configs:
                    raise ClientError("too_many_configs", f"more than {self.cfg.max_configs} config messages on one "
                                                          "connection; send config once, before the audio", 1008)
                if "sample_rate" in conf:
                    rate = self._rate(conf["sample_rate"])
                    if self.stream is not None and rate == self.stream.sample_rate:
                        pass  # a repeated config: keep the stream and the audio so far
                    elif self.stream is not None and self.stream.samples_in:
                        raise ClientError("bad_sample_rate", f"sample_rate cannot change after audio was sent "
                                                             f"(from {self.stream.sample_rate} to {rate}); open a new "
                                                             "connection for audio at another rate", 1007)
                    else:
                        await self._new_stream(rate)
            elif "eof" in m:
                if self.stream is None:
                    await self._new_stream(b.sample_rate)
                await self._flush("end")
                await self.ws.close(1000, "eof")
                return
            else:
                raise ClientError("bad_message", 'expected {"config": {...}} or {"eof" : 1}')
