"""Resumable stages keyed by the hash of what they depend on.

Each stage writes `EXP/stages/NAME.json` = {"key", "result", "seconds"} when it
completes. Re-running skips a stage whose key is unchanged; a changed key (its recipe
section or any upstream key changed) re-runs it and, through the keys, everything
downstream. A stage with a work folder keeps that folder between an interruption and
the re-run (so training resumes from `last.ckpt`) only while its key is unchanged.

Under torchrun (see ekd_compress/train/distributed.py) rank 0 runs a stage and writes
its marker while the other ranks wait for its result; a stage run with `all_ranks=True`
(training, sharded essence caching) runs on every rank and rank 0's result is kept.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from ekd_compress.atomic import write_json_atomic


class StageRunner:
    def __init__(self, exp_dir: Path, log: Callable[[str], None] = print) -> None:
        self.exp_dir = Path(exp_dir)
        self.log = log
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def marker(self, name: str) -> Path:
        return self.exp_dir / "stages" / f"{name}.json"

    def done(self, name: str, key: str) -> Optional[dict]:
        m = self.marker(name)
        if m.exists():
            data = json.loads(m.read_text())
            if data.get("key") == key:
                return data["result"]
        return None

    def run(self, name: str, key: str, fn: Callable[[], dict], work_dir: Optional[Path] = None,
            all_ranks: bool = False) -> dict:
        """Run `fn` unless stage `name` already completed with this key; returns its result.

        In a torchrun job `fn` runs on rank 0 only, or on every rank when `all_ranks`.
        """
        from ekd_compress.train.distributed import on_main

        # rank 0 decides for all: a slow rank reading the marker rank 0 has just written would
        # skip a stage the others are still running together
        cached = on_main(lambda: self.done(name, key), f"checking stage {name}")
        if cached is not None:
            self.log(f"[skip] {name} (done, key {key})")
            self.skipped.append(name)
            return cached
        if work_dir is not None:
            on_main(lambda: self._prepare_work_dir(Path(work_dir), key), f"stage {name}")
        self.log(f"[run ] {name} (key {key})")
        start = time.time()

        def finish(result: dict) -> dict:
            write_json_atomic(self.marker(name), {"key": key, "result": result, "seconds": time.time() - start})
            return result

        if all_ranks:
            own = fn()
            result = on_main(lambda: finish(own), f"stage {name}")
        else:
            result = on_main(lambda: finish(fn()), f"stage {name}")
        self.ran.append(name)
        return result

    @staticmethod
    def _prepare_work_dir(work_dir: Path, key: str) -> None:
        key_file = work_dir / ".stage_key"
        if work_dir.exists() and (not key_file.exists() or key_file.read_text() != key):
            shutil.rmtree(work_dir)  # stale outputs of a different configuration
        work_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key)
