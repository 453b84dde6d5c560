"""`ekd-compress serve` and `ekd-compress bench`: thin click wrappers over serve/ (torch-free;
bench's optional MLflow logging is `ekd_compress.tracking.bench`).

Register with `cli.add_command(serve)` and `cli.add_command(bench)`.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ekd_compress.cli.errors import UserError, friendly
from ekd_compress.cli.extras import needs


_bundle_arg = click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))


@click.command()
@_bundle_arg
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", default=2700, show_default=True, type=int, help="TCP port (0: any free port).")
@click.option("--max-connections", default=64, show_default=True, type=int,
              help="Concurrent streams; more get HTTP 503 with a hint.")
@click.option("--max-batch", default=16, show_default=True, type=int, help="Streams decoded per model call.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=float,
              help="Wait after the first ready chunk for more streams to batch.")
@click.option("--max-message-kb", default=1024, show_default=True, type=int,
              help="Largest accepted message; larger ones are refused while they arrive (close 1009).")
@click.option("--max-queue", default=2, show_default=True, type=int,
              help="Incoming frames buffered per connection before reading pauses.")
@click.option("--max-configs", default=8, show_default=True, type=int,
              help="Vosk config messages allowed per connection.")
@click.option("--drain-grace", default=8.0, show_default=True, type=float,
              help="On SIGTERM/Ctrl-C: seconds open streams get to receive their final results before "
                   "the server exits (keep it under Docker's stop timeout, 10 s by default).")
@click.option("--idle-timeout", default=30.0, show_default=True, type=float, help="Close clients silent this long (s).")
@click.option("--max-session", default=3600.0, show_default=True, type=float,
              help="Longest session (s), 0: unlimited; the stream gets its final result, then close 1008.")
@click.option("--min-data-rate", default=1000.0, show_default=True, type=float,
              help="Bytes/s a client must send over each 10 s (real-time 16 kHz audio is 32,000), 0: none.")
@click.option("--max-per-address", default=16, show_default=True, type=int,
              help="Open connections per client address (HTTP 429 beyond), 0: unlimited (e.g. behind a proxy).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Require 'Authorization: Bearer TOKEN' or ?token=TOKEN, TOKEN read from this file "
                   "(else from env EKD_SERVE_TOKEN; neither: no authentication).")
@click.option("--allowed-origin", "allowed_origins", multiple=True, metavar="ORIGIN",
              help="Let browser pages from ORIGIN (e.g. https://app.example.com) open websockets; repeatable, "
                   "'*' for any. The server's own page is always allowed.")
@click.option("--max-auth-failures", default=10, show_default=True, type=int,
              help="Wrong tokens per client address per minute before it gets HTTP 429, 0: no limit.")
@click.option("--token", default=None,
              help="Deprecated: the token on the command line shows in the process list; use --token-file.")
@click.option("--int8", is_flag=True, help="Serve the bundle's INT8 model (model.int8.onnx).")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="onnxruntime execution provider.")
@click.option("--threads", default=1, show_default=True, type=int, help="onnxruntime intra-op threads.")
@click.option("--event-loop", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto", show_default=True,
              help="The server's event loop; auto: uvloop where it is installed (less CPU per stream), else asyncio's.")
@click.option("--decoder", type=click.Choice(["greedy", "beam"]), default="greedy", show_default=True)
@click.option("--beam", default=8, show_default=True, type=int, help="Beam size for --decoder beam.")
@click.option("--lm", "lm_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Token-level KenLM model (ARPA/binary); implies --decoder beam (needs flashlight-text).")
@click.option("--lm-weight", default=0.5, show_default=True, type=float)
@click.option("--trailing-silence", default=0.8, show_default=True, type=float,
              help="Endpoint after this much trailing blank following speech (s).")
@click.option("--max-utterance", default=20.0, show_default=True, type=float, help="Endpoint at this length (s).")
@needs("serve")
def serve(bundle: Path, host: str, port: int, max_connections: int, max_batch: int, max_wait_ms: float,
          max_message_kb: int, max_queue: int, max_configs: int, drain_grace: float, idle_timeout: float,
          max_session: float, min_data_rate: float, max_per_address: int, token_file: Path | None,
          allowed_origins: tuple[str, ...], max_auth_failures: int, token: str | None, int8: bool, provider: str,
          threads: int, event_loop: str, decoder: str, beam: int, lm_path: str | None, lm_weight: float,
          trailing_silence: float, max_utterance: float) -> None:
    """Serve BUNDLE over websockets: native protocol at /ws, Vosk-compatible at /, browser page
    at http://HOST:PORT/, /health and /metrics."""
    import logging

    from ekd_compress.serve.runtime import EndpointConfig
    from ekd_compress.serve.server import ServerConfig, resolve_token, run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if lm_path:
        decoder = "beam"
    cfg = friendly(ServerConfig, host=host, port=port, max_connections=max_connections, max_batch=max_batch,
                    max_wait_ms=max_wait_ms, max_message_bytes=max_message_kb * 1024, max_queue=max_queue,
                    max_configs=max_configs, drain_grace_s=drain_grace, idle_timeout_s=idle_timeout,
                    max_session_s=max_session, min_bytes_per_s=min_data_rate, max_per_address=max_per_address,
                    token=friendly(resolve_token, token, token_file), max_auth_failures=max_auth_failures,
                    allowed_origins=allowed_origins, event_loop=event_loop,
                    endpoint=EndpointConfig(trailing_silence_s=trailing_silence, max_utterance_s=max_utterance))

    def ready(server) -> None:
        click.echo(f"serving {server.rec.bundle.name}: page http://{host}:{server.port}/  "
                   f"native ws://{host}:{server.port}/ws  Vosk ws://{host}:{server.port}/  (Ctrl-C stops)", err=True)

    friendly(run_server, bundle, cfg, provider=provider, threads=threads, use_int8=int8, decoder=decoder, beam=beam,
              lm_path=lm_path, lm_weight=lm_weight, on_ready=ready)


@click.command()
@_bundle_arg
@click.option("--vs", "other", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
              help="Another bundle (e.g. the ensemble) measured the same way in the same run (repeatable); "
                   "ratios are against the ensemble bundle, else the first.")
@click.option("--streams", default=4, show_default=True, type=int, help="Concurrent streams in the latency run.")
@click.option("--audio", "audio_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Directory of .wav/.flac files (default: synthetic speech-like clips).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--realtime/--fast", default=True, show_default=True,
              help="Latency run at real-time pace, or as fast as possible.")
@click.option("--seconds", default=4.0, show_default=True, type=float, help="Audio per stream in the latency run.")
@click.option("--ramp/--no-ramp", default=True, show_default=True, help="Find the most real-time streams held.")
@click.option("--ramp-seconds", default=3.0, show_default=True, type=float, help="Audio per stream per ramp step.")
@click.option("--max-streams", default=None, type=click.IntRange(min=1),
              help="Ramp ceiling [default: none: the ramp goes on until real time breaks].")
@click.option("--ramp-refine", default=2, show_default=True, type=click.IntRange(min=0),
              help="Bisection steps between the last level held and the first that broke.")
@click.option("--matmul-seconds", default=1.0, show_default=True, type=click.FloatRange(min=0.01),
              help="CPU seconds per matrix shape for the machine's single-thread matmul rate (the RTF floor).")
@click.option("--rtf-seconds", default=10.0, show_default=True, type=float, help="Audio sent for the RTF.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1),
              help="Measure the RTF and the runtime RTF this many times and keep the best pass (all are reported).")
@click.option("--max-batch", default=16, show_default=True, type=int)
@click.option("--max-wait-ms", default=5.0, show_default=True, type=float)
@click.option("--threads", default=1, show_default=True, type=int, help="onnxruntime intra-op threads.")
@click.option("--int8", is_flag=True, help="Benchmark the INT8 models.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@click.option("--url", default=None, help="Use a running server (ws://HOST:PORT) instead of starting one.")
@click.option("--token", envvar="EKD_SERVE_TOKEN", default=None, help="Bearer token of the server at --url.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw latency bars and the capacity ramp into this PNG.")
@click.option("--out", "out_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the full report (ramp included) as JSON here.")
@click.option("--mlflow/--no-mlflow", default=False, show_default=True,
              help="Also log the numbers to MLflow (MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current "
                   "directory); not for a soak. Off by default: bench writes only the files it is told to.")
@click.option("--soak-streams", type=int, default=None,
              help="Soak instead: hold this many real-time streams (a connection per utterance) for "
                   "--soak-seconds; report errors, agreement with offline decoding, latency, server RSS.")
@click.option("--soak-seconds", type=float, default=None, help="Length of the soak (s) [default: 60].")
@click.option("--soak-drain-seconds", type=float, default=10.0, show_default=True,
              help="After the soak, utterances in flight get their length plus this long to finish.")
@needs("serve", preload=())  # --url measures a server elsewhere
def bench(bundle: Path, other: tuple[Path, ...], streams: int, audio_dir: Path | None, as_json: bool, realtime: bool,
          seconds: float, ramp: bool, ramp_seconds: float, max_streams: int | None, ramp_refine: int, matmul_seconds: float,
          rtf_seconds: float, repeats: int, max_batch: int,
          max_wait_ms: float, threads: int, int8: bool, provider: str, url: str | None, token: str | None,
          plot_path: Path | None, out_json: Path | None, mlflow: bool, soak_streams: int | None, soak_seconds: float | None,
          soak_drain_seconds: float) -> None:
    """Stream audio through the server for BUNDLE (and each --vs OTHER_BUNDLE): chunk compute,
    first-partial and final latency (p50/p95/p99), RTF (wall and server CPU time), real-time streams
    held (ramped until real time breaks), memory, FLOPs per audio second and the RTF floor they set on
    this machine (its single-thread matmul rate, measured in the same run), and ratios to the ensemble.
    With --soak-streams N: a soak of N streams for --soak-seconds instead (serve/soak.py)."""
    if soak_streams is not None or soak_seconds is not None:
        if soak_streams is None:
            raise UserError("--soak-seconds needs --soak-streams N (the number of concurrent streams)")
        if url or other:
            raise UserError("a soak starts its own server on BUNDLE (to read its memory); drop --url and --vs")
        _soak(bundle, soak_streams, 60.0 if soak_seconds is None else soak_seconds, soak_drain_seconds, audio_dir,
              as_json, out_json, max_batch=max_batch, max_wait_ms=max_wait_ms, threads=threads, int8=int8,
              provider=provider, token=token)
        return
    from ekd_compress.serve.bench import BenchConfig, bench_bundles
    from ekd_compress.serve.bench_report import JSON_KEYS, model_labels, plot, table

    if url and other:
        raise UserError("--url measures one running server; drop --vs or --url")
    cfg = BenchConfig(streams=streams, seconds=seconds, realtime=realtime, ramp=ramp, ramp_seconds=ramp_seconds,
                      max_streams=max_streams, ramp_refine=ramp_refine, matmul_seconds=matmul_seconds, rtf_seconds=rtf_seconds, repeats=repeats, max_batch=max_batch, max_wait_ms=max_wait_ms,
                      threads=threads, int8=int8, provider=provider, token=token)
    log = (lambda m: click.echo(m, err=True))
    report = friendly(bench_bundles, [bundle, *other], cfg, audio_dir=audio_dir, url=url, log=log)
    if out_json:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(report, indent=2))
    plot_file = plot(report, plot_path) if plot_path else None
    if mlflow:
        from ekd_compress.tracking.bench import log_bench_report

        log_bench_report(report, model_labels(report), plot_file, log)
    if as_json:
        click.echo(json.dumps({"models": [{k: m[k] for k in JSON_KEYS} for m in report["models"]],
                               "ratios": report["ratios"], "machine": report["machine"]}))
        return
    click.echo(table(report))
    if plot_file:
        click.echo(f"plot: {plot_file}")


def _soak(bundle: Path, streams: int, seconds: float, drain_s: float, audio_dir: Path | None, as_json: bool,
          out_json: Path | None, **server: object) -> None:
    from ekd_compress.serve.bench import BenchConfig
    from ekd_compress.serve.soak import soak_bundle, table

    report = friendly(soak_bundle, bundle, streams, seconds, BenchConfig(**server), audio_dir=audio_dir,
                       drain_s=drain_s, log=lambda m: click.echo(m, err=True))
    if out_json:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(report, indent=2))
    click.echo(json.dumps(report) if as_json else table(report))
