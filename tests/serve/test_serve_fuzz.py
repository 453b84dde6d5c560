"""Protocol fuzz test against a live server on loopback (hypothesis, bounded in count and time):
random JSON, random text, random binary frame sizes in random orders on both websocket
endpoints. The server must answer every message it answers with JSON, close only with a
documented code (never 1011 "internal"), log no traceback, stay up, and a good stream beside
the fuzzing must still decode correctly (issue 14)."""
from __future__ import annotations

import contextlib
import json
import logging
import time

import numpy as np
import pytest
from serve_helpers import silence, to_pcm16, tone

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from ekd_compress.serve.metrics import ERROR_CODES  # noqa: E402
from ekd_compress.serve.runtime import Recognizer  # noqa: E402
from ekd_compress.serve.server import ServerConfig, ServerThread  # noqa: E402

LIMIT = 16_000  # message limit of the fuzzed server (bytes)
DOCUMENTED_CLOSES = {1000, 1007, 1008, 1009, 1013}
AUDIO = np.concatenate([silence(0.3), tone(0.5), silence(1.2), tone(0.4), silence(0.3)])  # "a" . "a"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
rates = st.sampled_from([8000, 16000, 22050, 44100, 0, -1, 7999, 10**7]) | st.integers() | st.floats()
protocol_json = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["start", "end", "dance"])},
                          optional={"sample_rate": rates, "endpointing": json_values}),
    st.fixed_dictionaries({"config": st.fixed_dictionaries({}, optional={"sample_rate": rates}) | json_values}),
    st.just({"eof": 1}),
    json_values,
).map(json.dumps)
raw_text = st.one_of(st.text(max_size=40), st.sampled_from(
    ["NaN", '{"sample_rate": Infinity}', '{"type": "start", "sample_rate": 1e400}', "[" * 2000, "{" * 50, '"']))
frames = st.integers(min_value=0, max_value=LIMIT + 100).map(lambda n: bytes(n % 251 for n in range(n)))
messages = st.lists(st.one_of(protocol_json, raw_text, frames), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def fuzz_server(energy_bundle):
    cfg = ServerConfig(port=0, max_connections=8, max_message_bytes=LIMIT, idle_timeout_s=1.5, max_per_address=0)
    with ServerThread(Recognizer(energy_bundle), cfg) as srv:
        yield srv


def _exchange(port: int, path: str, msgs: list) -> tuple[list, int | None]:
    """Send msgs (stop at a close), then read replies for a short while; (replies, close code)."""
    replies = []
    with connect(f"ws://127.0.0.1:{port}{path}", open_timeout=5, max_size=None) as ws:
        try:
            for m in msgs:
                ws.send(m)
                with contextlib.suppress(TimeoutError):  # collect replies; stop sending once closed
                    replies.append(ws.recv(timeout=0.05))
            deadline = time.time() + 1.0
            while time.time() < deadline:
                try:
                    replies.append(ws.recv(timeout=0.15))
                except TimeoutError:
                    break
        except ConnectionClosed:
            pass
        code = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd is not None else None
    return replies, code


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(path=st.sampled_from(["/ws", "/"]), msgs=messages)
def test_fuzz_protocols(fuzz_server, path, msgs, caplog):
    with caplog.at_level(logging.INFO, logger="serve"):
        replies, code = _exchange(fuzz_server.port, path, msgs)
    for r in replies:
        assert isinstance(r, str), "the server sends text (JSON) only"
        obj = json.loads(r)
        if path == "/ws" and obj.get("type") == "error":
            assert obj["error"] in ERROR_CODES and obj["error"] != "internal", obj
        if path == "/" and "error" in obj:
            assert obj["code"] in ERROR_CODES and obj["code"] != "internal", obj
    assert code is None or code in DOCUMENTED_CLOSES, (code, msgs[:3])
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_server_up_and_decoding_after_fuzz(fuzz_server):
    """Runs after the fuzzing (file order): the server is up and a good stream decodes right."""
    pcm = to_pcm16(AUDIO)
    with connect(f"ws://127.0.0.1:{fuzz_server.port}/ws", open_timeout=5) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
        assert json.loads(ws.recv(timeout=5))["type"] == "ready"
        for i in range(0, len(pcm), 3200):
            ws.send(pcm[i:i + 3200])
        ws.send(json.dumps({"type": "end"}))
        msgs = []
        try:
            while True:
                msgs.append(json.loads(ws.recv(timeout=10)))
        except ConnectionClosed:
            pass
    assert [m["text"] for m in msgs if m["type"] == "final"] == ["a", "a"]
    assert ws.protocol.close_code == 1000
