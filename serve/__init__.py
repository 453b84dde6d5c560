"""Torch-free serving of exported bundles (onnxruntime, numpy, kaldi-native-fbank, websockets).

The bundle format, the CTC decoders and the token and feature definitions it serves with are
the runtime contract, `ekd_compress.contract` (shared with export and evaluation).

Recognition:
    ekd_compress.serve.runtime       Bundle.load, Recognizer (onnxruntime session, batched decode), Stream:
                        features -> chunks -> model state -> CTC -> endpoints
    ekd_compress.serve.decode        the decoders the server picks from (greedy, prefix beam, KenLM through
                        flashlight-text), make_decoder, word timings
    ekd_compress.serve.endpoint      EndpointConfig and Segment: the endpoint rules and the segments they close
    ekd_compress.serve.resample      streaming windowed-sinc resampler (numpy)

Server (`ekd-compress serve`):
    ekd_compress.serve.server        websocket server: config, limits, authentication, graceful shutdown
    ekd_compress.serve.protocol      the native (/ws) and Vosk-compatible (/) protocols: messages, sessions
    ekd_compress.serve.http_routes   plain HTTP: upgrade checks, the page and static files, /health, /metrics, /stats
    ekd_compress.serve.scheduler     batching of ready chunks across streams, off the event loop
    ekd_compress.serve.metrics       Prometheus metrics, per-chunk compute times, resident memory
    serve/static/       the browser page (microphone -> 16 kHz PCM -> /ws -> live text)

Benchmarks (`ekd-compress bench`):
    ekd_compress.serve.bench         latency / RTF / capacity benchmark through the server
    ekd_compress.serve.bench_ramp    the capacity ramp: real-time streams until real time breaks
    ekd_compress.serve.bench_audio   recordings or synthetic speech-like clips to send
    ekd_compress.serve.bench_report  the report's table and plot
    ekd_compress.serve.machine       the machine's single-thread matmul rate (the RTF floor)
    ekd_compress.serve.soak          soak test: N real-time streams held for a given time

Nothing here imports torch, lightning, lhotse, mlflow or the training packages
(tests/serve checks it in a subprocess).
"""
