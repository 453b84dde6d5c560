"""`ekd-compress bench BUNDLE --soak-streams N --soak-seconds S` (serve/soak.py): a short soak on the
energy bundle, whose transcripts are predictable, and the soak options' errors."""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from click.testing import CliRunner
from serve_helpers import noise, silence, tone, write_wav

from ekd_compress.cli.serve_cmd import bench
from ekd_compress.serve.soak import hold_streams

FIELDS = {"bundle", "streams", "seconds", "drain_s", "wall_s", "connection", "chunk_ms", "utterances", "completed",
          "errors", "errors_by_kind", "agreed", "agreement", "mismatches", "first_partial_ms_p50",
          "first_partial_ms_p95", "first_partial_ms_p99", "final_ms_p50", "final_ms_p95", "final_ms_p99",
          "rss_mib_start", "rss_mib_middle", "rss_mib_end", "rss_mib_peak", "audio", "clips", "offline", "config",
          "machine"}


def test_soak_two_streams_three_seconds(energy_bundle, tmp_path):
    """2 streams for 3 s of ~1 s utterances: several utterances each, no errors, every streamed
    transcript equal to offline decoding (which is not empty), ordered latency percentiles, the
    server's RSS at start, middle and end, and a bounded run time; --json and --out agree."""
    audio = tmp_path / "audio"
    audio.mkdir()
    write_wav(audio / "a.wav", np.concatenate([tone(0.6), silence(0.3)]))
    write_wav(audio / "b.wav", np.concatenate([noise(0.5), silence(0.2), tone(0.4)]))
    write_wav(audio / "c.wav", np.concatenate([silence(0.3), tone(0.5), silence(0.2)]))
    out = tmp_path / "soak.json"
    t0 = time.monotonic()
    r = CliRunner().invoke(bench, [str(energy_bundle), "--soak-streams", "2", "--soak-seconds", "3",
                                   "--soak-drain-seconds", "5", "--audio", str(audio), "--json", "--out", str(out),
                                   "--no-mlflow"], catch_exceptions=False)
    elapsed = time.monotonic() - t0
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report == json.loads(out.read_text()), "--json and --out must hold the same report"
    assert set(report) == FIELDS, set(report) ^ FIELDS
    assert report["streams"] == 2 and report["seconds"] == 3 and report["connection"] == "per_utterance"
    assert report["errors"] == 0 and report["errors_by_kind"] == {}, report
    assert report["completed"] == report["utterances"] >= 4, report  # ~1 s clips, 2 streams, 3 s
    assert all(report["offline"]) and len(report["offline"]) == 3, report["offline"]
    assert report["agreement"] == 1.0 and report["mismatches"] == [], report["mismatches"]
    assert report["agreed"] == report["completed"], report
    for kind in ("first_partial_ms", "final_ms"):
        p50, p95, p99 = (report[f"{kind}_p{p}"] for p in (50, 95, 99))
        assert 0 < p50 <= p95 <= p99, (kind, p50, p95, p99)
    rss = [report[f"rss_mib_{w}"] for w in ("start", "middle", "end")]
    assert all(isinstance(v, float) and v > 10 for v in rss), rss
    assert report["rss_mib_peak"] >= max(rss)
    assert 3 <= report["wall_s"] <= 3 + 1.1 + 5, report["wall_s"]  # seconds + longest clip + drain
    assert elapsed < 60, f"the soak command took {elapsed:.1f} s"


@pytest.mark.parametrize("args, message", [
    (["--soak-streams", "2", "--soak-seconds", "0"], "--soak-seconds must be > 0 (got 0.0)"),
    (["--soak-streams", "0", "--soak-seconds", "1"], "--soak-streams must be >= 1 (got 0)"),
    (["--soak-seconds", "1"], "--soak-seconds needs --soak-streams N"),
    (["--soak-streams", "1", "--url", "ws://127.0.0.1:1"], "drop --url and --vs"),
])
def test_soak_option_errors_name_the_value_and_the_fix(energy_bundle, args, message):
    r = CliRunner().invoke(bench, [str(energy_bundle), *args, "--no-mlflow"])
    assert r.exit_code == 1 and message in r.output, r.output


def test_soak_stops_at_the_drain_bound_when_the_server_never_answers():
    """A server that accepts and then stays silent: each stream's one utterance is cancelled at
    seconds + longest clip + drain and counted; the soak returns by itself."""
    from websockets.asyncio.server import serve

    async def silent(ws) -> None:
        await ws.wait_closed()  # never answers

    async def main():
        async with serve(silent, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            t0 = time.monotonic()
            out = await hold_streams(f"ws://127.0.0.1:{port}", [(tone(0.2), 16000)], 2, 0.5, 0.32, 0.5,
                                     at_middle=lambda: "middle")
            return out, time.monotonic() - t0

    (results, cancelled, middle), elapsed = asyncio.run(main())
    assert results == [] and cancelled == 2 and middle == "middle"
    assert 1.2 <= elapsed < 3.0, f"returned after {elapsed:.2f} s; the bound is 0.5 + 0.2 + 0.5 s"
