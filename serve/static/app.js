// Microphone or an uploaded file -> int16 PCM at the model's sample rate -> WebSocket (native protocol,
// /ws) -> live partial/final text, with the model's facts, a level meter and latency readouts.
"use strict";
(function () {
  const SEND_MS = 100; // send audio every 100 ms
  const FILE_PACE = 4; // an uploaded file is streamed at 4x real time
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const state = { ws: null, ctx: null, media: null, node: null, pending: [], pendingLen: 0, resampler: null,
                  rate: 16000, tAudio: null, tEnd: null, busy: false };
  // inspected by tests
  window.ekd = { finals: [], partial: "", samplesSent: 0, errors: [], status: "idle", level: 0, levelMax: 0,
                 firstPartialMs: null, finalMs: null, copied: null, info: null, source: null };

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

  function showLevel(f32) {
    let sum = 0;
    for (let i = 0; i < f32.length; i++) sum += f32[i] * f32[i];
    const rms = f32.length ? Math.sqrt(sum / f32.length) : 0;
    const v = Math.min(1, rms * 4); // speech at -20 dBFS reads about 0.4
    $("level").value = v; window.ekd.level = v; window.ekd.levelMax = Math.max(window.ekd.levelMax, v);
  }

  function fmtMs(ms) { return ms == null ? "–" : Math.round(ms) + " ms"; }
  function showLatency() {
    $("latency").textContent = "first partial: " + fmtMs(window.ekd.firstPartialMs) + " · final: " + fmtMs(window.ekd.finalMs);
  }

  function onAudio(f32) {
    showLevel(f32);
    const down = state.resampler(f32);
    state.pending.push(down); state.pendingLen += down.length;
    if (state.pendingLen >= state.rate * SEND_MS / 1000) flush();
  }

  function flush() {
    if (!state.pendingLen) return;
    const all = new Float32Array(state.pendingLen);
    let o = 0;
    for (const p of state.pending) { all.set(p, o); o += p.length; }
    state.pending = []; state.pendingLen = 0;
    send(all);
  }

  function send(f32) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      if (state.tAudio === null) state.tAudio = performance.now();
      state.ws.send(toInt16(f32).buffer);
      window.ekd.samplesSent += f32.length;
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
    if (msg.type === "ready") setStatus("listening (" + msg.chunk_ms + " ms chunks"
      + (msg.lookahead_ms ? " + " + msg.lookahead_ms + " ms lookahead" : "") + ", " + msg.model_sample_rate / 1000 + " kHz)");
    else if (msg.type === "partial") {
      if (window.ekd.firstPartialMs === null && state.tAudio !== null) {
        window.ekd.firstPartialMs = performance.now() - state.tAudio; showLatency();
      }
      window.ekd.partial = msg.text; render();
    } else if (msg.type === "final") {
      if (msg.text) window.ekd.finals.push(msg.text);
      if (msg.reason === "end" && state.tEnd !== null) { window.ekd.finalMs = performance.now() - state.tEnd; showLatency(); }
      window.ekd.partial = ""; render();
    } else if (msg.type === "error") {
      window.ekd.errors.push(msg.error); setStatus("error: " + msg.message);
    }
  }

  function setBusy(busy) {
    state.busy = busy;
    $("start").disabled = busy; $("file").disabled = busy; $("stop").disabled = !busy;
  }

  async function openSocket(source) {
    const info = await loadInfo();
    state.rate = (info && info.sample_rate) || 16000;
    state.tAudio = null; state.tEnd = null;
    window.ekd.firstPartialMs = null; window.ekd.finalMs = null; window.ekd.source = source; showLatency();
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(proto + "//" + location.host + "/ws" + (token ? "?token=" + encodeURIComponent(token) : ""));
    state.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onmessage = onMessage;
    ws.onclose = (e) => {
      if (e.code === 1000) setStatus("done: " + window.ekd.finals.length + " final result(s) so far; ready for more");
      else if (!window.ekd.errors.length) setStatus("connection closed (" + e.code + (e.reason ? ": " + e.reason : "") + ")");
      stopAudio(); setBusy(false); $("level").value = 0;
    };
    ws.onerror = () => setStatus("websocket error");
    await new Promise((ok, fail) => { ws.onopen = ok; setTimeout(() => fail(new Error("connect timeout")), 5000); });
    ws.send(JSON.stringify({ type: "start", sample_rate: state.rate }));
  }

  async function start() {
    setBusy(true);
    try {
      setStatus("asking for the microphone…");
      state.media = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      await openSocket("microphone");
      state.ctx = new (window.AudioContext || window.webkitAudioContext)();
      state.resampler = makeResampler(state.ctx.sampleRate, state.rate);
      const src = state.ctx.createMediaStreamSource(state.media);
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
    } catch (err) {
      window.ekd.errors.push(String(err));
      setStatus("could not start: " + err.message + (location.protocol !== "https:" && location.hostname !== "localhost"
        && location.hostname !== "127.0.0.1" ? " (browsers need https for the microphone)" : ""));
      stopAudio(); setBusy(false);
    }
  }

  function sendEnd() {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.tEnd = performance.now();
      state.ws.send(JSON.stringify({ type: "end" }));
    }
  }

  async function uploadFile(file) {
    if (!file || state.busy) return;
    setBusy(true);
    try {
      setStatus("decoding " + file.name + "…");
      const decoder = new (window.AudioContext || window.webkitAudioContext)();
      const audio = await decoder.decodeAudioData(await file.arrayBuffer());
      decoder.close();
      await openSocket("file");
      setStatus("streaming " + file.name + " (" + audio.duration.toFixed(1) + " s)");
      const x = makeResampler(audio.sampleRate, state.rate)(audio.getChannelData(0));
      const step = Math.round(state.rate * SEND_MS / 1000);
      for (let i = 0; i < x.length && state.busy; i += step) {
        const piece = x.subarray(i, Math.min(x.length, i + step));
        showLevel(piece); send(piece);
        await new Promise((ok) => setTimeout(ok, SEND_MS / FILE_PACE));
      }
      sendEnd();
    } catch (err) {
      window.ekd.errors.push(String(err));
      setStatus("could not read " + file.name + ": " + err.message + " (use wav, flac, ogg or mp3)");
      setBusy(false);
    }
    $("file").value = "";
  }

  function stopAudio() {
    if (state.node) { state.node.disconnect(); state.node = null; }
    if (state.media) { state.media.getTracks().forEach((t) => t.stop()); state.media = null; }
    if (state.ctx) { state.ctx.close(); state.ctx = null; }
  }

  function stop() {
    if (state.resampler && state.media) flush();
    sendEnd();
    stopAudio();
    state.busy = false; // an upload in progress stops sending
  }

  async function copyText() {
    const text = window.ekd.finals.concat(window.ekd.partial ? [window.ekd.partial] : []).join("\n");
    try { await navigator.clipboard.writeText(text); } catch (e) {
      const area = document.createElement("textarea");
      area.value = text; document.body.appendChild(area); area.select();
      try { document.execCommand("copy"); } catch (e2) { /* nothing more to try */ }
      area.remove();
    }
    window.ekd.copied = text;
    setStatus("copied " + text.length + " characters");
  }

  function clearText() {
    window.ekd.finals = []; window.ekd.partial = ""; window.ekd.firstPartialMs = null; window.ekd.finalMs = null;
    render(); showLatency(); setStatus(state.busy ? window.ekd.status : "cleared");
  }

  let infoPromise = null;
  function loadInfo() {  // /health shows the model only to a client with the token (when one is set)
    if (!infoPromise) {
      infoPromise = fetch("health" + (token ? "?token=" + encodeURIComponent(token) : "")).then((r) => r.json()).then((h) => {
        if (!h.model) { $("model").textContent = "(details need the token: add ?token=… to the address)"; return null; }
        window.ekd.info = h;
        $("model").textContent = h.model + " (" + h.provider + (h.int8 ? ", int8" : "") + ", " + h.chunk_ms + " ms chunks"
          + (h.lookahead_ms ? " + " + h.lookahead_ms + " ms lookahead" : "")
          + (h.dev_wer != null ? ", dev WER " + h.dev_wer + " %" : "") + ")"
          + (h.output === "phones" ? "; a phone model: the text is ARPAbet phones (e.g. HH AH L OW), not words" : "");
        $("rate").textContent = (h.sample_rate / 1000) + " kHz (audio is resampled to it before sending)";
        $("language").textContent = h.language || "not recorded in the bundle";
        const v = h.vocabulary || [];
        $("vocab").textContent = v.length + (h.token_kind === "bpe" ? " word pieces: " : h.token_kind === "phone" ? " phones: " : " characters: ") + v.join(" ");
        return h;
      }).catch(() => null);
    }
    return infoPromise;
  }

  $("start").onclick = start;
  $("stop").onclick = stop;
  $("file").onchange = (e) => uploadFile(e.target.files[0]);
  $("copy").onclick = copyText;
  $("clear").onclick = clearText;
  loadInfo();
  if (params.get("autostart") === "1") start();
})();
