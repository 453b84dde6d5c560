"""`bench` writes only where told, never records its token, and refuses a non-bundle in one line (issue 16)."""
from __future__ import annotations

import json

from click.testing import CliRunner

from ekd_compress.cli.serve_cmd import bench, serve

TINY = ["--streams", "1", "--seconds", "1", "--no-ramp", "--rtf-seconds", "1", "--fast"]
SECRET = "planted-Secret-7f3a9c"


def _all_files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_bench_token_never_written_anywhere(energy_bundle, tmp_path, monkeypatch):
    """A planted token must appear in no output: the --out JSON, the plot, stdout/stderr, the MLflow store."""
    cwd, out, store = tmp_path / "cwd", tmp_path / "out", tmp_path / "store"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    store.mkdir()
    args = [str(energy_bundle), *TINY, "--token", SECRET, "--out", str(out / "f.json"), "--plot", str(out / "p.png"),
            "--mlflow"]
    r = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output
    report = json.loads((out / "f.json").read_text())
    assert report["config"]["auth"] is True and "token" not in report["config"]
    files = _all_files(tmp_path)
    assert (store / "mlflow.db") in files and (out / "p.png") in files
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaked, f"the token was written into {leaked}"
    assert _all_files(cwd) == [], "bench wrote into the current directory although every output was placed"


def test_bench_writes_nothing_by_default(energy_bundle, tmp_path, monkeypatch):
    """Without --out/--plot/--mlflow the current directory stays empty (no mlflow.db, mlartifacts/, bench.png),
    and the table names the model, one figure per cell."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    r = CliRunner().invoke(bench, [str(energy_bundle), *TINY], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert list(tmp_path.iterdir()) == []
    lines = r.stdout.splitlines()
    header = next(line for line in lines if line.startswith(" "))
    assert header.split() == ["energy"], "the column is named by the bundle's model name"
    p95 = next(line for line in lines if line.startswith("final p95 ms"))
    assert len(p95.split()) == 4 and "/" not in p95, f"one figure per cell: {p95!r}"
    assert any(line.startswith("ONNX size MB") for line in lines)


def test_bench_on_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    r = CliRunner().invoke(bench, [str(tmp_path), *TINY])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) <= 2 and "Traceback" not in r.output, r.output
    assert str(tmp_path) in r.output and "bundle.json is missing" in r.output and "ekd-compress export" in r.output


def test_serve_on_a_port_in_use(energy_bundle):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = CliRunner().invoke(serve, [str(energy_bundle), "--port", str(port)])
    assert r.exit_code == 1, r.output
    err = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and "Traceback" not in r.output, r.output
    assert f"port {port}" in err[0] and "already in use" in err[0] and "--port" in err[0]
