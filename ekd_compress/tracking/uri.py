"""Tracking URIs: where runs are stored, and a fast check that the store is usable.

`resolve_tracking_uri` picks the URI ($MLFLOW_TRACKING_URI wins, else a sqlite file made
absolute); `check_tracking_uri` fails within seconds when an http(s) server is down or a
local store is not writable -- at start-up, not after an hour of training. Standard
library only.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ENV_URI = "MLFLOW_TRACKING_URI"
DEFAULT_URI = "sqlite:///mlflow.db"
CHECK_TIMEOUT_S = 3.0


class TrackingError(RuntimeError):
    """The tracking backend is unusable (unreachable, unwritable, or a run conflicts)."""


def resolve_tracking_uri(default: str = DEFAULT_URI, base_dir: Path | None = None) -> str:
    """The tracking URI to use: `$MLFLOW_TRACKING_URI` if set, else `default`.

    A relative sqlite path or plain/`file:` path in `default` is made absolute against
    `base_dir` (or the current directory), so runs land in one store wherever the
    command is started. The environment value is returned unchanged.
    """
    env = os.environ.get(ENV_URI, "").strip()
    if env:
        return env
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if default.startswith("sqlite:///"):
        path = default[len("sqlite:///"):]
        if path and path != ":memory:" and not Path(path).is_absolute():
            return "sqlite:///" + str((base / path).resolve())
        return default
    scheme = urllib.parse.urlparse(default).scheme
    if scheme == "file":
        path = default[len("file:"):]
        if not path.startswith("/"):
            return (base / path).resolve().as_uri()
        return default
    if scheme == "":
        return str((base / default).resolve())
    return default


def _check_writable_dir(directory: Path, uri: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrackingError(
            f"MLflow tracking URI {uri!r}: cannot create directory {directory} ({e}); "
            f"choose a writable location or unset {ENV_URI}"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise TrackingError(
            f"MLflow tracking URI {uri!r}: directory {directory} is not writable; "
            f"choose a writable location or unset {ENV_URI}"
        )


def _check_http(uri: str, timeout: float) -> None:
    base = uri.rstrip("/")
    fix = f"start the server (mlflow server --backend-store-uri ...) or unset {ENV_URI} to use a local sqlite store"
    for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as resp:
                if resp.status < 400:
                    return
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise TrackingError(
                    f"MLflow server {uri!r} refused the request (HTTP {e.code}); set MLFLOW_TRACKING_TOKEN or "
                    "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, or unset " + ENV_URI
                ) from None
            if e.code < 500:
                continue  # reachable; /health may be absent behind a proxy, try the API
            raise TrackingError(f"MLflow server {uri!r} answered HTTP {e.code} on {path}; {fix}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"MLflow server {uri!r} is unreachable ({reason}); {fix}") from None
    # answered, but neither endpoint succeeded: something is listening, accept it


def check_tracking_uri(uri: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Fail fast (within ~`timeout` s) with `TrackingError` if `uri` cannot be used.

    http(s): the server must answer `/health` or the experiments API. sqlite / file /
    plain paths: the directory must be creatable and writable (an existing sqlite file
    must be writable too). Other schemes (databricks, ...) are not checked.
    """
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        _check_http(uri, timeout)
    elif scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            return
        db = Path(path)
        _check_writable_dir(db.parent, uri)
        if db.exists() and not os.access(db, os.W_OK):
            raise TrackingError(f"MLflow tracking URI {uri!r}: database {db} is read-only; make it writable or unset {ENV_URI}")
    elif scheme in ("file", ""):
        _check_writable_dir(Path(parsed.path if scheme == "file" else uri), uri)


def redact_uri(uri: str) -> str:
    """`uri` without credentials (http://user:secret@host -> http://host), safe to write into an experiment."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return uri
