"""Resumable stages keyed by the hash of what they depend on.

Each stage writes `EXP/stages/NAME.json` = {"key", "result", "seconds"} when it
completes. Re-running skips a stage whose key is unchanged; a changed key (its recipe
section or any upstream key changed) re-runs it and, through the keys, everything
downstream. A stage with a work folder keeps that folder between an interruption and
the re-run (so training resumes from `last.ckpt`) only while its key is unchanged.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


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

    def run(self, name: str, key: str, fn: Callable[[], dict], work_dir: Optional[Path] = None) -> dict:
        """Run `fn` unless stage `name` already completed with this key; returns its result."""
        cached = self.done(name, key)
        if cached is not None:
            self.log(f"[skip] {name} (done, key {key})")
            self.skipped.append(name)
            return cached
        if work_dir is not None:
            work_dir = Path(work_dir)
            key_file = work_dir / ".stage_key"
            if work_dir.exists() and (not key_file.exists() or key_file.read_text() != key):
                shutil.rmtree(work_dir)  # stale outputs of a different configuration
            work_dir.mkdir(parents=True, exist_ok=True)
            key_file.write_text(key)
        self.log(f"[run ] {name} (key {key})")
        start = time.time()
        result = fn()
        write_json_atomic(self.marker(name), {"key": key, "result": result, "seconds": time.time() - start})
        self.ran.append(name)
        return result
