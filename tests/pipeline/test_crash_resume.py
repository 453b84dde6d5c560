"""Crash safety: SIGKILL in the middle of stages, re-run, and get what an uninterrupted run gets."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "data.synthetic.hours=0.008", "data.synthetic.dev_hours=0.002", "data.synthetic.test_hours=0.001",
    "train.epochs=2", "train.max_duration=20", "distill.seeds=[0]", "distill.ks=[1,all]",
    "distill.refuse_below_threshold=false", "distill.control=false",
    "baseline.params={hidden: 16, layers: 1}",
    "members=[{name: lstm, arch: lstm, params: {hidden: 16, layers: 1}}, {name: tf, arch: transformer, params: {hidden: 16, layers: 1, heads: 2}}]",
]
# where the runs are killed: a training stage after its first epoch's checkpoint, the
# alignment pass, essence caching, a student's training, and scoring
KILL_AT = [r"baseline epoch 1/2", r"\[run \] align", r"\[run \] essence ", r"essence_k1 epoch 1/2",
           r"\[run \] evaluate"]


def command(exp: Path) -> list[str]:
    args = [sys.executable, "-u", "-m", "ekd_compress", "distill", "recipes/demo.yaml", "--out", str(exp), "--no-mlflow"]
    for item in TINY:
        args += ["--set", item]
    return args


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def run_to_end(exp: Path) -> str:
    proc = subprocess.run(command(exp), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def run_and_kill(exp: Path, pattern: str) -> bool:
    """Start a run, SIGKILL it when a log line matches `pattern`; False if it finished first
    (its stderr is then in EXP.stderr)."""
    errors = open(exp.with_suffix(".stderr"), "w")
    proc = subprocess.Popen(command(exp), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        for line in proc.stdout:
            if re.search(pattern, line):
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                return True
        proc.wait(timeout=60)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
        errors.close()


def scores(exp: Path) -> dict:
    results = json.loads((exp / "results.json").read_text())
    rows = results["tests"]["dev"]["models"]
    return {row["name"]: row["wer"] for row in rows}, {row["name"]: (row["sub"], row["del"], row["ins"]) for row in rows}


def test_sigkill_in_every_kind_of_stage_then_resume(tmp_path):
    reference = tmp_path / "reference"
    run_to_end(reference)
    crashed = tmp_path / "crashed"
    for pattern in KILL_AT:
        assert run_and_kill(crashed, pattern), \
            f"the run ended before {pattern!r}: {crashed.with_suffix('.stderr').read_text()[-2000:]}"
        assert not (crashed / "results.json").exists()
    out = run_to_end(crashed)
    assert "[skip] data" in out and "[skip] baseline" in out  # what finished before a kill is kept
    (wer, errors), (ref_wer, ref_errors) = scores(crashed), scores(reference)
    assert wer == pytest.approx(ref_wer, abs=1e-6) and errors == ref_errors
    for name in ("baseline", "lstm", "essence_k1"):  # resumed training = uninterrupted training
        a = torch.load(reference / "models" / name / "model.pt", weights_only=False)["state_dict"]
        b = torch.load(crashed / "models" / name / "model.pt", weights_only=False)["state_dict"]
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert not list(crashed.rglob("*.tmp")), "a temporary file was left behind as if it were a result"
