// Microphone -> 16 kHz int16 PCM -> WebSocket (native protocol, /ws) -> live partial/final text.
"use strict";
(function () {
  const TARGET_RATE = 16000;
  const SEND_MS = 100; // send audio every 100 ms
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const state = { ws: null, ctx: null, media: null, node: null, pending: [], pendingLen: 0, sent: 0, resampler: null };
  window.ekd = { finals: [], partial: "", samplesSent: 0, errors: [], status: "idle" }; // inspected by tests

  function setStatus(text) { $("status").textContent = text; window.ekd.status = text; }

  // Streaming rate converter: Hann-windowed sinc low-pass interpolation (as serve/resample.py),
  // cutoff at 0.99 x the lower Nyquist frequency, 8 zero crossings per side. Output n sits at
  // input position n * inRate / outRate; it is computed once every input it needs has arrived.
  function makeResampler(inRate, outRate) {
    if (inRate === outRate) return (x) => x;
    const step = inRate / outRate;
    const fc = 0.99 * 0.5 * Math.min(1, outRate / inRate); // cycles per input sample
    const w = 8 / (2 * fc); // half-width in input samples
    let buf = new Float32Array(0), bufStart = 0, n = 0; // buf = inputs [bufStart, bufStart + buf.length)
    return function (input) {
      const joined = new Float32Array(buf.length + input.length);
      joined.set(buf); joined.set(input, buf.length); buf = joined;
      const end = bufStart + buf.length;
      const out = [];
      for (;;) {
        const t = n * step;
        const lo = Math.ceil(t - w), hi = Math.floor(t + w);
        if (hi >= end) break;
        let acc = 0;
        for (let k = Math.max(lo, bufStart); k <= hi; k++) { // before the stream start: zeros
          const d = t - k, x = 2 * fc * d;
          const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
          acc += buf[k - bufStart] * 2 * fc * sinc * 0.5 * (1 + Math.cos(Math.PI * d / w));
        }
        out.push(acc);
        n++;
      }
      const keepFrom = Math.ceil(n * step - w);
      if (keepFrom > bufStart) { buf = buf.slice(keepFrom - bufStart); bufStart = keepFrom; }
      return Float32Array.from(out);
    };
  }

  function toInt16(f32) {
    const out = new Int16Array(f32.length);
    for (let i = 0; i < f32.length; i++) {
      const s = Math.max(-1, Math.min(1, f32[i]));
      out[i] = s < 0 ? s * 32768 : s * 32767;
    }
    return out;
  }

  function onAudio(f32) {
    const down = state.resampler(f32);
    state.pending.push(down); state.pendingLen += down.length;
    if (state.pendingLen >= TARGET_RATE * SEND_MS / 1000) flush();
  }

  function flush() {
    if (!state.pendingLen) return;
    const all = new Float32Array(state.pendingLen);
    let o = 0;
    for (const p of state.pending) { all.set(p, o); o += p.length; }
    state.pending = []; state.pendingLen = 0;
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(toInt16(all).buffer);
      window.ekd.samplesSent += all.length;
    }
  }

  function render() {
    $("final").innerHTML = "";
    for (const t of window.ekd.finals) {
      const span = document.createElement("span");
      span.textContent = t;
      $("final").appendChild(span);
    }
    $("partial").textContent = window.ekd.partial;
  }

  function onMessage(ev) {
    const msg = JSON.parse(ev.data);
    if (msg.type === "ready") setStatus("listening (" + msg.chunk_ms + " ms chunks)");
    else if (msg.type === "partial") { window.ekd.partial = msg.text; render(); }
    else if (msg.type === "final") {
      if (msg.text) window.ekd.finals.push(msg.text);
      window.ekd.partial = ""; render();
    } else if (msg.type === "error") {
      window.ekd.errors.push(msg.error); setStatus("error: " + msg.message);
    }
  }

  async function start() {
    $("start").disabled = true;
    try {
      setStatus("asking for the microphone…");
      state.media = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      state.ctx = new (window.AudioContext || window.webkitAudioContext)();
      state.resampler = makeResampler(state.ctx.sampleRate, TARGET_RATE);
      const src = state.ctx.createMediaStreamSource(state.media);
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      const token = params.get("token");
      state.ws = new WebSocket(proto + "//" + location.host + "/ws" + (token ? "?token=" + encodeURIComponent(token) : ""));
      state.ws.binaryType = "arraybuffer";
      state.ws.onmessage = onMessage;
      state.ws.onclose = (e) => { setStatus("closed (" + e.code + (e.reason ? " " + e.reason : "") + ")"); stopAudio(); };
      state.ws.onerror = () => setStatus("websocket error");
      await new Promise((ok, fail) => { state.ws.onopen = ok; setTimeout(() => fail(new Error("connect timeout")), 5000); });
      state.ws.send(JSON.stringify({ type: "start", sample_rate: TARGET_RATE }));
      if (state.ctx.audioWorklet) {
        await state.ctx.audioWorklet.addModule("worklet.js");
        state.node = new AudioWorkletNode(state.ctx, "pcm-tap");
        state.node.port.onmessage = (e) => onAudio(e.data);
        src.connect(state.node);
        // keep the graph pulling without making sound
        const mute = state.ctx.createGain(); mute.gain.value = 0;
        state.node.connect(mute).connect(state.ctx.destination);
      } else { // older browsers
        state.node = state.ctx.createScriptProcessor(4096, 1, 1);
        state.node.onaudioprocess = (e) => onAudio(e.inputBuffer.getChannelData(0));
        src.connect(state.node); state.node.connect(state.ctx.destination);
      }
      if (state.ctx.state === "suspended") await state.ctx.resume();
      $("stop").disabled = false;
    } catch (err) {
      window.ekd.errors.push(String(err));
      setStatus("could not start: " + err.message + (location.protocol !== "https:" && location.hostname !== "localhost"
        && location.hostname !== "127.0.0.1" ? " (browsers need https for the microphone)" : ""));
      $("start").disabled = false;
    }
  }

  function stopAudio() {
    if (state.node) { state.node.disconnect(); state.node = null; }
    if (state.media) { state.media.getTracks().forEach((t) => t.stop()); state.media = null; }
    if (state.ctx) { state.ctx.close(); state.ctx = null; }
    $("start").disabled = false; $("stop").disabled = true;
  }

  function stop() {
    flush();
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify({ type: "end" }));
    stopAudio();
  }

  $("start").onclick = start;
  $("stop").onclick = stop;
  const token = params.get("token");  // /health shows the model only to a client with the token (when one is set)
  fetch("health" + (token ? "?token=" + encodeURIComponent(token) : "")).then((r) => r.json()).then((h) => {
    if (!h.model) return;
    $("model").textContent = "model: " + h.model + " (" + h.provider + (h.int8 ? ", int8" : "") + "), " + h.chunk_ms + " ms chunks"
      + (h.output === "phones" ? "; a phone model: the text is ARPAbet phones (e.g. HH AH L OW), not words" : "");
  }).catch(() => {});
  if (params.get("autostart") === "1") start();
})();
