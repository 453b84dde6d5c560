"""Torch-free serving of exported bundles (onnxruntime, numpy, kaldi-native-fbank, websockets).

The bundle format, the CTC decoders and the token and feature definitions it serves with are
the runtime contract, `ekd_compress.contract` (shared with export and evaluation).

Recognition:
    serve.runtime       Bundle.load, Recognizer (onnxruntime session, batched decode), Stream:
                        features -> chunks -> model state -> CTC -> endpoints
    serve.decode        the decoders the server picks from (greedy, prefix beam, KenLM through
                        flashlight-text), make_decoder, word timings
    serve.endpoint      EndpointConfig and Segment: the endpoint rules and the segments they close
    serve.resample      streaming windowed-sinc resampler (numpy)

Server (`ekd-compress serve`):
    serve.server        websocket server: config, limits, authentication, graceful shutdown
    serve.protocol      the native (/ws) and Vosk-compatible (/) protocols: messages, sessions
    serve.http_routes   plain HTTP: upgrade checks, the page and static files, /health, /metrics, /stats
    serve.scheduler     batching of ready chunks across streams, off the event loop
    serve.metrics       Prometheus metrics, per-chunk compute times, resident memory
    serve/static/       the browser page (microphone -> 16 kHz PCM -> /ws -> live text)

Benchmarks (`ekd-compress bench`):
    serve.bench         latency / RTF / capacity benchmark through the server
    serve.bench_ramp    the capacity ramp: real-time streams until real time breaks
    serve.bench_audio   recordings or synthetic speech-like clips to send
    serve.bench_report  the report's table and plot
    serve.machine       the machine's single-thread matmul rate (the RTF floor)
    serve.soak          soak test: N real-time streams held for a given time

Nothing here imports torch, lightning, lhotse, mlflow or the training packages
(tests/serve checks it in a subprocess).
"""
