"""What git tracks under exp/: experiments are outputs (exp/ is in .gitignore), except the one
small ready-to-serve student bundle at the fixed path the README's quick start serves."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "exp/fsdd/bundles/student"


def _tracked(path: str) -> list[str]:
    r = subprocess.run(["git", "ls-files", "--", path], cwd=ROOT, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip("not a git checkout")
    return r.stdout.split()


def test_only_the_example_bundle_is_tracked_under_exp():
    tracked = _tracked("exp")
    if not tracked and not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert sorted(tracked) == [f"{EXAMPLE}/{f}" for f in ("bundle.json", "model.int8.onnx", "model.onnx", "tokens.txt")], \
        f"git tracks more (or less) than the example bundle under exp/: {tracked}"
    size = sum((ROOT / f).stat().st_size for f in tracked)
    assert size < 4_000_000, f"the example bundle is {size / 1e6:.1f} MB: keep it one small student"
    assert "/exp/" in (ROOT / ".gitignore").read_text().split()
    assert f"ekd-compress serve {EXAMPLE}" in (ROOT / "README.md").read_text(), "the README serves the example bundle"
