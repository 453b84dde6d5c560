"""Import contracts (import-linter, `[tool.importlinter]` in pyproject.toml): serve/ and the
runtime contract (ekd_compress/contract/) never import torch, lightning, lhotse, mlflow or the
training code, directly or through another module. The contracts run on this checkout, and on a
copy of it with a probe module added, to show that a broken contract fails.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e '.[train,test]'")

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONFIG = PYPROJECT["tool"]["importlinter"]
PACKAGES = {"ekd_compress": "ekd_compress", "serve": "serve", "export": "export"}  # import name -> folder
# ekd_compress modules that serve/ and the contract may import: the contract itself and the
# stdlib-only atomic file writes. Everything else in ekd_compress is training-side.
SERVING_SIDE = {"ekd_compress.contract", "ekd_compress.atomic"}

# Run in a fresh interpreter on the packages under PYTHONPATH (first on sys.path, ahead of any
# installed copy); print where they were found, so a test can check which tree was analysed.
RUNNER = """
import importlib.util, sys
from importlinter.cli import lint_imports
for name in sys.argv[2:]:
    print("analysed", name, importlib.util.find_spec(name).origin)
sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))
"""


def lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-c", RUNNER, str(root / "pyproject.toml"), *PACKAGES], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_import_contracts_are_kept():
    r = lint(ROOT)
    out = r.stdout + r.stderr
    for name, folder in PACKAGES.items():
        assert f"analysed {name} {ROOT / folder}{os.sep}" in out, f"{name} was not imported from this checkout:\n{out}"
    assert r.returncode == 0, f"an import contract is broken:\n{out}"
    assert "0 broken" in out and "KEPT" in out


def test_forbidden_list_names_every_training_module():
    """A new ekd_compress module is training-side unless it is added to SERVING_SIDE here: the
    contract must forbid it to serve/ and the runtime contract."""
    contract = next(c for c in CONFIG["contracts"] if c["id"] == "serve-torch-free")
    forbidden = set(contract["forbidden_modules"])
    modules = {f"ekd_compress.{p.stem}" for p in (ROOT / "ekd_compress").iterdir()
               if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").is_file())}
    missing = sorted(modules - SERVING_SIDE - forbidden)
    assert not missing, f"pyproject.toml [tool.importlinter] does not forbid {missing} to serve/ and the contract"
    assert {"torch", "lightning", "lhotse", "mlflow", "export"} <= forbidden
    assert set(contract["source_modules"]) == {"serve", "ekd_compress.contract"}


def _copy_tree(dst: Path) -> Path:
    """The packages' sources and pyproject.toml, laid out as they are imported."""
    for name, folder in PACKAGES.items():
        shutil.copytree(ROOT / folder, dst / name.replace(".", "/"),
                        ignore=shutil.ignore_patterns("__pycache__", "static", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


# Probe modules, each breaking a contract one way: (file, appended source, the import reported).
PROBES = [
    ("serve/_probe_torch.py", "import torch\n", "serve._probe_torch -> torch"),
    ("serve/_probe_lightning.py", "def f():\n    from lightning import Trainer\n", "serve._probe_lightning -> lightning"),
    ("serve/_probe_train.py", "from ekd_compress.train import module\n", "serve._probe_train -> ekd_compress.train"),
    ("serve/_probe_export.py", "import export.api\n", "serve._probe_export -> export.api"),
    ("ekd_compress/contract/_probe.py", "import mlflow\n", "ekd_compress.contract._probe -> mlflow"),
    ("ekd_compress/contract/_probe_up.py", "from serve import runtime\n", "ekd_compress.contract._probe_up -> serve"),
    # indirect: serve -> ekd_compress.atomic (allowed) -> lhotse (forbidden)
    ("serve/_probe_indirect.py", "import ekd_compress.atomic\n", "serve._probe_indirect -> ekd_compress.atomic"),
    ("ekd_compress/atomic.py", "import lhotse\n", "ekd_compress.atomic -> lhotse"),
]


def test_a_broken_contract_fails(tmp_path):
    """One copy of the tree with every probe added (one lint run, as lint runs are slow): the
    contracts fail and the report names each probe's import; the same copy without the probes
    passes (test_import_contracts_are_kept runs the same contracts on the same sources)."""
    tree = _copy_tree(tmp_path / "tree")
    for probe, source, _ in PROBES:
        path = tree / probe
        path.write_text((path.read_text() if path.exists() else "") + source)
    r = lint(tree)
    out = r.stdout + r.stderr
    assert f"analysed serve {tree / 'serve'}{os.sep}" in out, out
    assert r.returncode == 1, f"the contracts pass with the probes in place:\n{out}"
    assert "2 broken" in out, out
    missed = [broken for _, _, broken in PROBES if broken not in out]
    assert not missed, f"the contracts do not report {missed}:\n{out}"
