import http.server
import socket
import threading
import time
from pathlib import Path

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


def test_live_server_passes():
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_tracking_uri(f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
        server.server_close()


def test_unwritable_local_store(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(TrackingError, match="cannot create directory"):
        check_tracking_uri(f"sqlite:///{blocker}/sub/mlflow.db")
    with pytest.raises(TrackingError, match="a_file"):
        check_tracking_uri(str(blocker / "mlruns"))
    check_tracking_uri(f"sqlite:///{tmp_path}/new/dir/mlflow.db")
    assert Path(tmp_path / "new" / "dir").is_dir()
