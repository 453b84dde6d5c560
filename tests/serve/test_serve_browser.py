"""The browser page end to end: headless Chromium, a wav file as the fake microphone, live text.

Chromium is driven over its DevTools protocol (a websocket, so no extra packages): the test
reads the page's `window.ekd` state and the transcript element until a final result appears.
Skips with the reason when no Chromium is installed (`apt-get install -y chromium`).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import silence, tone, write_wav

from ekd_compress.serve.runtime import Recognizer
from ekd_compress.serve.server import ServerConfig, ServerThread

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _evaluate(ws, expr: str, msg_id: int):
    ws.send(json.dumps({"id": msg_id, "method": "Runtime.evaluate", "params": {"expression": expr, "returnByValue": True}}))
    while True:
        reply = json.loads(ws.recv(timeout=10))
        if reply.get("id") == msg_id:
            return reply.get("result", {}).get("result", {}).get("value")


class Page:
    """One headless-Chromium tab on `url`, driven over the DevTools protocol."""

    def __init__(self, url: str, profile, wav=None) -> None:
        cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
               "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-dev-shm-usage", "--window-size=900,1000", f"--user-data-dir={profile}",
               "--remote-debugging-port=0", url]
        if wav is not None:
            cmd.insert(-1, f"--use-file-for-fake-audio-capture={wav}")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.ids = 0
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() > deadline:
                err = self.proc.stderr.read().decode()[-500:] if self.proc.poll() is not None else "timeout"
                self.close()
                pytest.skip(f"Chromium did not start: {err}")
            time.sleep(0.1)
        dport = int(port_file.read_text().split()[0])
        deadline, page = time.time() + 15, None
        while page is None and time.time() < deadline:
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{dport}/json/list", timeout=5).read())
            page = next((t for t in targets if t.get("type") == "page" and url.split("/?")[0] in t.get("url", "")), None)
            time.sleep(0.1)
        assert page is not None, "the page did not open"
        from websockets.sync.client import connect

        self._conn = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.ws = self._conn.__enter__()

    def call(self, method: str, **params):
        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=15))
            if reply.get("id") == self.ids:
                assert "error" not in reply, reply
                return reply.get("result", {})

    def js(self, expr: str):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)["result"].get("value")

    def state(self) -> dict | None:
        raw = self.js("JSON.stringify({ekd: window.ekd, final: document.getElementById('final').textContent, "
                      "status: document.getElementById('status').textContent, "
                      "latency: document.getElementById('latency').textContent, "
                      "model: document.getElementById('model').textContent, rate: document.getElementById('rate')"
                      ".textContent, vocab: document.getElementById('vocab').textContent, "
                      "language: document.getElementById('language').textContent})")
        return json.loads(raw) if raw else None

    def wait(self, cond, seconds: float = 25.0) -> dict | None:
        deadline, st = time.time() + seconds, None
        while time.time() < deadline:
            st = self.state()
            if st and st.get("ekd") and cond(st):
                return st
            time.sleep(0.25)
        return st

    def close(self) -> None:
        if getattr(self, "_conn", None) is not None:
            self._conn.__exit__(None, None, None)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="no Chromium on this machine: `apt-get install -y "
                                                                    "chromium` to run the browser page test")


@needs_chromium
def test_browser_page_live_text(energy_bundle, tmp_path):
    """Microphone (a fake one playing a wav) -> live text; the model's facts, level meter, latency readouts,
    copy, clear, then a file upload through the file input; a screenshot (EKD_PAGE_SCREENSHOT=PATH keeps it)."""
    import base64
    import os

    wav = write_wav(tmp_path / "mic.wav", np.concatenate([silence(0.4), tone(0.8, 0.3), silence(1.3)]))
    with ServerThread(Recognizer(energy_bundle), ServerConfig(port=0)) as srv:
        page = Page(f"http://127.0.0.1:{srv.port}/?autostart=1", tmp_path / "profile", wav)
        try:
            state = page.wait(lambda st: st["ekd"]["finals"])  # window.ekd is undefined until the app starts
            assert state is not None and state["ekd"]["finals"], f"no final result from the microphone: {state}"
            assert not state["ekd"]["errors"], state
            assert state["ekd"]["samplesSent"] > 16000 * 0.5, state  # the microphone audio reached the server
            # live text on the page: each tone burst is one final ("a", or "b" when the browser's capture
            # path adds enough broadband noise to push the energy model over its "b" threshold)
            finals = state["ekd"]["finals"]
            assert all(set(f) <= {"a", "b"} for f in finals) and state["final"] == "".join(finals), state
            # what the model knows, from the bundle
            assert state["model"].startswith("energy (cpu") and "16 kHz" in state["rate"], state
            assert state["vocab"].startswith("8 characters: a b c"), state
            assert state["language"] == "not recorded in the bundle"
            assert state["ekd"]["levelMax"] > 0.05, "the level meter never moved"
            assert state["ekd"]["firstPartialMs"] is not None and state["ekd"]["firstPartialMs"] > 0, state

            page.js("document.getElementById('stop').click()")
            state = page.wait(lambda st: st["ekd"]["finalMs"] is not None and st["status"].startswith("done"))
            assert state["ekd"]["finalMs"] > 0 and state["latency"].count(" ms") == 2, state
            assert "closed" not in state["status"], state

            page.js("document.getElementById('copy').click()")
            state = page.wait(lambda st: st["ekd"]["copied"] is not None, 5)
            assert state["ekd"]["copied"] == "\n".join(state["ekd"]["finals"]), state
            page.js("document.getElementById('clear').click()")
            state = page.wait(lambda st: not st["ekd"]["finals"], 5)
            assert state["final"] == "" and state["latency"] == "first partial: – · final: –", state

            upload = write_wav(tmp_path / "upload.wav", np.concatenate([silence(0.3), tone(0.8, 0.3), silence(1.0),
                                                                         tone(0.8, 0.3), silence(1.0)]))
            root = page.call("DOM.getDocument")["root"]["nodeId"]
            node = page.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
            page.call("DOM.setFileInputFiles", nodeId=node, files=[str(upload)])
            state = page.wait(lambda st: st["ekd"]["source"] == "file" and st["status"].startswith("done"), 30)
            assert state["ekd"]["source"] == "file" and not state["ekd"]["errors"], state
            assert len(state["ekd"]["finals"]) == 2 and state["ekd"]["finalMs"] is not None, state

            shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
            assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
            if os.environ.get("EKD_PAGE_SCREENSHOT"):
                Path(os.environ["EKD_PAGE_SCREENSHOT"]).write_bytes(shot)
        finally:
            page.close()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5).read().decode()
        audio = [line for line in metrics.splitlines() if line.startswith("ekd_serve_audio_seconds_total")]
        assert audio and float(audio[0].split()[-1]) > 0.5


@needs_chromium
def test_browser_page_states_an_8khz_model(energy_bundle, tmp_path):
    """An 8 kHz bundle: the page says 8 kHz (not 16) and streams at that rate."""
    import shutil as sh

    bundle = tmp_path / "b8k"
    sh.copytree(energy_bundle, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["features"]["sample_rate"] = 8000
    meta["language"] = "en"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with ServerThread(Recognizer(bundle), ServerConfig(port=0)) as srv:
        page = Page(f"http://127.0.0.1:{srv.port}/", tmp_path / "profile")
        try:
            state = page.wait(lambda st: st["ekd"]["info"] is not None, 20)
        finally:
            page.close()
    assert state["rate"].startswith("8 kHz") and "16 kHz" not in json.dumps(state), state
    assert state["language"] == "en" and state["ekd"]["info"]["sample_rate"] == 8000
