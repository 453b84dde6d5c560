"""`ekd-compress export EXPDIR`: a thin wrapper over `ekd_compress.export.api.export_bundle`.

Registered in the CLI group with `cli.add_command(export)`. Heavy imports (torch, onnx,
onnxruntime, tensorrt) happen inside the command.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from ekd_compress.cli.errors import UserError, friendly
from ekd_compress.cli.extras import needs


@click.command("export")
@click.argument("exp_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model", default="student", show_default=True,
              help="Which model of the experiment: student, ensemble, baseline or any name in models.json.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Bundle directory (default: EXPDIR/bundles/MODEL); replaced if it exists.")
@click.option("--int8", "int8", is_flag=True,
              help="Also try INT8: model.int8.onnx is written only if it passes the gate (dev WER and speed "
                   "against fp32 on this machine); otherwise bundle.json says why fp32 was kept.")
@click.option("--int8-method", type=click.Choice(["both", "dynamic", "static"]), default="both", show_default=True,
              help="onnxruntime INT8: dynamic, static (QDQ, per-channel, calibrated on training audio), or both "
                   "(the faster one that passes).")
@click.option("--max-int8-wer-increase", type=float, default=0.3, show_default=True,
              help="Gate: INT8 may raise dev WER by at most this many absolute points.")
@click.option("--min-int8-speedup", type=float, default=1.2, show_default=True,
              help="Gate: INT8 must be at least this many times faster per chunk than fp32 (CPU time, 1 thread).")
@click.option("--require-int8", is_flag=True, help="Fail the export when INT8 does not pass the gate.")
@click.option("--trt", "trt", is_flag=True, help="Also build a TensorRT engine (model.plan); needs an NVIDIA GPU.")
@click.option("--fp16", "trt_precision", flag_value="fp16", default=True, help="TensorRT engine in FP16 (default).")
@click.option("--int8-trt", "trt_precision", flag_value="int8",
              help="TensorRT engine in INT8 (explicit Q/DQ, calibrated on dev features).")
@click.option("--verify-utterances", type=click.IntRange(min=1), default=50, show_default=True,
              help="Dev utterances on which ONNX must match PyTorch (|Δ log-prob| <= 1e-4, same transcripts).")
@needs("train")
def export(exp_dir: Path, model: str, out_dir: Optional[Path], int8: bool, int8_method: str,
           max_int8_wer_increase: float, min_int8_speedup: float, require_int8: bool, trt: bool, trt_precision: str,
           verify_utterances: int) -> None:
    """Export a model of EXP_DIR as a deployable, verified bundle: streaming ONNX with explicit
    state, tokens.txt and bundle.json; optionally INT8 (--int8) and a TensorRT engine (--trt)."""
    if trt:  # before anything else: a missing GPU is a one-line answer, not a failure after the export
        from ekd_compress.export.tensorrt_build import TrtUnavailable, check_trt_available

        try:
            check_trt_available()
        except TrtUnavailable as e:
            raise UserError(str(e)) from None
    from ekd_compress.export.api import export_bundle

    path = friendly(export_bundle, exp_dir, model=model, out_dir=out_dir, int8=int8, trt=trt,
                    trt_precision=trt_precision, max_int8_wer_increase=max_int8_wer_increase,
                    verify_utterances=verify_utterances, int8_method=int8_method, min_int8_speedup=min_int8_speedup,
                    require_int8=require_int8, log=click.echo)
    click.echo(f"bundle written: {path}")
