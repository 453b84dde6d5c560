"""Batching scheduler of the recognition server: gathers streams with ready chunks (up to
max_batch, waiting at most max_wait_ms after the first) and runs `Recognizer.decode_batch` in one
worker thread. Re-exported by `ekd_compress.serve.server`."""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from ekd_compress.serve.metrics import Metrics
from ekd_compress.serve.runtime import Recognizer, Stream

log = logging.getLogger("serve")


class BatchScheduler:
    """Gathers streams with ready chunks and decodes them in batches in one worker thread."""

    def __init__(self, recognizer: Recognizer, max_batch: int, max_wait_ms: float, metrics: Metrics,
                 active_streams=None) -> None:
        self.rec = recognizer
        self.active_streams = active_streams  # () -> int: no point waiting for streams that do not exist
        self.max_batch = max_batch if recognizer.max_batch is None else 1
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self._pending: list[tuple[Stream, asyncio.Future, float]] = []
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ekd-decode")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ekd-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, fut, _ in self._pending:
            if not fut.done():
                fut.cancel()
        self._pool.shutdown(wait=True)

    async def decode(self, stream: Stream) -> int:
        """Decode every ready chunk of `stream` (batched with other streams); returns the count."""
        n = stream.ready_chunks
        if not n:
            return 0
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((stream, fut, time.perf_counter()))
        self._wake.set()
        await fut
        return n

    def _decode_in_thread(self, streams: list[Stream]) -> tuple[float, list[BaseException | None]]:
        t0 = time.perf_counter()
        try:
            self.rec.decode_batch(streams)
            errors: list[BaseException | None] = [None] * len(streams)
        except Exception:  # retry one by one so one bad stream cannot fail the others
            log.exception("batched decode failed; retrying streams one by one")
            errors = []
            for s in streams:
                try:
                    self.rec.decode_batch([s])
                    errors.append(None)
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
        return time.perf_counter() - t0, errors

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            deadline = self._pending[0][2] + self.max_wait
            while len(self._pending) < self.max_batch and (
                    self.active_streams is None or len(self._pending) < self.active_streams()):
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                    self._wake.clear()
                except asyncio.TimeoutError:
                    break
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            now = time.perf_counter()
            for _, _, t in batch:
                self.metrics.queue_wait.observe(now - t)
            streams = [s for s, _, _ in batch]
            seconds, errors = await loop.run_in_executor(self._pool, self._decode_in_thread, streams)
            self.metrics.observe_batch(len(streams), seconds)
            again = []
            for (s, fut, _), err in zip(batch, errors):
                if fut.done():  # the client went away
                    continue
                if err is not None:
                    fut.set_exception(err)
                elif s.ready_chunks:
                    again.append((s, fut, time.perf_counter()))
                else:
                    fut.set_result(None)
            if again:
                self._pending.extend(again)
            if self._pending:
                self._wake.set()
