"""The websocket server with real `websockets` clients on 127.0.0.1: native and Vosk protocols,
HTTP endpoints, limits, and bad input that must never disturb another stream."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from serve_helpers import noise, silence, to_pcm16, tone
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from ekd_compress.serve.runtime import EndpointConfig, Recognizer
from ekd_compress.serve.server import BatchScheduler, Metrics, ServerConfig, ServerThread

AUDIO = np.concatenate([silence(0.3), tone(0.5), silence(1.2), tone(0.4), silence(0.3)])  # "a" . "a"


@pytest.fixture(scope="module")
def recognizer(energy_bundle):
    return Recognizer(energy_bundle)


@pytest.fixture(scope="module")
def server(recognizer):
    cfg = ServerConfig(port=0, max_connections=6, max_message_bytes=64_000, idle_timeout_s=1.5)
    with ServerThread(recognizer, cfg) as srv:
        yield srv


def url(srv, path="/ws"):
    return f"ws://127.0.0.1:{srv.port}{path}"


def http(srv, path, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def recv_all(ws, timeout=10):
    out = []
    try:
        while True:
            out.append(json.loads(ws.recv(timeout=timeout)))
    except ConnectionClosed:
        return out


def native_session(srv, pcm: bytes, rate=16000, piece=3200, **start):
    with connect(url(srv), open_timeout=5) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": rate, **start}))
        ready = json.loads(ws.recv(timeout=5))
        assert ready["type"] == "ready"
        for i in range(0, len(pcm), piece):
            ws.send(pcm[i:i + piece])
        ws.send(json.dumps({"type": "end"}))
        msgs = recv_all(ws)
        assert ws.protocol.close_code == 1000
        return msgs


class GoodStream:
    """A well-behaved native client streaming AUDIO in a background thread, half now, half later."""

    def __init__(self, srv):
        self.srv, self.msgs, self.error = srv, None, None
        self.go_on = threading.Event()
        self.half_sent = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            pcm = to_pcm16(AUDIO)
            half = len(pcm) // 2 // 3200 * 3200
            with connect(url(self.srv), open_timeout=5) as ws:
                ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
                ws.recv(timeout=5)
                for i in range(0, half, 3200):
                    ws.send(pcm[i:i + 3200])
                self.half_sent.set()
                self.go_on.wait(20)
                for i in range(half, len(pcm), 3200):
                    ws.send(pcm[i:i + 3200])
                ws.send(json.dumps({"type": "end"}))
                self.msgs = recv_all(ws)
        except Exception as e:  # noqa: BLE001
            self.error = e
            self.half_sent.set()

    def finish(self):
        self.go_on.set()
        self.t.join(20)
        assert self.error is None, self.error
        finals = [m for m in self.msgs if m["type"] == "final"]
        assert [f["text"] for f in finals] == ["a", "a"], self.msgs


# ----------------------------------------------------------------------------- native protocol
def test_native_protocol(server):
    msgs = native_session(server, to_pcm16(AUDIO))
    kinds = [m["type"] for m in msgs]
    assert "partial" in kinds and kinds[-1] == "final"
    finals = [m for m in msgs if m["type"] == "final"]
    assert [(f["text"], f["reason"]) for f in finals] == [("a", "trailing_silence"), ("a", "end")]
    w = finals[0]["words"][0]
    assert w["word"] == "a" and 0.28 <= w["start"] < w["end"] <= 0.9 and 0 < w["conf"] <= 1
    assert 2.0 <= finals[1]["words"][0]["start"] <= 2.2
    assert any(m["type"] == "partial" and m["text"] == "a" for m in msgs)


def test_native_resamples_8k_and_odd_byte_pieces(server):
    x8 = np.concatenate([silence(0.3, 8000), tone(0.5, 0.3, 8000), silence(0.3, 8000)])
    msgs = native_session(server, to_pcm16(x8), rate=8000, piece=1001)  # odd sizes split samples
    assert [m["text"] for m in msgs if m["type"] == "final"] == ["a"]


def test_native_without_endpointing(server):
    msgs = native_session(server, to_pcm16(AUDIO), endpointing=False)
    assert [(m["text"], m["reason"]) for m in msgs if m["type"] == "final"] == [("aa", "end")]


# ----------------------------------------------------------------------------- Vosk protocol
def test_vosk_protocol_one_reply_per_frame(server):
    x8 = np.concatenate([silence(0.3, 8000), tone(0.5, 0.3, 8000), silence(1.2, 8000), noise(0.4, 0.05, 8000)])
    pcm = to_pcm16(x8)
    replies = []
    with connect(url(server, "/"), open_timeout=5) as ws:
        ws.send(json.dumps({"config": {"sample_rate": 8000, "words": True}}))
        frames = [pcm[i:i + 1600] for i in range(0, len(pcm), 1600)]  # 100 ms frames
        for f in frames:
            ws.send(f)
            replies.append(json.loads(ws.recv(timeout=5)))
        ws.send('{"eof" : 1}')
        final = json.loads(ws.recv(timeout=5))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert len(replies) == len(frames)
    results = [r for r in replies if "text" in r]
    assert all(set(r) == {"partial"} for r in replies if "text" not in r)
    assert len(results) == 1 and results[0]["text"] == "a"
    word = results[0]["result"][0]
    assert set(word) == {"conf", "start", "end", "word"} and word["word"] == "a"
    assert final["text"] in ("b", "ab") and final["result"]


def test_vosk_without_config_defaults_to_model_rate(server):
    pcm = to_pcm16(np.concatenate([tone(0.5), silence(0.2)]))
    with connect(url(server, "/"), open_timeout=5) as ws:
        n = 0
        for i in range(0, len(pcm), 8000):
            ws.send(pcm[i:i + 8000])
            ws.recv(timeout=5)
            n += 1
        ws.send('{"eof" : 1}')
        assert json.loads(ws.recv(timeout=5))["text"] == "a"


def test_vosk_repeated_config_keeps_the_audio_so_far(server):
    """A config at the same rate mid-stream is a no-op: the tone before it is still recognised
    (it used to build a new stream and drop it: issue 14, item 5)."""
    tone_pcm, rest = to_pcm16(np.concatenate([silence(0.2), tone(0.5)])), to_pcm16(silence(0.3))
    config = json.dumps({"config": {"sample_rate": 16000}})
    with connect(url(server, "/"), open_timeout=5) as ws:
        ws.send(config)
        ws.send(tone_pcm)
        ws.recv(timeout=5)
        ws.send(config)
        ws.send(rest)
        ws.recv(timeout=5)
        ws.send('{"eof" : 1}')
        assert json.loads(ws.recv(timeout=5))["text"] == "a"
    with connect(url(server, "/"), open_timeout=5) as ws:  # another rate after audio: a clear error
        ws.send(config)
        ws.send(tone_pcm)
        ws.recv(timeout=5)
        ws.send(json.dumps({"config": {"sample_rate": 8000}}))
        msgs = recv_all(ws)
    assert msgs[-1]["code"] == "bad_sample_rate" and "16000 to 8000" in msgs[-1]["error"]


def test_streams_built_off_the_event_loop(recognizer, monkeypatch):
    """Building a stream (its resampler: tens of ms at 95,999 Hz) never runs on the event loop,
    so config floods cannot stall other clients' results (issue 14, item 4)."""
    threads = []
    create = recognizer.create_stream

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return create(*args, **kwargs)

    monkeypatch.setattr(recognizer, "create_stream", spy)
    with ServerThread(recognizer, ServerConfig(port=0)) as srv:
        with connect(url(srv, "/"), open_timeout=5) as ws:
            ws.send(json.dumps({"config": {"sample_rate": 95_999}}))
            ws.send('{"eof" : 1}')
            assert json.loads(ws.recv(timeout=5))["text"] == ""
        native_session(srv, to_pcm16(silence(0.2)))
    assert len(threads) == 2 and all(t.startswith("ekd-streams") for t in threads), threads


def test_vosk_configs_per_connection_capped(server):
    """Each config may build a stream (and a resampler): more than max_configs closes the
    connection with too_many_configs (1008) instead of burning the event loop (issue 14, item 4)."""
    good = GoodStream(server)
    assert good.half_sent.wait(10)
    cap = server.server.config.max_configs
    with connect(url(server, "/"), open_timeout=5) as ws:
        for i in range(cap + 1):
            ws.send(json.dumps({"config": {"sample_rate": 95_999 - i}}))
        msgs = recv_all(ws)
    assert msgs[-1]["code"] == "too_many_configs" and ws.protocol.close_code == 1008
    good.finish()
    assert 'ekd_serve_client_errors_total{error="too_many_configs"} 1.0' in http(server, "/metrics")[2]


# ----------------------------------------------------------------------------- HTTP side
def test_http_endpoints(server):
    status, headers, body = http(server, "/")
    assert status == 200 and "text/html" in headers["Content-Type"] and "<html" in body.lower()
    status, _, body = http(server, "/app.js")
    assert status == 200 and "WebSocket" in body
    status, _, body = http(server, "/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["model"] == "energy" and health["rss_mb"] > 0
    assert health["lookahead_ms"] == 0  # a causal bundle
    status, headers, body = http(server, "/metrics")
    assert status == 200 and "ekd_serve_chunks_total" in body and "ekd_serve_chunk_compute_seconds_bucket" in body
    status, _, body = http(server, "/stats")
    assert status == 200 and "p95" in json.loads(body)["chunk_ms"]
    assert http(server, "/nope")[0] == 404


def test_lookahead_is_announced(lookahead_bundle):
    """A bundle that waits for 3 output frames (12 input frames of 10 ms) past each chunk says so."""
    rec = Recognizer(lookahead_bundle)
    assert rec.bundle.window_frames - rec.bundle.chunk_frames == 12
    with ServerThread(rec, ServerConfig(port=0)) as srv:
        assert json.loads(http(srv, "/health")[2])["lookahead_ms"] == 120
        with connect(url(srv), open_timeout=5) as ws:
            ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            ready = json.loads(ws.recv(timeout=5))
            assert ready["type"] == "ready" and ready["lookahead_ms"] == 120
            assert ready["chunk_ms"] == round(rec.bundle.chunk_seconds * 1000)


# ----------------------------------------------------------------------------- bad input
def _bad_native(srv, first, then=None):
    with connect(url(srv), open_timeout=5) as ws:
        ws.send(first)
        if then is not None:
            ws.recv(timeout=5)  # ready
            ws.send(then)
        msgs = recv_all(ws)
        return msgs, ws.protocol.close_code


START = json.dumps({"type": "start", "sample_rate": 16000})


BAD_NATIVE = [
    ("malformed_json", "{not json", None, "bad_json", 1007),
    ("not_an_object", "[1, 2]", None, "bad_message", 1007),
    ("audio_before_start", b"\x00\x01" * 800, None, "not_started", 1008),
    ("sample_rate_zero", json.dumps({"type": "start", "sample_rate": 0}), None, "bad_sample_rate", 1007),
    ("sample_rate_text", json.dumps({"type": "start", "sample_rate": "fast"}), None, "bad_sample_rate", 1007),
    ("sample_rate_huge", json.dumps({"type": "start", "sample_rate": 10**7}), None, "bad_sample_rate", 1007),
    ("unknown_type", START, json.dumps({"type": "dance"}), "bad_message", 1007),
    ("double_start", START, START, "already_started", 1008),
    # hostile JSON: a clean protocol error, never 1011 "internal" with a traceback (issue 14, item 1)
    ("deep_json", "[" * 30_000 + "]" * 30_000, None, "bad_json", 1007),
    ("huge_int", '{"type": "start", "sample_rate": ' + "9" * 5000 + "}", None, "bad_json", 1007),
    ("sample_rate_nan", '{"type": "start", "sample_rate": NaN}', None, "bad_json", 1007),
    ("sample_rate_infinity", '{"type": "start", "sample_rate": Infinity}', None, "bad_json", 1007),
    ("sample_rate_1e400", '{"type": "start", "sample_rate": 1e400}', None, "bad_json", 1007),
    ("sample_rate_float_huge", '{"type": "start", "sample_rate": 1e300}', None, "bad_sample_rate", 1007),
]


@pytest.mark.parametrize("case, first, then, code, close", BAD_NATIVE, ids=[c[0] for c in BAD_NATIVE])
def test_bad_native_input_other_stream_unharmed(server, case, first, then, code, close, caplog):
    good = GoodStream(server)
    assert good.half_sent.wait(10)
    with caplog.at_level(logging.INFO, logger="serve"):
        msgs, close_code = _bad_native(server, first, then)
    assert msgs[-1]["type"] == "error" and msgs[-1]["error"] == code and msgs[-1]["message"]
    assert len(msgs[-1]["message"]) < 300  # never the hostile message echoed back
    assert close_code == close
    good.finish()
    assert not [r for r in caplog.records if r.exc_info], "a client error logged a traceback"
    lines = [r.getMessage() for r in caplog.records if code in r.getMessage()]
    assert lines and all("\n" not in m and len(m) < 400 for m in lines), lines


def test_oversized_message_refused_while_received(server):
    """websockets' max_size is the message limit itself (not 4x), and at most max_queue frames wait
    per connection: memory held for a message that will be refused is bounded (issue 14, item 3)."""
    good = GoodStream(server)
    assert good.half_sent.wait(10)
    limit = server.server.config.max_message_bytes
    with connect(url(server), open_timeout=5, max_size=None) as ws:
        ws.send(START)
        assert json.loads(ws.recv(timeout=5))["type"] == "ready"
        conns = server.server._server.connections
        assert conns and all(c.protocol.max_message_size == limit and c.max_queue_high == server.server.config.max_queue
                             for c in conns)
        ws.send(b"\x00" * limit)  # exactly the limit: accepted
        assert json.loads(ws.recv(timeout=5))["type"] == "partial"
        ws.send(b"\x00" * (limit + 2))  # over it: refused by websockets while receiving
        recv_all(ws)
    assert ws.protocol.close_code == 1009 and str(limit) in (ws.protocol.close_reason or "")
    good.finish()
    deadline = time.time() + 5
    while 'client_errors_total{error="too_big"}' not in http(server, "/metrics")[2] and time.time() < deadline:
        time.sleep(0.05)
    assert 'ekd_serve_client_errors_total{error="too_big"}' in http(server, "/metrics")[2]


def test_sample_rate_rate_check_is_total():
    """_Session._rate never raises anything but ClientError, whatever JSON gave it."""
    from ekd_compress.serve.protocol import ClientError, _Session

    sess = _Session.__new__(_Session)
    sess.cfg = ServerConfig()
    for bad in (float("nan"), float("inf"), -float("inf"), 1e300, -5, 7999.5, "16000", None, [16000], True):
        with pytest.raises(ClientError) as e:
            sess._rate(bad)
        assert e.value.code == "bad_sample_rate"
    assert sess._rate(16000.0) == 16000


@pytest.mark.parametrize("bad", ["[" * 30_000 + "]" * 30_000, '{"config": {"sample_rate": NaN}}',
                                 '{"config": {"sample_rate": 1e400}}', '{"config": ' + "1" * 5000 + "}"],
                         ids=["deep", "nan", "1e400", "huge_int"])
def test_hostile_vosk_json_is_a_clean_error(server, bad):
    with connect(url(server, "/"), open_timeout=5) as ws:
        ws.send(bad)
        msgs = recv_all(ws)
    assert msgs[-1]["code"] == "bad_json" and ws.protocol.close_code == 1007


def _raw_http(srv, head: str) -> tuple[int, str]:
    """Send a hand-written HTTP request (duplicate headers, overlong paths) and read the status line."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    status_line = data.split(b"\r\n", 1)[0].decode()
    return int(status_line.split()[1]), data.decode(errors="replace")


UPGRADE = ("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


HOSTILE_HTTP = [
    ("overlong_static_path", "GET /" + "x" * 5000 + " HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    ("overlong_ws_path", UPGRADE.format(path="/" + "y" * 5000, extra="Upgrade: websocket\r\n"), 404),
    ("double_upgrade", UPGRADE.format(path="/ws", extra="Upgrade: websocket\r\nUpgrade: websocket\r\n"), 400),
    ("double_authorization", UPGRADE.format(
        path="/ws", extra="Upgrade: websocket\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n"), 400),
    ("double_authorization_metrics",
     "GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n", 400),
]


@pytest.mark.parametrize("case, head, status", HOSTILE_HTTP, ids=[c[0] for c in HOSTILE_HTTP])
def test_hostile_http_is_4xx_not_500(recognizer, case, head, status, caplog):
    with ServerThread(recognizer, ServerConfig(port=0, token="s3cret")) as srv, \
            caplog.at_level(logging.INFO, logger="serve"):
        code, text = _raw_http(srv, head)
        assert code == status, text[:300]
        assert len(text) < 2000  # the 5 KB path is not echoed back
        assert http(srv, "/health")[0] == 200  # still up
    assert not [r for r in caplog.records if r.exc_info], "a bad request logged a traceback"


@pytest.mark.parametrize("bad", ["{oops", json.dumps({"config": {"sample_rate": -5}}), json.dumps({"hello": 1})])
def test_bad_vosk_input(server, bad):
    good = GoodStream(server)
    assert good.half_sent.wait(10)
    with connect(url(server, "/"), open_timeout=5) as ws:
        ws.send(bad)
        msgs = recv_all(ws)
    assert "error" in msgs[-1]
    good.finish()


def test_abrupt_disconnects_and_idle_timeout(server):
    good = GoodStream(server)
    assert good.half_sent.wait(10)
    for path in ("/ws", "/"):  # drop the TCP connection mid-stream, without a closing handshake
        with connect(url(server, path), open_timeout=5) as ws:
            if path == "/ws":
                ws.send(START)
                ws.recv(timeout=5)
            ws.send(to_pcm16(tone(0.7)))
            ws.socket.shutdown(2)
            ws.socket.close()
    good.finish()  # (before the idle test: a paused good stream would time out too)
    with connect(url(server), open_timeout=5) as ws:  # says nothing: idle timeout (1.5 s here)
        msgs = recv_all(ws)
    assert msgs[-1]["error"] == "idle_timeout" and ws.protocol.close_code == 1008
    deadline = time.time() + 5
    while json.loads(http(server, "/health")[2])["streams"] and time.time() < deadline:
        time.sleep(0.05)
    assert json.loads(http(server, "/health")[2])["streams"] == 0
    assert native_session(server, to_pcm16(AUDIO))[-1]["type"] == "final"


def test_too_many_connections_503(recognizer):
    with ServerThread(recognizer, ServerConfig(port=0, max_connections=2)) as srv:
        with connect(url(srv, "/"), open_timeout=5):
            with connect(url(srv), open_timeout=5):
                with pytest.raises(InvalidStatus) as e:
                    connect(url(srv), open_timeout=5)
                resp = e.value.response
                assert resp.status_code == 503 and b"max-connections" in resp.body and resp.headers["Retry-After"]
            deadline = time.time() + 5
            while srv.server.active >= 2 and time.time() < deadline:
                time.sleep(0.02)
            with connect(url(srv), open_timeout=5) as c:  # a slot is free again
                c.send(START)
                assert json.loads(c.recv(timeout=5))["type"] == "ready"
        assert "ekd_serve_rejected_total{reason=\"busy\"} 1.0" in http(srv, "/metrics")[2]


def test_bearer_token(recognizer):
    with ServerThread(recognizer, ServerConfig(port=0, token="s3cret")) as srv:
        with pytest.raises(InvalidStatus) as e:
            connect(url(srv), open_timeout=5)
        assert e.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            connect(url(srv) + "?token=wrong", open_timeout=5)
        for kwargs in ({"uri": url(srv), "additional_headers": {"Authorization": "Bearer s3cret"}},
                       {"uri": url(srv) + "?token=s3cret"}):
            with connect(open_timeout=5, **kwargs) as ws:
                ws.send(START)
                assert json.loads(ws.recv(timeout=5))["type"] == "ready"
        assert http(srv, "/metrics")[0] == 401
        assert http(srv, "/metrics", {"Authorization": "Bearer s3cret"})[0] == 200
        assert http(srv, "/health")[0] == 200 and http(srv, "/")[0] == 200
        # /health says only that it is alive unless authorised (issue 14, item 8)
        assert json.loads(http(srv, "/health")[2]) == {"status": "ok"}
        assert json.loads(http(srv, "/health?token=wrong")[2]) == {"status": "ok"}
        full = json.loads(http(srv, "/health", {"Authorization": "Bearer s3cret"})[2])
        assert full["model"] == "energy" and "pid" not in full and "bundle" not in full


def test_wrong_token_guesses_slowed_per_address(recognizer):
    """After max_auth_failures wrong tokens in auth_window_s an address gets 429 (even with the
    right token) until the window passes (issue 14, item 8: 8,659 guesses in 5 s were not slowed)."""
    cfg = ServerConfig(port=0, token="s3cret", max_auth_failures=3, auth_window_s=1.0)
    with ServerThread(recognizer, cfg) as srv:
        codes = [http(srv, "/metrics", {"Authorization": f"Bearer guess{i}"})[0] for i in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        status, headers, _ = http(srv, "/metrics", {"Authorization": "Bearer s3cret"})
        assert status == 429 and int(headers["Retry-After"]) >= 1
        with pytest.raises(InvalidStatus) as e:
            connect(url(srv) + "?token=s3cret", open_timeout=5)
        assert e.value.response.status_code == 429
        time.sleep(1.1)
        assert http(srv, "/metrics", {"Authorization": "Bearer s3cret"})[0] == 200
        assert 'ekd_serve_rejected_total{reason="auth_throttled"} 4.0' in \
            http(srv, "/metrics", {"Authorization": "Bearer s3cret"})[2]


def test_browser_origin_checked(recognizer):
    """A web page elsewhere cannot use a visitor's browser to stream to the server: an upgrade
    with a foreign Origin gets 403 (token or not); the server's own page and --allowed-origin pass."""
    with ServerThread(recognizer, ServerConfig(port=0, allowed_origins=("https://app.example",))) as srv:
        with pytest.raises(InvalidStatus) as e:
            connect(url(srv), origin="https://evil.example", open_timeout=5)
        assert e.value.response.status_code == 403 and b"--allowed-origin" in e.value.response.body
        for origin in (f"http://127.0.0.1:{srv.port}", "https://app.example", None):
            with connect(url(srv), origin=origin, open_timeout=5) as ws:
                ws.send(START)
                assert json.loads(ws.recv(timeout=5))["type"] == "ready"
        assert 'ekd_serve_rejected_total{reason="bad_origin"} 1.0' in http(srv, "/metrics")[2]


def test_empty_token_refused():
    with pytest.raises(ValueError, match="empty"):
        ServerConfig(token="")
    with pytest.raises(ValueError, match="empty"):
        ServerConfig(token="  ")


def test_every_refusal_reason_is_a_metric(server):
    """/metrics lists a counter for every refusal reason from the start (issue 14, item 6 of the brief)."""
    from ekd_compress.serve.metrics import ERROR_CODES, REJECT_REASONS

    body = http(server, "/metrics")[2]
    for reason in REJECT_REASONS:
        assert f'ekd_serve_rejected_total{{reason="{reason}"}}' in body, reason
    for code in ERROR_CODES + ("too_slow", "session_too_long", "too_many_configs", "bad_request"):
        assert code in body, code


def test_nosniff_on_every_http_answer(server):
    for path in ("/", "/app.js", "/health", "/metrics", "/stats", "/nope"):
        assert http(server, path)[1]["X-Content-Type-Options"] == "nosniff", path


def test_connections_per_address_capped(recognizer):
    with ServerThread(recognizer, ServerConfig(port=0, max_per_address=2)) as srv:
        with connect(url(srv), open_timeout=5), connect(url(srv, "/"), open_timeout=5):
            with pytest.raises(InvalidStatus) as e:
                connect(url(srv), open_timeout=5)
            resp = e.value.response
            assert resp.status_code == 429 and b"max-per-address" in resp.body and resp.headers["Retry-After"]
        deadline = time.time() + 5
        while srv.server.per_address and time.time() < deadline:
            time.sleep(0.02)
        with connect(url(srv), open_timeout=5) as c:  # slots free again
            c.send(START)
            assert json.loads(c.recv(timeout=5))["type"] == "ready"
        assert 'ekd_serve_rejected_total{reason="per_address"} 1.0' in http(srv, "/metrics")[2]


def test_session_length_capped_with_final_result(recognizer):
    """A session cannot hold a slot forever: at max_session_s it gets the final result of its
    audio so far, then session_too_long (1008) (issue 14, item 7)."""
    with ServerThread(recognizer, ServerConfig(port=0, max_session_s=1.0, min_bytes_per_s=0)) as srv:
        with connect(url(srv), open_timeout=5) as ws:
            ws.send(START)
            ws.recv(timeout=5)
            ws.send(to_pcm16(np.concatenate([silence(0.3), tone(0.5), silence(0.2)])))
            msgs = recv_all(ws, timeout=5)
        assert ws.protocol.close_code == 1008
        assert [(m["text"], m["reason"]) for m in msgs if m["type"] == "final"] == [("a", "session_too_long")]
        assert msgs[-1]["error"] == "session_too_long"


def test_minimum_data_rate(recognizer):
    """2 bytes now and then no longer keep a slot: under min_bytes_per_s over a rate window the
    connection is closed with too_slow (1008) (issue 14, item 7)."""
    cfg = ServerConfig(port=0, min_bytes_per_s=1000, rate_window_s=0.5, idle_timeout_s=20)
    with ServerThread(recognizer, cfg) as srv:
        t0 = time.time()
        with connect(url(srv), open_timeout=5) as ws:
            ws.send(START)
            ws.recv(timeout=5)
            msgs = []
            with contextlib.suppress(ConnectionClosed):
                for _ in range(40):  # at most 4 s
                    ws.send(b"\x00\x00")
                    time.sleep(0.1)
            msgs = recv_all(ws, timeout=5)
        assert msgs[-1]["error"] == "too_slow" and ws.protocol.close_code == 1008, msgs
        assert time.time() - t0 < 3
        # a real-time client is not affected
        assert native_session(srv, to_pcm16(AUDIO), piece=3200)[-1]["type"] == "final"


# ----------------------------------------------------------------------------- shutdown
def test_drain_gives_every_open_stream_its_final_result(recognizer):
    """Graceful shutdown: each open stream (native and Vosk) gets the final result of its audio
    so far, then close 1001; new connections are refused (issue 14, item 6)."""
    pcm = to_pcm16(np.concatenate([silence(0.3), tone(0.5), silence(0.2)]))
    stack = contextlib.ExitStack()
    srv = ServerThread(recognizer, ServerConfig(port=0, idle_timeout_s=20, drain_grace_s=10)).start()
    clients = []
    try:
        for path in ("/ws", "/ws", "/"):
            ws = stack.enter_context(connect(url(srv, path), open_timeout=5))
            if path == "/ws":
                ws.send(START)
                assert json.loads(ws.recv(timeout=5))["type"] == "ready"
            ws.send(pcm)
            assert json.loads(ws.recv(timeout=5))  # a partial: the audio is in
            clients.append((path, ws))
        t0 = time.time()
        drainer = threading.Thread(target=srv.drain, daemon=True)
        drainer.start()
        for path, ws in clients:
            msgs = recv_all(ws)
            assert ws.protocol.close_code == 1001, (path, msgs)
            if path == "/ws":
                assert [(m["text"], m["reason"]) for m in msgs if m["type"] == "final"] == [("a", "shutdown")], msgs
            else:
                assert msgs[-1]["text"] == "a" and msgs[-1]["result"], msgs
        drainer.join(15)
        assert not drainer.is_alive() and time.time() - t0 < 10
        with pytest.raises(OSError):  # not listening any more
            connect(url(srv), open_timeout=2)
    finally:
        stack.close()
        srv.stop()


def test_drain_grace_over_closes_the_rest(recognizer):
    """A stream that cannot finish within the grace period is closed (1001) when it runs out."""
    srv = ServerThread(recognizer, ServerConfig(port=0, idle_timeout_s=20, drain_grace_s=0.5)).start()
    try:
        with connect(url(srv), open_timeout=5) as ws:
            ws.send(START)
            ws.recv(timeout=5)
            next(iter(srv.server.sessions)).drain = lambda: None  # a session that ignores the drain request
            t0 = time.time()
            srv.drain()
            assert time.time() - t0 < 5
            recv_all(ws, timeout=5)
        assert ws.protocol.close_code == 1001
    finally:
        srv.stop()


# ----------------------------------------------------------------------------- batching
def test_scheduler_batches_streams(recognizer):
    async def go():
        metrics = Metrics("energy", "cpu")
        sched = BatchScheduler(recognizer, max_batch=8, max_wait_ms=50, metrics=metrics)
        sched.start()
        streams = []
        for i in range(3):
            s = recognizer.create_stream(16000, endpoint=EndpointConfig(enabled=False))
            s.accept_waveform(np.concatenate([silence(0.1 * i), tone(0.6)]))
            streams.append(s)
        counts = await asyncio.gather(*(sched.decode(s) for s in streams))
        await sched.stop()
        return metrics, counts, streams

    metrics, counts, streams = asyncio.run(go())
    assert counts == [1, 2, 2] and all(s.ready_chunks == 0 for s in streams)  # 60, 70 and 80 frames
    sizes = {s.labels.get("le"): s.value for s in metrics.batch.collect()[0].samples if s.name.endswith("_bucket")}
    assert (sizes["1.0"], sizes["2.0"], sizes["4.0"]) == (0, 1, 2)  # a batch of 3 streams, then one of 2
    stats = metrics.stats()
    assert stats["chunks"] == 5 and stats["batch_mean"] == pytest.approx((3 * 3 + 2 * 2) / 5)


def test_stats_share_a_calls_time_among_its_chunks():
    metrics = Metrics("energy", "cpu")
    metrics.observe_batch(4, 0.004)  # one call of 4 ms for 4 streams
    metrics.observe_batch(1, 0.002)  # one of 2 ms for one stream
    stats = metrics.stats()
    assert stats["chunks"] == 5 and stats["next"] == 5
    assert stats["chunk_ms"]["p50"] == pytest.approx(4.0) and stats["chunk_ms"]["mean"] == pytest.approx(3.6)
    assert stats["per_chunk_ms"]["p50"] == pytest.approx(1.0) and stats["per_chunk_ms"]["mean"] == pytest.approx(1.2)
    assert stats["batch_mean"] == pytest.approx(17 / 5)
    later = metrics.stats(since=4)  # only the single-stream call
    assert later["chunks"] == 1 and later["per_chunk_ms"]["p50"] == pytest.approx(2.0) and later["batch_mean"] == 1
    empty = metrics.stats(since=5)
    assert empty["chunks"] == 0 and empty["per_chunk_ms"]["p50"] is None and empty["batch_mean"] is None


def test_concurrent_streams(server):
    results, errors = [], []

    def client(i):
        try:
            rate = (8000, 16000, 22050)[i % 3]
            x = np.concatenate([silence(0.2 + 0.1 * i, rate), tone(0.5, 0.3, rate), silence(1.2, rate), tone(0.4, 0.3, rate)])
            msgs = native_session(server, to_pcm16(x), rate=rate, piece=rate // 5 * 2)
            results.append([m["text"] for m in msgs if m["type"] == "final"])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and results == [["a", "a"]] * 5


def test_event_loop_choice(monkeypatch):
    """auto: uvloop where it is installed, else asyncio's own loop; asking for a missing uvloop or
    an unknown loop is an error that says what to do."""
    import asyncio
    import importlib.util
    import sys

    from ekd_compress.serve.server import loop_runner

    assert loop_runner("asyncio") == ("asyncio", asyncio.run)
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        assert loop_runner("auto") == ("uvloop", uvloop.run) == loop_runner("uvloop")
    for bad in (lambda: ServerConfig(event_loop="tokio"), lambda: loop_runner("tokio")):
        with pytest.raises(ValueError, match="event_loop='tokio': use one of auto, asyncio, uvloop"):
            bad()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: importing it raises ImportError
    assert loop_runner("auto") == ("asyncio", asyncio.run)
    with pytest.raises(RuntimeError, match="pip install uvloop"):
        loop_runner("uvloop")


def test_cli_event_loop_choices_are_the_servers():
    """`serve --event-loop` lists its choices itself (the CLI does not import the server at start-up):
    they must be the ones the server accepts, in the same order."""
    from ekd_compress.cli.serve_cmd import serve
    from ekd_compress.serve.server import EVENT_LOOPS

    option = next(p for p in serve.params if p.name == "event_loop")
    assert tuple(option.type.choices) == EVENT_LOOPS
