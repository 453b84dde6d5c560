"""The dependency split: `pip install ekd-compress` is the torch-free serving install, and the
training-side commands need the `train` extra. Without it they fail with one line that names the
fix, not a traceback. A missing package is simulated: in a subprocess, by a folder first on
PYTHONPATH whose `torch` (and the other train-only packages) raise ModuleNotFoundError on import;
in this process, by a monkeypatched `__import__`.
"""
from __future__ import annotations

import builtins
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ekd_compress.cli.extras import FIX, IMPORTS, needs

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FIX = "pip install 'ekd-compress[train]'"
BASE_IMPORTS = {"numpy", "click", "kaldi_native_fbank", "sentencepiece", "websockets", "prometheus_client"}


def _poison(folder: Path, modules) -> Path:
    for mod in modules:
        (folder / mod).mkdir(parents=True)
        (folder / mod / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{mod}'\", name={mod!r})\n")
    return folder


def _cli(args: list[str], poison: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(poison), str(ROOT)]))
    code = "import sys; from ekd_compress.cli.main import cli; cli(sys.argv[1:], prog_name='ekd-compress')"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("only_torch", [True, False], ids=["torch-missing", "train-extra-missing"])
@pytest.mark.parametrize("command", ["distill", "export", "evaluate"])
def test_training_commands_without_the_train_extra_name_the_fix(tmp_path, command, only_torch):
    missing = {"torch"} if only_torch else IMPORTS["train"] - BASE_IMPORTS
    poison = _poison(tmp_path / "not_installed", missing)
    exp = tmp_path / "exp"
    exp.mkdir()
    args = {"distill": ["distill", str(ROOT / "recipes" / "demo.yaml"), "--out", str(exp / "new"), "--fresh"],
            "export": ["export", str(exp)],
            "evaluate": ["evaluate", str(exp), "--data", str(exp)]}[command]
    r = _cli(args, poison, tmp_path)
    assert r.returncode == 1, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"not one line:\n{r.stderr[-3000:]}"
    assert lines[0].startswith(f"Error: `ekd-compress {command}` needs the train dependencies ("), lines[0]
    assert lines[0].endswith(f"is not installed): {TRAIN_FIX}"), lines[0]
    if only_torch:
        assert "(torch is not installed)" in lines[0]
    assert not (exp / "new").exists()  # nothing was done before the failure


def test_needs_translates_only_a_missing_extra_package(monkeypatch):
    """In process, with `import torch` made to fail: the command's error is the one line; a
    missing package outside the extra, or a missing submodule of one inside it, stays a real error."""
    real_import = builtins.__import__
    want = {}

    def fake_import(name, *args, **kwargs):
        if name == want.get("missing") or name.startswith(want.get("missing", "\0") + "."):
            raise ModuleNotFoundError(f"No module named {want['raise_as']!r}", name=want["raise_as"])
        return real_import(name, *args, **kwargs)

    @click.group()
    def group() -> None:
        pass

    @group.command("distill")
    @needs("train")
    def distill() -> None:
        import torch  # noqa: F401
        click.echo("ran")

    monkeypatch.setattr(builtins, "__import__", fake_import)
    want.update(missing="torch", raise_as="torch")
    r = CliRunner().invoke(group, ["distill"], prog_name="ekd-compress")
    assert r.exit_code == 1 and "ran" not in r.output
    assert r.output.strip() == f"Error: `ekd-compress distill` needs the train dependencies (torch is not installed): {TRAIN_FIX}"

    want.update(missing="torch", raise_as="torch._C")  # torch is there but broken: not an extra problem
    r = CliRunner().invoke(group, ["distill"], prog_name="ekd-compress")
    assert isinstance(r.exception, ModuleNotFoundError) and r.exception.name == "torch._C"

    @group.command("serve")
    @needs("serve")
    def serve() -> None:
        import onnxruntime  # noqa: F401

    want.update(missing="onnxruntime", raise_as="onnxruntime")
    r = CliRunner().invoke(group, ["serve"], prog_name="ekd-compress")
    assert r.exit_code == 1
    assert r.output.strip() == ("Error: `ekd-compress serve` needs the serve dependencies (onnxruntime is not "
                                f"installed): {FIX['serve']}")

    @group.command("serve-with-torch")
    @needs("serve")
    def serve_with_torch() -> None:
        import torch  # noqa: F401

    want.update(missing="torch", raise_as="torch")  # serving never needs torch: importing it there is a bug
    r = CliRunner().invoke(group, ["serve-with-torch"], prog_name="ekd-compress")
    assert isinstance(r.exception, ModuleNotFoundError) and r.exception.name == "torch"


def test_extras_match_pyproject():
    """The base dependencies are what serving imports (no torch); the import names listed for the
    `train` extra cover every distribution it declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for r in reqs}
    base = names(project["dependencies"])
    assert base == {"numpy", "click", "kaldi-native-fbank", "sentencepiece", "websockets", "prometheus-client"}
    extras = project["optional-dependencies"]
    assert not {"torch", "lightning", "lhotse", "mlflow", "onnxruntime"} & base
    import_name = {"pyyaml": "yaml", "espeakng-loader": "espeakng_loader"}
    assert {import_name.get(n, n) for n in names(extras["train"])} == IMPORTS["train"]
    assert any(r.startswith("torch>=2.4,<2.14") for r in extras["train"])
    # onnxruntime (CPU or CUDA wheel), and uvloop, the server's faster event loop (optional at run time)
    assert names(extras["serve"]) == {"onnxruntime", "uvloop"} and names(extras["gpu"]) == {"onnxruntime-gpu", "uvloop"}
