"""Torch-free streaming recognizer for an exported bundle (onnxruntime, numpy, kaldi-native-fbank).

    bundle = Bundle.load("exp/bundle")                 # validates bundle.json and the files
    rec = Recognizer(bundle, provider="cpu", threads=1)  # or "cuda" / "tensorrt"; use_int8=True
    s = rec.create_stream()
    s.accept_waveform(samples, sample_rate=8000)       # float32 in [-1, 1]; resampled to the model rate
    while s.ready_chunks:                              # or rec.decode_batch([s1, s2, ...]): one chunk
        s.decode_chunk()                               #   of each stream in one batched model call
    print(s.result())                                  # partial text of the current segment
    for seg in s.pop_segments(): ...                   # segments closed by endpoint rules
    last = s.finalize()                                # flush the padded last chunk, close the segment

    rec.recognize(samples, sample_rate)                # whole file, one pass -> list of segments

Pipeline per stream: resampler -> kaldi-native-fbank online fbank (the bundle's FeatureSpec, the
same code as training) -> frames buffered into chunks of `chunk_frames` -> ONNX model with the
stream's state tensors -> log-probs (chunk_frames / subsampling frames per chunk) -> incremental
CTC decoder -> endpoint rules -> segments with word timings.

The last chunk of an utterance is zero-padded to `chunk_frames`, and only the output frames
of real input (n_real // subsampling) are kept, so a stream yields exactly the frames of an
offline pass over the same audio, and the same transcript.

Batching: state tensors have one batch axis "B" (not always the first: RNN states are
(layers, B, hidden)); `decode_batch` concatenates the streams' states along it, runs one model
call, and splits the new states back. Models exported with a fixed batch of 1 are run one stream
at a time.

Endpointing (Kaldi / sherpa style, on the argmax path, output frames of
subsampling x frame_shift seconds), checked after every chunk:
  rule 1: trailing blank >= no_speech_silence_s and nothing decoded in the segment (drops silence)
  rule 2: trailing blank >= trailing_silence_s after some speech (end of an utterance)
  rule 3: segment length >= max_utterance_s
A segment closed by a rule is queued (`pop_segments`); the model state carries on, the decoder
starts a new segment.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ekd_compress.contract.features import OnlineFeatures
from ekd_compress.contract.bundle import Bundle, BundleError, StateInfo  # noqa: F401 (re-exported)
from ekd_compress.serve.decode import CTCDecoder, TokenHit, Word, load_kenlm, make_decoder, words_from_hits  # noqa: F401
from ekd_compress.serve.endpoint import EndpointConfig, Segment
from ekd_compress.serve.resample import Resampler

__all__ = ["PROVIDERS", "Bundle", "BundleError", "EndpointConfig", "Recognizer", "Segment",
           "StateInfo", "Stream"]

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


# ============================================================================ recognizer
class Recognizer:
    """One onnxruntime session for a bundle, shared by any number of `Stream`s (thread-safe runs).

    Args:
        bundle: a `Bundle` or its directory.
        provider: "cpu", "cuda" (CUDAExecutionProvider) or "tensorrt" (TensorrtExecutionProvider,
            building engines from model.onnx, cached under $TMPDIR/ekd-trt-cache; falls back to CUDA
            then CPU per node). The bundle's raw TensorRT engine (model.plan) is not run here.
        threads: onnxruntime intra-op threads (1 suits many concurrent streams).
        use_int8: run model.int8.onnx (the bundle must have one).
        decoder: "greedy" or "beam"; beam / lm_path / lm_weight for beam search (lm_path: KenLM).
        endpoint: default endpoint rules of new streams.
    """

    def __init__(self, bundle: Bundle | str | Path, provider: str = "cpu", threads: int = 1, use_int8: bool = False,
                 decoder: str = "greedy", beam: int = 8, lm_path: str | Path | None = None, lm_weight: float = 0.5,
                 endpoint: EndpointConfig | None = None) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        if provider not in PROVIDERS:
            raise ValueError(f"provider {provider!r} is unknown; use one of {sorted(PROVIDERS)}")
        if decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder {decoder!r} is unknown; use 'greedy' or 'beam'")
        model_path = self.bundle.file("int8") if use_int8 else self.bundle.file("onnx")
        if model_path is None:
            raise BundleError(f"{self.bundle.path} has no INT8 model (files.int8 is null); "
                              "export with --int8 or serve without --int8")
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = PROVIDERS[provider]
        if wanted[0] not in available:
            hint = {"cuda": "pip install onnxruntime-gpu (and a CUDA runtime)",
                    "tensorrt": "pip install onnxruntime-gpu and tensorrt"}.get(provider, "")
            raise RuntimeError(f"provider {provider!r} needs {wanted[0]}, which this onnxruntime lacks "
                               f"(available: {available}); {hint}, or use --provider cpu")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self.provider = provider
        self.threads = threads
        self.use_int8 = use_int8
        self.model_path = model_path
        providers: list = [p for p in wanted if p in available]
        if provider == "tensorrt":  # cache built engines: building takes minutes
            import hashlib
            import tempfile

            key = hashlib.sha256(str(Path(model_path).resolve()).encode()).hexdigest()[:12]
            cache = Path(tempfile.gettempdir()) / "ekd-trt-cache" / key
            cache.mkdir(parents=True, exist_ok=True)
            providers[0] = ("TensorrtExecutionProvider",
                            {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache)})
        self.session = ort.InferenceSession(str(model_path), opts, providers=providers)
        running = self.session.get_providers()
        if running[0] != wanted[0]:  # onnxruntime-gpu lists CUDA even where it cannot start it, then runs on CPU
            raise RuntimeError(f"provider {provider!r} was asked for, but onnxruntime could not start {wanted[0]} "
                               f"(it would run on {running}): no usable GPU, CUDA or TensorRT libraries here; "
                               "check nvidia-smi and the CUDA/cuDNN versions onnxruntime-gpu needs, or use --provider cpu")
        self._check_io()
        self.decoder_kind, self.beam, self.lm_path, self.lm_weight = decoder, beam, lm_path, lm_weight
        self.endpoint = endpoint or EndpointConfig()
        self._lm = None
        if lm_path is not None:  # load once (fails now, not on the first stream), shared by all streams
            if decoder != "beam":
                raise ValueError("a language model (lm_path) needs decoder='beam'")
            self._lm = load_kenlm(self.bundle.tokens.tokens, lm_path)
        self.chunks_decoded = 0
        self._lock = threading.Lock()

    def _check_io(self) -> None:
        b = self.bundle
        names = [i.name for i in self.session.get_inputs()]
        want = ["chunk", *[s.name for s in b.states]]
        if sorted(names) != sorted(want):
            raise BundleError(f"{self.model_path} has inputs {names} but bundle.json describes {want}; re-export the bundle")
        outs = [o.name for o in self.session.get_outputs()]
        self.output_names = ["log_probs", *[f"{s.name}_out" for s in b.states]]
        missing = [n for n in self.output_names if n not in outs]
        if missing:
            raise BundleError(f"{self.model_path} lacks outputs {missing} (has {outs}); re-export the bundle")
        batch_dim = self.session.get_inputs()[names.index("chunk")].shape[0]
        self.max_batch = 1 if batch_dim == 1 else None  # None: dynamic batch axis
        self._batch_axes = [s.batch_axis for s in b.states]

    def new_decoder(self) -> CTCDecoder:
        return make_decoder(self.decoder_kind, self.bundle.tokens.tokens, blank=self.bundle.blank_id, beam=self.beam,
                            lm_weight=self.lm_weight, lm=self._lm)

    def create_stream(self, sample_rate: int | None = None, endpoint: EndpointConfig | None = None) -> "Stream":
        return Stream(self, sample_rate=sample_rate, endpoint=endpoint or self.endpoint)

    # ------------------------------------------------------------------ model calls
    def run(self, chunk: np.ndarray, states: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """chunk (B, window_frames, F) float32 + states -> log_probs (B, out_per_chunk, V), new states."""
        feeds = {"chunk": chunk, **{s.name: v for s, v in zip(self.bundle.states, states)}}
        log_probs, *new_states = self.session.run(self.output_names, feeds)
        return log_probs, new_states

    def decode_batch(self, streams: Sequence["Stream"]) -> int:
        """Decode one ready chunk of each stream that has one, in one model call (or one per
        stream for fixed-batch models). Returns the number of chunks decoded."""
        ready = [s for s in streams if s.ready_chunks > 0]
        if not ready:
            return 0
        if self.max_batch == 1 and len(ready) > 1:
            return sum(self.decode_batch([s]) for s in ready)
        taken = [s._peek_chunk() for s in ready]  # (window, n_real) per stream
        chunk = np.stack([c for c, _ in taken])  # (B, window_frames, F)
        if len(ready) == 1:  # one stream (offline recognition, a quiet server): its states as they are
            log_probs, new_states = self.run(chunk, ready[0]._states)
            ready[0]._states = new_states
        else:
            states = [np.concatenate([s._states[i] for s in ready], axis=axis) for i, axis in enumerate(self._batch_axes)]
            log_probs, new_states = self.run(chunk, states)
            for b, stream in enumerate(ready):  # views of the batch's outputs: the next call copies them anyway
                stream._states = [ns[(slice(None),) * axis + (slice(b, b + 1),)]
                                  for ns, axis in zip(new_states, self._batch_axes)]
        for b, (stream, (_, n_real)) in enumerate(zip(ready, taken)):
            stream._after_chunk(log_probs[b], n_real)
        with self._lock:
            self.chunks_decoded += len(ready)
        return len(ready)

    def recognize(self, samples: np.ndarray, sample_rate: int | None = None,
                  endpoint: EndpointConfig | None = None) -> list[Segment]:
        """Offline: the whole signal in one pass (features at once, then every chunk) -> segments."""
        s = self.create_stream(sample_rate, endpoint=endpoint or EndpointConfig(enabled=False))
        s.accept_waveform(samples, sample_rate)
        last = s.finalize()
        return [*s.pop_segments(), *([last] if last is not None else [])]


class Stream:
    """One audio stream: resampler, online fbank, chunk buffer, model state, decoder, endpoints.

    Not thread-safe by itself: one owner at a time (the server hands a stream to the decoding
    thread and waits for it).
    """

    def __init__(self, recognizer: Recognizer, sample_rate: int | None = None,
                 endpoint: EndpointConfig | None = None) -> None:
        self.rec = recognizer
        b = recognizer.bundle
        self.bundle = b
        self.sample_rate = int(sample_rate or b.sample_rate)
        self.endpoint = endpoint or recognizer.endpoint
        self._resampler = Resampler(self.sample_rate, b.sample_rate)
        self._feats = OnlineFeatures(b.features)
        self._buf = np.zeros((0, b.features.num_mel_bins), dtype=np.float32)  # frames not yet consumed
        self._states = [s.zeros(1) for s in b.states]
        self._decoder = recognizer.new_decoder()
        self._finished = False
        self._frames_out = 0  # output frames decoded so far (absolute index of the next one)
        self._seg_start = 0  # output frame where the current segment began
        self._trailing_blank = 0  # output frames of blank argmax since the last non-blank
        self._segments: list[Segment] = []
        self.samples_in = 0  # at the client's rate
        self.created = time.monotonic()

    # ------------------------------------------------------------------ input
    def accept_waveform(self, samples: np.ndarray, sample_rate: int | None = None) -> None:
        """samples: (N,) float in [-1, 1] at `sample_rate` (default: the stream's rate)."""
        if self._finished:
            raise RuntimeError("this stream is finalized; create a new stream for more audio")
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            if self.samples_in:
                raise ValueError(f"sample rate changed from {self.sample_rate} to {sample_rate} mid-stream")
            self.sample_rate = int(sample_rate)
            self._resampler = Resampler(self.sample_rate, self.bundle.sample_rate)
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples_in += x.shape[0]
        y = self._resampler.accept(x)
        if y.size:
            self._feats.accept(y)
            self._pull_frames()

    def input_finished(self) -> None:
        """No more audio: flush the resampler and fbank; the remainder becomes a padded last chunk."""
        if self._finished:
            return
        tail = self._resampler.flush()
        if tail.size:
            self._feats.accept(tail)
        self._feats.finish()
        self._pull_frames()
        self._finished = True

    def _pull_frames(self) -> None:
        frames = self._feats.pop()
        if frames.shape[0]:
            self._buf = np.concatenate([self._buf, frames])

    @property
    def ready_chunks(self) -> int:
        b = self.bundle
        n = self._buf.shape[0]
        full = 0 if n < b.window_frames else (n - b.window_frames) // b.chunk_frames + 1
        if self._finished and n > full * b.chunk_frames:
            full += 1  # the zero-padded remainder
        return full

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def seconds(self) -> float:
        """Audio decoded so far, seconds."""
        return self._frames_out * self.bundle.frame_seconds

    def _peek_chunk(self) -> tuple[np.ndarray, int]:
        """The next window (window_frames, F), zero-padded at the end, and its real frame count.
        The frames are consumed by `_after_chunk`, once the model call succeeded."""
        b = self.bundle
        window = self._buf[: b.window_frames]
        n_real = min(window.shape[0], b.chunk_frames)
        if window.shape[0] < b.window_frames:
            window = np.concatenate([window, np.zeros((b.window_frames - window.shape[0], window.shape[1]), np.float32)])
        return window, n_real

    # ------------------------------------------------------------------ decoding
    def decode_chunk(self) -> bool:
        """Decode this stream's next ready chunk alone; False when none is ready. (Servers batch
        many streams with `Recognizer.decode_batch` instead.)"""
        return self.rec.decode_batch([self]) > 0

    def _after_chunk(self, log_probs: np.ndarray, n_real: int) -> None:
        """log_probs (out_per_chunk, V) of one chunk holding n_real real input frames."""
        b = self.bundle
        self._buf = self._buf[b.chunk_frames:]
        keep = n_real // b.subsampling if n_real < b.chunk_frames else b.output_frames_per_chunk
        lp = log_probs[:keep]
        if not keep:
            return
        self._decoder.accept(lp, self._frames_out)
        spoken = np.flatnonzero(lp.argmax(axis=-1) != b.blank_id)  # frames whose best token is not blank
        self._trailing_blank = keep - 1 - int(spoken[-1]) if spoken.size else self._trailing_blank + keep
        self._frames_out += keep
        self._check_endpoint()

    def _check_endpoint(self) -> None:
        ep = self.endpoint
        if not ep.enabled:
            return
        fs = self.bundle.frame_seconds
        silence = self._trailing_blank * fs
        length = (self._frames_out - self._seg_start) * fs
        has_speech = bool(self._decoder.hypothesis())
        if has_speech and silence >= ep.trailing_silence_s:
            self._close_segment("trailing_silence")
        elif not has_speech and silence >= ep.no_speech_silence_s:
            self._close_segment("no_speech")
        elif length >= ep.max_utterance_s:
            self._close_segment("max_length")

    def _segment(self, reason: str) -> Segment:
        b = self.bundle
        hits: list[TokenHit] = self._decoder.hypothesis()
        ids = [h.id for h in hits]
        words = words_from_hits(hits, b.tokens.tokens, b.frame_seconds, b.tokens.kind)
        return Segment(b.tokens.decode(ids), words, self._seg_start * b.frame_seconds,
                       self._frames_out * b.frame_seconds, reason, ids)

    def _close_segment(self, reason: str) -> Segment:
        seg = self._segment(reason)
        self._segments.append(seg)
        self._decoder.reset()
        self._seg_start = self._frames_out
        self._trailing_blank = 0
        return seg

    # ------------------------------------------------------------------ results
    def result(self) -> str:
        """Partial text of the current (open) segment."""
        return self.bundle.tokens.decode(h.id for h in self._decoder.hypothesis())

    def partial(self) -> Segment:
        """The open segment as a Segment (reason "partial"), words included."""
        return self._segment("partial")

    def pop_segments(self) -> list[Segment]:
        """Segments closed by endpoint rules since the last call."""
        out, self._segments = self._segments, []
        return out

    def is_endpoint(self) -> bool:
        return bool(self._segments)

    def finalize(self) -> Segment | None:
        """End of input: decode every remaining chunk (the last one padded) and close the open
        segment. Returns it, or None when nothing was decoded since the last endpoint."""
        self.input_finished()
        while self.decode_chunk():
            pass
        return self.close()

    def close(self) -> Segment | None:
        """Close the open segment (reason "end") after `input_finished` and decoding."""
        if self._frames_out == self._seg_start and not self._decoder.hypothesis():
            return None
        seg = self._segment("end")
        self._decoder.reset()
        self._seg_start = self._frames_out
        return seg
