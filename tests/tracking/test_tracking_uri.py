import contextlib
import http.server
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from ekd_compress.tracking import TrackingError, check_tracking_uri, resolve_tracking_uri


def test_env_uri_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(base_dir=tmp_path) == "http://tracking.example:5000"


def test_default_sqlite_made_absolute(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(base_dir=tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///runs/db.sqlite", tmp_path) == f"sqlite:///{tmp_path.resolve()}/runs/db.sqlite"
    assert resolve_tracking_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("mlruns", tmp_path) == str(tmp_path.resolve() / "mlruns")
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast():
    uri = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError) as err:
        check_tracking_uri(uri)
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert uri in msg and "start the server" in msg and "MLFLOW_TRACKING_URI" in msg


@contextlib.contextmanager
def fake_server(statuses: dict[str, int]) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server answering GET PATH (query included) with statuses[PATH] (404 if absent).
    Yields (base URI, list of the paths requested so far)."""
    requested: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requested.append(self.path)
            self.send_response(statuses.get(self.path, 404))
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()
        server.server_close()


API = "/api/2.0/mlflow/experiments/search?max_results=1"


def test_live_server_passes():
    with fake_server({"/health": 200}) as (uri, requested):
        assert check_tracking_uri(uri) is None
    assert requested == ["/health"], f"a healthy server needs one /health request, got {requested}"
    # /health missing (e.g. behind a proxy): the experiments API answering is enough
    with fake_server({API: 200}) as (uri, requested):
        assert check_tracking_uri(uri) is None
    assert requested == ["/health", API]


@pytest.mark.parametrize(("status", "message"), [(500, "answered HTTP 500 on /health"),
                                                 (503, "answered HTTP 503 on /health"),
                                                 (401, "refused the request \\(HTTP 401\\)"),
                                                 (403, "MLFLOW_TRACKING_TOKEN")],
                         ids=["http500", "http503", "http401", "http403"])
def test_live_server_that_fails_is_reported(status, message):
    with fake_server({"/health": status}) as (uri, requested):
        with pytest.raises(TrackingError, match=message) as err:
            check_tracking_uri(uri)
    assert uri.rstrip("/") in str(err.value) and requested == ["/health"]


def test_unwritable_local_store(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(TrackingError, match="cannot create directory"):
        check_tracking_uri(f"sqlite:///{blocker}/sub/mlflow.db")
    with pytest.raises(TrackingError, match="a_file"):
        check_tracking_uri(str(blocker / "mlruns"))
    check_tracking_uri(f"sqlite:///{tmp_path}/new/dir/mlflow.db")
    assert Path(tmp_path / "new" / "dir").is_dir()
