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

import numpy as np
import pytest
from serve_helpers import silence, tone, write_wav

from serve.runtime import Recognizer
from serve.server import ServerConfig, ServerThread

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


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium on this machine: `apt-get install -y chromium` "
                                                    "to run the browser page test")
def test_browser_page_live_text(energy_bundle, tmp_path):
    from websockets.sync.client import connect

    wav = write_wav(tmp_path / "mic.wav", np.concatenate([silence(0.4), tone(0.8, 0.3), silence(1.3)]))
    profile = tmp_path / "profile"
    with ServerThread(Recognizer(energy_bundle), ServerConfig(port=0)) as srv:
        cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
               "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
               "--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--remote-debugging-port=0",
               f"http://127.0.0.1:{srv.port}/?autostart=1"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        state = None
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.time() + 20
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.time() > deadline:
                    pytest.skip(f"Chromium did not start: {proc.stderr.read().decode()[-500:] if proc.poll() is not None else 'timeout'}")
                time.sleep(0.1)
            dport = int(port_file.read_text().split()[0])
            deadline = time.time() + 10
            page = None
            while page is None and time.time() < deadline:
                targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{dport}/json/list", timeout=5).read())
                page = next((t for t in targets if t.get("type") == "page" and str(srv.port) in t.get("url", "")), None)
                time.sleep(0.1)
            assert page is not None, "the page did not open"
            with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
                deadline = time.time() + 25
                i = 0
                while time.time() < deadline:
                    i += 1
                    state = _evaluate(ws, "JSON.stringify({ekd: window.ekd, final: document.getElementById('final')"
                                          ".textContent, status: document.getElementById('status').textContent})", i)
                    state = json.loads(state) if state else None
                    if state and (state.get("ekd") or {}).get("finals"):  # window.ekd is undefined until the app starts
                        break
                    time.sleep(0.25)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        assert state is not None and "ekd" in state, f"could not read the page state: {state}"
        assert not state["ekd"]["errors"], state
        assert state["ekd"]["samplesSent"] > 16000 * 0.5, state  # the microphone audio reached the server
        # live text on the page: each tone burst is one final ("a", or "b" when the browser's capture
        # path adds enough broadband noise to push the energy model over its "b" threshold)
        finals = state["ekd"]["finals"]
        assert finals and all(set(f) <= {"a", "b"} for f in finals) and state["final"] == "".join(finals), state
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5).read().decode()
        audio = [line for line in metrics.splitlines() if line.startswith("ekd_serve_audio_seconds_total")]
        assert audio and float(audio[0].split()[-1]) > 0.5
