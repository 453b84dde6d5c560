"""Files written so that a process killed at any moment leaves the old file or the new one.

Each writer fills `NAME.tmp` in the same directory, fsyncs it and renames it over `NAME`
(`os.replace` is atomic on POSIX filesystems), so readers never see half a file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable


def write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call `write(f)` on a temporary binary file, then move it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """`obj` as indented JSON (unknown types through str), atomically."""
    text = json.dumps(obj, indent=2, default=str).encode()
    write_atomic(path, lambda f: f.write(text))
