"""Prometheus metrics of the recognition server, exact per-chunk compute times for /stats, and
the process's resident memory. Re-exported by `ekd_compress.serve.server`."""
from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np


# Why the HTTP side refuses a request (ekd_serve_rejected_total{reason=...}).
REJECT_REASONS = ("not_found", "unauthorized", "auth_throttled", "bad_origin", "bad_request", "busy", "per_address")
# Why a websocket is closed by the server (ekd_serve_client_errors_total{error=...}): the protocol's codes.
ERROR_CODES = ("bad_json", "bad_message", "bad_sample_rate", "not_started", "already_started", "idle_timeout",
               "too_big", "too_many_configs", "too_slow", "session_too_long", "busy", "internal")


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB."""
    try:
        status = Path("/proc/self/status").read_text()
        vals = {line.split(":")[0]: float(line.split()[1]) / 1024 for line in status.splitlines()
                if line.startswith(("VmRSS", "VmHWM"))}
        return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


class Metrics:
    """Prometheus metrics in a private registry (several servers may share a process), plus a
    bounded list of exact per-chunk compute times for /stats: each chunk's model call time, and
    that time divided by the chunks of the call (a batch of 4 streams shares one call)."""

    def __init__(self, model: str, provider: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        p = "ekd_serve_"
        self.active = Gauge(p + "connections_active", "Open websocket streams", registry=r)
        self.connections = Counter(p + "connections", "Accepted websocket connections", ["protocol"], registry=r)
        self.rejected = Counter(p + "rejected", "Refused HTTP requests and upgrades, by reason", ["reason"],
                                registry=r)
        self.errors = Counter(p + "client_errors", "Connections closed for a client error or a limit, by error code",
                              ["error"], registry=r)
        for reason in REJECT_REASONS:  # every reason shows up (at 0) before it first happens
            self.rejected.labels(reason)
        for code in ERROR_CODES:
            self.errors.labels(code)
        self.audio = Counter(p + "audio_seconds", "Audio received, seconds", registry=r)
        self.chunks = Counter(p + "chunks", "Model chunks decoded", registry=r)
        self.partials = Counter(p + "partials", "Partial results sent", registry=r)
        self.finals = Counter(p + "finals", "Final results sent", registry=r)
        self.batch = Histogram(p + "batch_size", "Streams per model call", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.compute = Histogram(p + "chunk_compute_seconds", "Model call time seen by each chunk in it",
                                 registry=r, buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .32, .5, 1, 2))
        self.queue_wait = Histogram(p + "queue_wait_seconds", "Ready chunk to model call start", registry=r,
                                    buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1))
        info = Gauge(p + "model_info", "Served model", ["model", "provider"], registry=r)
        info.labels(model=model, provider=provider).set(1)
        self._chunk_ms: deque[float] = deque(maxlen=200_000)
        self._batch_of: deque[int] = deque(maxlen=200_000)  # the size of the call each chunk was in
        self._chunk_count = 0
        self._lock = threading.Lock()

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch.observe(size)
        self.chunks.inc(size)
        with self._lock:
            for _ in range(size):
                self.compute.observe(seconds)
                self._chunk_ms.append(seconds * 1000.0)
                self._batch_of.append(size)
            self._chunk_count += size

    def stats(self, since: int = 0) -> dict[str, Any]:
        """Chunks decoded since chunk number `since`: "chunk_ms", quantiles of the model call time
        each took part in; "per_chunk_ms", of that time over the call's chunk count; "batch_mean",
        the mean chunks per call that a chunk saw; "next", the `since` of the next query."""
        with self._lock:
            total = self._chunk_count
            start = max(since - (total - len(self._chunk_ms)), 0)
            vals = np.array(list(self._chunk_ms)[start:], dtype=np.float64)
            sizes = np.array(list(self._batch_of)[start:], dtype=np.float64)

        def quantiles(x: np.ndarray) -> dict[str, float | None]:
            q = {f"p{p}": (float(np.percentile(x, p)) if x.size else None) for p in (50, 95, 99)}
            q["mean"] = float(x.mean()) if x.size else None
            return q

        return {"since": since, "next": total, "chunks": int(vals.size), "chunk_ms": quantiles(vals),
                "per_chunk_ms": quantiles(vals / sizes if sizes.size else sizes),
                "batch_mean": float(sizes.mean()) if sizes.size else None}

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
