"""The capacity ramp of `ekd_compress.serve.bench`: real-time streams until real time breaks.

Levels N = 1, 2, 4, ... concurrent real-time streams, `ramp_seconds` of audio each, until a
level is not held: a stream failed, or the p95 chunk compute (server) or the p95 final latency
(end of audio to final result) exceeded the chunk duration. There is no ceiling by default
(`max_streams=None`); a level above `max_streams` is not tried (reported as capped). After the
first level that breaks, `refine` bisection steps between the last level held and it narrow the
capacity down (e.g. 64 held, 128 not: 96, then 80 or 112).

Who broke real time? All clients run in this one process (asyncio, one core at most). When they
cannot keep up, sends go out late and replies are read late, and the latencies they measure are
theirs, not the server's. Each level records the clients' p95 send lag (how late a 100 ms message
left against its real-time schedule) and the CPU this process used per wall second; a level that
breaks with a p95 send lag above `CLIENT_LAG_MS` or a client CPU share above `CLIENT_CPU_SHARE` is
blamed on the clients (`limit = "clients"`): the server's capacity is then at least the last level
held, not measured. Otherwise `limit = "server"`.
"""
from __future__ import annotations

import asyncio
import resource
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

CLIENT_LAG_MS = 50.0  # p95 lateness of the clients' sends (half a 100 ms message) that blames the clients
CLIENT_CPU_SHARE = 0.9  # CPU seconds of this process per wall second (one event loop: one core at most)
MAX_LEVEL = 1 << 14  # file descriptors and memory bound any ramp; far above a CPU server's capacity


def raise_fd_limit(streams: int) -> None:
    """Lift this process's open-file soft limit to the hard limit when `streams` sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = streams + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard == resource.RLIM_INFINITY else min(hard, max(want, soft)),
                                                    hard))


def level_verdict(failed: int, chunk_p95: Optional[float], final_p95: Optional[float], chunk_ms: float,
                  send_lag_p95: Optional[float], client_cpu: float) -> tuple[bool, Optional[str]]:
    """(held, limit): held when nothing failed and both p95 latencies are within the chunk duration;
    limit ("clients" / "server") only for a level that is not held."""
    held = (failed == 0 and chunk_p95 is not None and chunk_p95 <= chunk_ms
            and final_p95 is not None and final_p95 <= chunk_ms)
    if held:
        return True, None
    clients = (send_lag_p95 is not None and send_lag_p95 > CLIENT_LAG_MS) or client_cpu > CLIENT_CPU_SHARE
    return False, "clients" if clients else "server"


def ramp_levels_after(held: int, broke: Optional[int], max_streams: Optional[int]) -> Optional[int]:
    """The next level to try: double while nothing broke (at most max_streams), then bisect."""
    if broke is None:
        nxt = max(1, held * 2)
        cap = min(max_streams or MAX_LEVEL, MAX_LEVEL)
        if held >= cap:
            return None
        return min(nxt, cap)
    mid = (held + broke) // 2
    return mid if held < mid < broke else None


def run_ramp(measure: Callable[[int], dict[str, Any]], chunk_ms: float, max_streams: Optional[int] = None,
             refine: int = 2, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Ramp real-time streams with `measure(n) -> {"failed", "chunk_ms_p95", "final_ms_p95",
    "send_lag_ms_p95", "client_cpu"}` (one level of n streams).

    Returns {"levels": [...], "max_realtime_streams", "capped", "limit", "note"}: capped when the
    ramp stopped at `max_streams` with every level held (the capacity is higher, not measured).
    """
    levels: list[dict[str, Any]] = []
    held, broke, limit, refined = 0, None, None, 0
    n = ramp_levels_after(0, None, max_streams)
    while n is not None:
        raise_fd_limit(n)
        m = measure(n)
        ok, why = level_verdict(m["failed"], m["chunk_ms_p95"], m["final_ms_p95"], chunk_ms,
                                m.get("send_lag_ms_p95"), m.get("client_cpu", 0.0))
        levels.append({"streams": n, **m, "held": ok, "limit": why})
        log(f"  {n} real-time streams: chunk p95 {m['chunk_ms_p95']} ms, final p95 {m['final_ms_p95']} ms, "
            f"failed {m['failed']}, client send lag p95 {m.get('send_lag_ms_p95')} ms, client CPU "
            f"{m.get('client_cpu', 0.0):.2f} -> {'held' if ok else 'NOT held (' + str(why) + ')'}")
        if ok:
            held = max(held, n)
        else:
            if broke is None or n < broke:
                broke, limit = n, why
        if broke is not None:
            if refined >= refine:
                break
            refined += 1
        n = ramp_levels_after(held, broke, max_streams)
    capped = broke is None
    if capped:
        note = (f"every level held up to the ceiling of {max_streams} streams: the capacity is higher, not measured"
                if max_streams else f"every level held up to {held} streams (the ramp's limit {MAX_LEVEL})")
    elif limit == "clients":
        note = (f"real time broke at {broke} streams because the clients (one process) could not keep up; "
                f"the server held {held} and may hold more")
    else:
        note = f"real time broke at {broke} streams on the server; {held} held"
    return {"levels": levels, "max_realtime_streams": held, "capped": capped, "limit": None if capped else limit,
            "note": note}


class ClientLoad:
    """CPU seconds this process spends per wall second between `start()` and `stop()`."""

    def __enter__(self) -> "ClientLoad":
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.share = (time.process_time() - self._cpu) / max(time.perf_counter() - self._wall, 1e-9)


def q95(values: Sequence[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return round(float(np.percentile(v, 95)), 3) if v else None


def measure_level(run_streams: Callable[..., Any], stats_since: Callable[[], int],
                  chunk_stats: Callable[[int], dict[str, Any]], n: int) -> dict[str, Any]:
    """One ramp level: `run_streams(n)` (a coroutine factory of n real-time streams) under a
    client-load meter, with the server's chunk compute over the same span."""
    since = stats_since()
    with ClientLoad() as load:
        streams = asyncio.run(run_streams(n))
    chunk = chunk_stats(since)
    return {"chunk_ms_p95": None if chunk.get("p95") is None else round(chunk["p95"], 3),
            "final_ms_p95": q95([s.final_ms for s in streams]), "failed": sum(1 for s in streams if s.error),
            "send_lag_ms_p95": q95([s.send_lag_ms for s in streams]), "client_cpu": round(load.share, 3)}
