"""Export: a trained model (or the fused ensemble) -> a deployable, verified bundle.

    ekd-compress export EXPDIR [--model student] [--int8] [--trt]      (export.api.export_bundle)
    python -m export.bench_latency BUNDLE_OR_EXP                       (per-chunk latency)

Modules: onnx_export (streaming ONNX with explicit state), verify (onnxruntime vs PyTorch),
quantize (INT8 + its WER cost), tensorrt_build (model.plan), bundle (bundle.json schema,
standard library only), ort_stream (the onnxruntime chunk loop, numpy only), api.
Importing this package imports nothing heavy.
"""
