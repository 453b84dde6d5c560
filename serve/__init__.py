"""Torch-free serving of exported bundles (onnxruntime, numpy, kaldi-native-fbank, websockets).

    serve.runtime   Bundle.load, Recognizer (onnxruntime session, batched decode), Stream,
                    EndpointConfig, Segment: features -> chunks -> model state -> CTC -> endpoints
    serve.decode    incremental CTC decoders: greedy, prefix beam search, KenLM (flashlight-text)
    serve.resample  streaming windowed-sinc resampler (numpy)
    serve.server    websocket server: native protocol (/ws), Vosk-compatible (/), page, /health, /metrics
    serve.bench     latency / RTF / capacity benchmark through the server
    serve.bench_report  its table and plot
    serve/static/   the browser page (microphone -> 16 kHz PCM -> /ws -> live text)

Nothing here imports torch (tests/serve checks it in a subprocess).
"""
