"""Export: a trained model (or the fused ensemble) -> a deployable, verified bundle.

    ekd-compress export EXPDIR [--model student] [--int8] [--trt]      (ekd_compress.export.api.export_bundle)

The bundle format itself (bundle.json schema, writer and readers) is the runtime contract's:
`ekd_compress.contract.bundle`; this package makes what it describes.

    ekd_compress.export.api             export_bundle: the steps, staging and publishing of one bundle
    ekd_compress.export.onnx_export     streaming ONNX with explicit state (torch.onnx), io_spec
    ekd_compress.export.verify          onnxruntime chunk loop vs PyTorch full forward on dev utterances
    ekd_compress.export.ort_stream      the onnxruntime chunk loop (numpy only)
    ekd_compress.export.quantize        onnxruntime INT8 (dynamic / static QDQ), its WER and latency
    ekd_compress.export.int8_gate       the gate deciding whether INT8 ships
    ekd_compress.export.tensorrt_build  TensorRT engine (model.plan), NVIDIA GPUs only
    ekd_compress.export.bench_latency   per-chunk latency, PyTorch vs ONNX fp32 vs INT8 (library: bench, format_table)

Importing this package imports nothing heavy.
"""
