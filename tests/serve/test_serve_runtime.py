"""Runtime: bundle loading, streaming == offline, batching, resampling, endpoints, decoders, no torch."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from serve_helpers import ROOT, noise, silence, tone

from ekd_compress.contract.ctc_decode import (GreedyDecoder, PrefixBeamDecoder, TokenHit, ctc_greedy_decode,
                                              ctc_prefix_beam_search)
from ekd_compress.serve.decode import KenLMDecoder, flashlight_available, words_from_hits
from ekd_compress.serve.resample import Resampler, resample
from ekd_compress.serve.runtime import Bundle, BundleError, EndpointConfig, Recognizer


def speechish(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    """Noise bursts of varying loudness with pauses: drives the untrained GRU through many states."""
    rng = np.random.default_rng(seed)
    out = []
    while sum(map(len, out)) < seconds * sr:
        out.append(noise(rng.uniform(0.1, 0.5), rng.uniform(0.01, 0.3), sr, int(rng.integers(1 << 30))))
        out.append(silence(rng.uniform(0.05, 0.3), sr))
    return np.concatenate(out)[: int(seconds * sr)]


def stream_in_pieces(rec: Recognizer, x: np.ndarray, sr: int, seed: int = 0, endpoint=None):
    rng = np.random.default_rng(seed)
    s = rec.create_stream(sr, endpoint=endpoint)
    segs, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 6000))
        s.accept_waveform(x[i:i + n])
        i += n
        while s.ready_chunks:
            rec.decode_batch([s])
        segs += s.pop_segments()
    last = s.finalize()
    return segs + s.pop_segments() + ([last] if last else [])


# ----------------------------------------------------------------------------- bundle loading
def test_bundle_loads(gru_bundle):
    b = Bundle.load(gru_bundle)
    assert b.chunk_frames == 32 and b.subsampling == 4 and b.output_frames_per_chunk == 8
    assert [s.name for s in b.states] == ["frontend_cache", "gru_h"]
    assert b.states[1].batch_axis == 1 and b.frame_seconds == pytest.approx(0.04)


@pytest.mark.parametrize("breakage, needle", [
    ("no_dir", "does not exist"),
    ("no_json", "bundle.json is missing"),
    ("no_tokens", "tokens.txt"),
    ("no_onnx", "model.onnx"),
    ("no_key", "streaming"),
    ("bad_vocab", "vocab_size"),
    ("bad_format", "format"),
])
def test_bundle_errors_name_the_problem(gru_bundle, tmp_path, breakage, needle):
    d = tmp_path / "b"
    shutil.copytree(gru_bundle, d)
    meta = json.loads((d / "bundle.json").read_text())
    if breakage == "no_dir":
        d = tmp_path / "missing"
    elif breakage == "no_json":
        (d / "bundle.json").unlink()
    elif breakage == "no_tokens":
        (d / "tokens.txt").unlink()
    elif breakage == "no_onnx":
        (d / "model.onnx").unlink()
    else:
        if breakage == "no_key":
            del meta["streaming"]
        elif breakage == "bad_vocab":
            meta["vocab_size"] = 99
        else:
            meta["format"] = "other/2"
        (d / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=needle):
        Bundle.load(d)


def test_provider_and_int8_errors(gru_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
            Recognizer(gru_bundle, provider="cuda")
    with pytest.raises(BundleError, match="INT8"):
        Recognizer(gru_bundle, use_int8=True)
    with pytest.raises(ValueError, match="provider"):
        Recognizer(gru_bundle, provider="tpu")


# ----------------------------------------------------------------------------- streaming == offline
def _torch_greedy(bundle_dir, model, x):
    """Greedy transcript of the torch model's full-utterance forward (the export's reference)."""
    import torch

    from ekd_compress.contract.ctc_decode import ctc_greedy_decode
    from ekd_compress.contract.features import FeatureSpec, compute_fbank

    model.load_state_dict(torch.load(bundle_dir / "torch_state.pt"))
    feats = compute_fbank(x, FeatureSpec.from_dict(json.loads((bundle_dir / "bundle.json").read_text())["features"]))
    with torch.no_grad():
        lp, n = model(torch.from_numpy(feats)[None], torch.tensor([feats.shape[0]]))
    return ctc_greedy_decode(lp.numpy(), n.numpy())[0], feats.shape[0]


@pytest.mark.parametrize("which", ["gru", "ensemble", "lookahead"])
def test_streaming_equals_offline_and_torch(which, request):
    """... for a causal model, the ensemble, and a TDNN with lookahead (windows wider than the chunk)."""
    pytest.importorskip("torch")
    from serve_helpers import build_tiny, build_tiny_ensemble

    bundle = request.getfixturevalue(f"{which}_bundle")
    if which == "lookahead":
        assert Bundle.load(bundle).window_frames == 32 + 12
    rec = Recognizer(bundle)
    x = speechish(3.3, seed=1)
    offline = rec.recognize(x, 16000)
    assert len(offline) == 1
    streamed = stream_in_pieces(rec, x, 16000, endpoint=EndpointConfig(enabled=False))
    assert [s.token_ids for s in streamed] == [offline[0].token_ids]
    assert [w.to_dict() for w in streamed[0].words] == [w.to_dict() for w in offline[0].words]
    assert offline[0].text  # the untrained model still says something on this input
    # ... and both equal the torch model's full-utterance forward (greedy)
    model = {"gru": build_tiny("gru"), "lookahead": build_tiny("tdnn")}.get(which) or build_tiny_ensemble()
    ids, frames = _torch_greedy(bundle, model, x)
    assert ids == offline[0].token_ids
    assert streamed[0].end == pytest.approx(frames // 4 * 0.04)


def test_streaming_equals_offline_beam_search(gru_bundle):
    rec = Recognizer(gru_bundle, decoder="beam", beam=4)
    x = speechish(2.2, seed=5)
    offline = rec.recognize(x, 16000)
    streamed = stream_in_pieces(rec, x, 16000, seed=2, endpoint=EndpointConfig(enabled=False))
    assert [s.token_ids for s in streamed] == [offline[0].token_ids] and offline[0].token_ids


def test_streaming_with_endpoints_keeps_tokens(energy_bundle):
    rec = Recognizer(energy_bundle)
    x = np.concatenate([silence(0.3), tone(0.5), silence(1.2), noise(0.6, 0.05), silence(1.0), tone(0.4)])
    offline = rec.recognize(x, 16000)
    segs = stream_in_pieces(rec, x, 16000, seed=3)
    assert [s.reason for s in segs] == ["trailing_silence", "trailing_silence", "end"]
    assert sum((s.token_ids for s in segs), []) == offline[0].token_ids
    assert segs[0].text == "a" and segs[1].text in ("b", "ab") and segs[2].text == "a"  # "a" on a quiet onset frame
    w = segs[0].words[0]
    assert w.word == "a" and 0.28 <= w.start <= 0.4 and w.end > w.start


@pytest.mark.parametrize("which", ["gru", "ensemble"])
def test_batch_equals_single(which, request):
    rec = Recognizer(request.getfixturevalue(f"{which}_bundle"))
    xs = [speechish(d, seed=i) for i, d in enumerate((1.0, 2.3, 1.7))]
    singles = [rec.recognize(x, 16000)[0].token_ids for x in xs]
    streams = [rec.create_stream(16000, endpoint=EndpointConfig(enabled=False)) for _ in xs]
    for s, x in zip(streams, xs):
        s.accept_waveform(x)
        s.input_finished()
    while any(s.ready_chunks for s in streams):
        rec.decode_batch(streams)
    assert [s.close().token_ids for s in streams] == singles


# ----------------------------------------------------------------------------- endpoint rules
def test_endpoint_rules(energy_bundle):
    rec = Recognizer(energy_bundle)
    # rule 3: max utterance length cuts a long sound
    segs = rec.recognize(noise(2.6, 0.05), 16000, endpoint=EndpointConfig(max_utterance_s=1.0))
    assert [s.reason for s in segs[:2]] == ["max_length", "max_length"]
    assert segs[0].end - segs[0].start == pytest.approx(1.28)  # checked after each 320 ms chunk
    # rule 1: long silence without speech closes an empty segment
    segs = rec.recognize(silence(2.0), 16000, endpoint=EndpointConfig(no_speech_silence_s=1.0))
    assert segs[0].reason == "no_speech" and segs[0].text == ""
    # rule 2 needs the trailing silence: 0.5 s is not enough for 0.8 s
    segs = rec.recognize(np.concatenate([tone(0.4), silence(0.5), tone(0.4)]), 16000, endpoint=EndpointConfig())
    assert [s.reason for s in segs] == ["end"] and segs[0].text == "aa"


# ----------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampler_streaming_matches_oneshot_and_sine(rate):
    t = np.arange(rate) / rate
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = resample(x, rate, 16000)
    assert len(y) == 16000
    r, parts, i, rng = Resampler(rate, 16000), [], 0, np.random.default_rng(0)
    while i < len(x):
        n = int(rng.integers(1, 2000))
        parts.append(r.accept(x[i:i + n]))
        i += n
    assert np.array_equal(np.concatenate(parts + [r.flush()]), y)
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(y[100:-100] - ref[100:-100]).max() < 2e-3


def test_resampler_filters_built_once_per_rate_pair():
    """Every stream at one rate shares one read-only filter bank: a client sending config after
    config no longer costs 43 ms and 6.5 MB each at 95,999 Hz (issue 14, item 4)."""
    a, b = Resampler(95_999, 16_000), Resampler(95_999, 16_000)
    assert a._weights is b._weights and not a._weights.flags.writeable
    x = np.random.default_rng(0).standard_normal(9_600).astype(np.float32)
    assert np.array_equal(np.concatenate([a.accept(x), a.flush()]), resample(x, 95_999, 16_000))


def test_stream_at_8k_equals_resampled_offline(energy_bundle):
    rec = Recognizer(energy_bundle)
    x8 = np.concatenate([silence(0.3, 8000), tone(0.5, 0.3, 8000), silence(1.0, 8000)])
    via_stream = stream_in_pieces(rec, x8, 8000, endpoint=EndpointConfig(enabled=False))
    offline16 = rec.recognize(resample(x8, 8000, 16000), 16000)
    assert via_stream[0].token_ids == offline16[0].token_ids == [2]


# ----------------------------------------------------------------------------- decoders
def _random_log_probs(T: int, V: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(V, 0.3), size=T)
    return np.log(p).astype(np.float32)


def test_greedy_incremental_keeps_repeat_context():
    lp = np.full((6, 3), -10.0, np.float32)
    for t, k in enumerate([1, 1, 1, 0, 1, 2]):
        lp[t, k] = 0.0
    assert ctc_greedy_decode(lp)[0] == [1, 1, 2]
    d = GreedyDecoder()
    d.accept(lp[:2], 0)
    d.accept(lp[2:], 2)  # the 1 spanning the chunk boundary is emitted once
    assert [h.id for h in d.hypothesis()] == [1, 1, 2] and [h.frame for h in d.hypothesis()] == [0, 4, 5]


def test_prefix_beam_search_matches_reference_and_is_incremental():
    from ctc_reference import prefix_beam_search as reference

    for seed in range(5):
        lp = _random_log_probs(30, 6, seed)
        full = ctc_prefix_beam_search(lp, beam=8)
        assert full == reference(lp, beam=8)
        d = PrefixBeamDecoder(beam=8)
        for a in range(0, 30, 7):
            d.accept(lp[a:a + 7], a)
        assert [h.id for h in d.hypothesis()] == full


@pytest.mark.skipif(not flashlight_available(), reason="flashlight-text with KenLM is not installed")
def test_kenlm_decoder(tmp_path, energy_bundle):
    arpa = tmp_path / "lm.arpa"
    arpa.write_text("\\data\\\nngram 1=6\nngram 2=2\n\n\\1-grams:\n-0.5\t<s>\t-0.1\n-0.5\t</s>\n-0.3\ta\t-0.1\n"
                    "-0.6\tb\t-0.1\n-0.8\t|\t-0.1\n-1.0\t<unk>\n\n\\2-grams:\n-0.1\ta a\n-0.2\ta b\n\n\\end\\\n")
    tokens = ["<blk>", "|", "a", "b"]
    lp = _random_log_probs(20, 4, 7)
    d = KenLMDecoder(tokens, arpa, lm_weight=0.0, beam=32)
    d.accept(lp[:9], 0)
    d.accept(lp[9:], 9)
    hyp = d.hypothesis()
    one = KenLMDecoder(tokens, arpa, lm_weight=0.0, beam=32)
    one.accept(lp, 0)
    assert hyp and hyp == one.hypothesis()  # chunked == one shot
    assert all(0 <= h.frame < 20 for h in hyp)
    assert [h.id for h in hyp] == ctc_greedy_decode(lp)[0]  # LM weight 0, max (Viterbi) scoring: the best path
    # through the recognizer: one LM shared by every stream
    rec = Recognizer(energy_bundle, decoder="beam", lm_path=arpa, lm_weight=0.3)
    x = np.concatenate([silence(0.3), tone(0.5), silence(1.2), tone(0.4)])
    assert [s.text for s in stream_in_pieces(rec, x, 16000)] == ["a", "a"]
    with pytest.raises(ValueError, match="beam"):
        Recognizer(energy_bundle, lm_path=arpa)


def test_words_from_hits():
    tokens = ["<blk>", "|", "a", "b"]
    hits = [TokenHit(2, 3, 0.0), TokenHit(3, 4, np.log(0.5)), TokenHit(1, 6, 0.0), TokenHit(2, 9, 0.0)]
    words = words_from_hits(hits, tokens, 0.04)
    assert [(w.word, round(w.start, 2), round(w.end, 2), round(w.conf, 2)) for w in words] == [
        ("ab", 0.12, 0.2, 0.75), ("a", 0.36, 0.4, 1.0)]


# ----------------------------------------------------------------------------- torch-free
def test_serve_imports_without_torch():
    """Every serve module and the runtime contract import without torch, lightning, lhotse, mlflow
    or a training package of ekd_compress, not even indirectly."""
    code = ("import importlib, pkgutil, sys, serve, ekd_compress.contract as c; "
            "[importlib.import_module(m.name) for p in (serve, c) for m in pkgutil.iter_modules(p.__path__, p.__name__ + '.')]; "
            "training = ('train', 'models', 'pipeline', 'data', 'features', 'losses', 'ensemble', 'tracking'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'lhotse', 'mlflow') "
            "or (m.startswith('ekd_compress.') and m.split('.')[1] in training)]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_provider_listed_but_unusable_is_an_error_not_a_silent_cpu_fallback(gru_bundle, monkeypatch):
    """onnxruntime-gpu on a host without a GPU lists CUDAExecutionProvider, then runs on CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: the fallback cannot be staged by listing it")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="could not start CUDAExecutionProvider"):
        Recognizer(gru_bundle, provider="cuda")
