"""The capacity ramp of `ekd_compress.serve.bench`: real-time streams until real time breaks.

Levels N = 1, 2, 4, ... concurrent real-time streams, `ramp_seconds` of audio each, until a
level is not held: a stream failed, or the p95 chunk compute (server) or the p95 final latency
(end of audio to final result) exceeded the chunk duration. There is no ceiling by default
(`max_streams=None`); a level above `max_streams` is not tried (reported as capped). After the
first level that breaks, `refine` bisection steps between the last level held and it narrow the
capacity down (e.g. 64 held, 128 not: 96, then 80 or 112).

Who broke real time? All clients run in this one process (asyncio, one core at most). Each level
records the clients' p95 send lag (how late a 100 ms message left against its real-time schedule),
the CPU this process used per wall second (`client_cpu`) and the share of all the machine's cores that
were busy (`machine_cpu`, Linux /proc/stat; None elsewhere). For a level that breaks:

- `limit = "clients"` when the client process was CPU-bound (`client_cpu` above `CLIENT_CPU_SHARE`):
  its sends and reads were late, so the latencies it measured are its own; the server's capacity is
  then at least the last level held, not measured;
- `limit = "machine"` when the clients' sends were late (p95 above `CLIENT_LAG_MS`) while the cores
  were all but full (`machine_cpu` at least `MACHINE_BUSY`): server and clients ran out of cores
  together, and the server may hold more where the clients have cores of their own;
- `limit = "server"` otherwise. Late sends from clients with CPU to spare do not mean the clients
  could not keep up. A server that reads slowly holds its clients back, and its threads take the
  cores the clients' event loop waits for. On CPU-2 the student's server broke this way at 512-768
  streams: its event loop thread was at 0.8 of a core, the clients at a third of a core, and the
  machine 66-75 % busy. The same streams from two client processes were no better (768 streams:
  final p95 3.0 s against 2.1 s from one).
"""
from __future__ import annotations

import asyncio
import os
import resource
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

CLIENT_LAG_MS = 50.0  # p95 lateness of the clients' sends (half a 100 ms message) that blames the clients
CLIENT_CPU_SHARE = 0.9  # CPU seconds of this process per wall second (one event loop: one core at most)
MAX_LEVEL = 1 << 14  # file descriptors and memory bound any ramp; far above a CPU server's capacity
MACHINE_BUSY = 0.9  # share of all cores busy above which lagging clients are blamed on the whole machine


def raise_fd_limit(streams: int) -> None:
    """Lift this process's open-file soft limit to the hard limit when `streams` sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = streams + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard == resource.RLIM_INFINITY else min(hard, max(want, soft)),
                                                    hard))


def level_verdict(failed: int, chunk_p95: Optional[float], final_p95: Optional[float], chunk_ms: float,
                  send_lag_p95: Optional[float], client_cpu: float,
                  machine_cpu: Optional[float] = None) -> tuple[bool, Optional[str]]:
    """(held, limit): held when nothing failed and both p95 latencies are within the chunk duration;
    limit ("clients" / "machine" / "server", the rules in the module docstring) only for a level that
    is not held."""
    held = (failed == 0 and chunk_p95 is not None and chunk_p95 <= chunk_ms
            and final_p95 is not None and final_p95 <= chunk_ms)
    if held:
        return True, None
    if client_cpu > CLIENT_CPU_SHARE:
        return False, "clients"
    lagging = send_lag_p95 is not None and send_lag_p95 > CLIENT_LAG_MS
    if lagging and machine_cpu is not None and machine_cpu >= MACHINE_BUSY:
        return False, "machine"
    return False, "server"


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
                                m.get("send_lag_ms_p95"), m.get("client_cpu", 0.0), m.get("machine_cpu"))
        levels.append({"streams": n, **m, "held": ok, "limit": why})
        log(f"  {n} real-time streams: chunk p95 {m['chunk_ms_p95']} ms, final p95 {m['final_ms_p95']} ms, "
            f"failed {m['failed']}, client send lag p95 {m.get('send_lag_ms_p95')} ms, client CPU "
            f"{m.get('client_cpu', 0.0):.2f}{_machine(m.get('machine_cpu'))} -> "
            f"{'held' if ok else 'NOT held (' + str(why) + ')'}")
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
    else:
        at = next(lv for lv in levels if lv["streams"] == broke)
        if limit == "clients":
            note = (f"real time broke at {broke} streams because the client process was CPU-bound "
                    f"({at.get('client_cpu', 0.0):.0%} of a core); the server held {held} and may hold more")
        elif limit == "machine":
            note = (f"real time broke at {broke} streams when the clients fell behind while this machine's "
                    f"{os.cpu_count()} cores were {at['machine_cpu']:.0%} busy: the clients ran out of cores (together "
                    f"with the server, when it runs here); the server held {held} and may hold more where the clients "
                    f"have cores of their own")
        else:
            note = f"real time broke at {broke} streams on the server; {held} held"
            lag = at.get("send_lag_ms_p95")
            if lag is not None and lag > CLIENT_LAG_MS:
                note += (f" (the clients' sends were {lag:.0f} ms behind at p95 while they used only "
                         f"{at.get('client_cpu', 0.0):.0%} of a core: held back by the server, not short of CPU)")
    return {"levels": levels, "max_realtime_streams": held, "capped": capped, "limit": None if capped else limit,
            "note": note}


class ClientLoad:
    """CPU seconds this process spends per wall second between `start()` and `stop()`."""

    def __enter__(self) -> "ClientLoad":
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.share = (time.process_time() - self._cpu) / max(time.perf_counter() - self._wall, 1e-9)


def _cpu_times() -> Optional[tuple[int, int]]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - fields[3] - fields[4], total


class MachineLoad:
    """Share of all the machine's cores busy between `__enter__` and `__exit__` (every process,
    servers and clients alike); `share` is None where /proc/stat is missing."""

    def __enter__(self) -> "MachineLoad":
        self._start = _cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        end = _cpu_times()
        self.share: Optional[float] = None
        if self._start is not None and end is not None and end[1] > self._start[1]:
            self.share = (end[0] - self._start[0]) / (end[1] - self._start[1])


def _machine(share: Optional[float]) -> str:
    return "" if share is None else f", machine CPU {share:.2f}"


def q95(values: Sequence[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return round(float(np.percentile(v, 95)), 3) if v else None


def measure_level(run_streams: Callable[..., Any], stats_since: Callable[[], int],
                  chunk_stats: Callable[[int], dict[str, Any]], n: int) -> dict[str, Any]:
    """One ramp level: `run_streams(n)` (a coroutine factory of n real-time streams) under a
    client-load meter, with the server's chunk compute over the same span."""
    since = stats_since()
    with ClientLoad() as load, MachineLoad() as machine:
        streams = asyncio.run(run_streams(n))
    chunk = chunk_stats(since)
    return {"chunk_ms_p95": None if chunk.get("p95") is None else round(chunk["p95"], 3),
            "final_ms_p95": q95([s.final_ms for s in streams]), "failed": sum(1 for s in streams if s.error),
            "send_lag_ms_p95": q95([s.send_lag_ms for s in streams]), "client_cpu": round(load.share, 3),
            "machine_cpu": None if machine.share is None else round(machine.share, 3)}
