"""A phone model behind the websocket server: transcripts are phone strings, one word entry per
phone, and /health says so. The loudness graph of `make_energy_bundle` with a phone table:
a 440 Hz tone emits token 2 (HH), white noise token 3 (IY)."""
from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from serve_helpers import make_energy_bundle, noise, silence, to_pcm16, tone, write_tokens
from websockets.sync.client import connect

from ekd_compress.serve.runtime import Recognizer
from ekd_compress.serve.server import ServerConfig, ServerThread

PHONES = ["<blk>", "AA", "HH", "IY", "K", "L", "OW", "S", "T", "Z"]  # as many tokens as the graph's outputs


@pytest.fixture(scope="module")
def phone_bundle(tmp_path_factory):
    out = make_energy_bundle(tmp_path_factory.mktemp("phone_bundle"))
    write_tokens(out / "tokens.txt", PHONES)
    (out / "lexicon.txt").write_text("HE HH IY\nZOO Z OW\nALSO AA L S OW\nKIT K IY T\n")
    meta = json.loads((out / "bundle.json").read_text())
    meta["token_kind"] = "phone"
    meta["files"]["lexicon"] = "lexicon.txt"
    (out / "bundle.json").write_text(json.dumps(meta))
    return out


def test_server_transcript_of_a_phone_model(phone_bundle):
    rec = Recognizer(phone_bundle)
    assert rec.bundle.tokens.kind == "phone"
    audio = np.concatenate([silence(0.3), tone(0.5), noise(0.4, 0.1), silence(0.4)])
    segs = rec.recognize(audio, 16000)
    assert [s.text for s in segs] == ["HH IY"]
    with ServerThread(rec, ServerConfig(port=0)) as srv:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/health", timeout=5) as r:
            assert json.loads(r.read())["output"] == "phones"
        pcm = to_pcm16(audio)
        with connect(f"ws://127.0.0.1:{srv.port}/ws", open_timeout=5) as ws:
            ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            assert json.loads(ws.recv(timeout=5))["type"] == "ready"
            for i in range(0, len(pcm), 3200):
                ws.send(pcm[i:i + 3200])
            ws.send(json.dumps({"type": "end"}))
            msgs = []
            while True:
                msgs.append(json.loads(ws.recv(timeout=10)))
                if msgs[-1]["type"] == "final" and msgs[-1]["reason"] == "end":
                    break
    finals = [m for m in msgs if m["type"] == "final" and m["text"]]
    assert [f["text"] for f in finals] == ["HH IY"]
    words = finals[0]["words"]
    assert [w["word"] for w in words] == ["HH", "IY"]  # one entry per phone, in time order
    assert 0.28 <= words[0]["start"] < words[0]["end"] <= words[1]["start"] < words[1]["end"] <= 1.3
