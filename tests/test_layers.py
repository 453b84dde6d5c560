"""Import contracts (import-linter, `[tool.importlinter]` in pyproject.toml): serve/ and the
runtime contract (ekd_compress/contract/) never import torch, lightning, lhotse, mlflow or the
training code, directly or through another module. The contracts run on this checkout, and on a
copy of it with a probe module added, to show that a broken contract fails.
"""
from __future__ import annotations

import ast
import os
import re
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
# export/ and serve/ install as ekd_compress.export and ekd_compress.serve ([tool.setuptools.package-dir]).
PACKAGE_DIR = PYPROJECT["tool"].get("setuptools", {}).get("package-dir", {})
SERVE = next((name for name, folder in PACKAGE_DIR.items() if folder == "serve"), "serve")
EXPORT = next((name for name, folder in PACKAGE_DIR.items() if folder == "export"), "export")
PACKAGES = {"ekd_compress": "ekd_compress", SERVE: "serve", EXPORT: "export"}  # import name -> folder
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


def test_import_contracts_are_kept(tmp_path):
    """On a copy of this checkout's sources laid out as installed (serve/ as ekd_compress/serve/),
    so the contracts see exactly these files whatever copy of the project is installed."""
    tree = _copy_tree(tmp_path / "tree")
    r = lint(tree)
    out = r.stdout + r.stderr
    for name in PACKAGES:
        assert f"analysed {name} {tree / name.replace('.', os.sep)}{os.sep}" in out, f"{name} not from the copy:\n{out}"
    assert r.returncode == 0, f"an import contract is broken:\n{out}"
    assert "0 broken" in out and "KEPT" in out


def test_forbidden_list_names_every_training_module():
    """A new ekd_compress module is training-side unless it is added to SERVING_SIDE here: the
    contract must forbid it to serve/ and the runtime contract."""
    contract = next(c for c in CONFIG["contracts"] if c["id"] == "serve-torch-free")
    forbidden = set(contract["forbidden_modules"])
    modules = {f"ekd_compress.{p.stem}" for p in (ROOT / "ekd_compress").iterdir()
               if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").is_file())}
    missing = sorted(modules - SERVING_SIDE - {SERVE, EXPORT} - forbidden)
    assert not missing, f"pyproject.toml [tool.importlinter] does not forbid {missing} to serve/ and the contract"
    assert {"torch", "lightning", "lhotse", "mlflow", EXPORT} <= forbidden
    assert set(contract["source_modules"]) == {SERVE, "ekd_compress.contract"}


def _copy_tree(dst: Path) -> Path:
    """The packages' sources and pyproject.toml, laid out as they are imported."""
    for name, folder in PACKAGES.items():
        shutil.copytree(ROOT / folder, dst / name.replace(".", "/"),
                        ignore=shutil.ignore_patterns("__pycache__", "static", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


# Probe modules, each breaking a contract one way: (file, appended source, the import reported).
S, E = SERVE.replace(".", "/"), EXPORT.replace(".", "/")
PROBES = [
    (f"{S}/_probe_torch.py", "import torch\n", f"{SERVE}._probe_torch -> torch"),
    (f"{S}/_probe_lightning.py", "def f():\n    from lightning import Trainer\n", f"{SERVE}._probe_lightning -> lightning"),
    (f"{S}/_probe_train.py", "from ekd_compress.train import module\n", f"{SERVE}._probe_train -> ekd_compress.train"),
    (f"{S}/_probe_export.py", f"import {EXPORT}.api\n", f"{SERVE}._probe_export -> {EXPORT}.api"),
    ("ekd_compress/contract/_probe.py", "import mlflow\n", "ekd_compress.contract._probe -> mlflow"),
    ("ekd_compress/contract/_probe_up.py", f"from {SERVE} import runtime\n", f"ekd_compress.contract._probe_up -> {SERVE}"),
    # indirect: serve -> ekd_compress.atomic (allowed) -> lhotse (forbidden)
    (f"{S}/_probe_indirect.py", "import ekd_compress.atomic\n", f"{SERVE}._probe_indirect -> ekd_compress.atomic"),
    ("ekd_compress/atomic.py", "import lhotse\n", "ekd_compress.atomic -> lhotse"),
    # the layers contract: the training core never imports the pipeline above it
    ("ekd_compress/train/_probe_up.py", "from ekd_compress.pipeline import plan\n",
     "ekd_compress.train._probe_up -> ekd_compress.pipeline"),
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
    assert f"analysed {SERVE} {tree / S}{os.sep}" in out, out
    assert r.returncode == 1, f"the contracts pass with the probes in place:\n{out}"
    assert "3 broken" in out, out
    missed = [broken for _, _, broken in PROBES if broken not in out]
    assert not missed, f"the contracts do not report {missed}:\n{out}"


# ----------------------------------------------------------------------------- the package namespace
# in code strings: a statement `import serve...` / `from export... import`, or `-m serve.NAME`
TOP_LEVEL = re.compile(r"(?:^|[;\n])\s*(?:import|from) (?:serve|export)\b(?!-)|(?<![\w./-])-m (?:serve|export)\.")


def _folder_modules(folder: str) -> set[str]:
    return {p.stem for p in (ROOT / folder).glob("*.py")} - {"__init__"}


@pytest.mark.skipif(SERVE == "serve", reason="serve/ and export/ are still top-level packages")
def test_nothing_imports_serve_or_export_as_top_level_packages():
    """`python -m pytest` from the repository root puts the root on sys.path, so `import serve` would
    still find the serve/ folder there, as a second copy of ekd_compress.serve. Nothing may do it:
    no import statement, no module path in a string (mock.patch targets, `-m ekd_compress.serve.server`, code
    run in a subprocess)."""
    dotted = {pkg: re.compile(rf"^{pkg}\.({'|'.join(_folder_modules(pkg))})\b") for pkg in ("serve", "export")}
    bad = []
    for top in ("ekd_compress", "serve", "export", "tests", "tools"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path == Path(__file__):
                continue
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
                if isinstance(node, ast.Import):
                    bad += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in ("serve", "export")]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                        and node.module.split(".")[0] in ("serve", "export"):
                    bad.append(f"{where}: from {node.module} import ...")
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and path.name != "mutation.py":
                    if TOP_LEVEL.search(node.value) or any(rx.match(node.value) for rx in dotted.values()):
                        bad.append(f"{where}: {node.value[:80]!r}")
    assert not bad, ("top-level serve/export references (use ekd_compress.serve / ekd_compress.export):\n"
                     + "\n".join(bad))


def test_every_package_folder_is_installed():
    """setuptools installs exactly the packages listed (or found): every folder with an
    __init__.py under ekd_compress/, serve/ and export/, under its installed name."""
    setuptools = PYPROJECT["tool"].get("setuptools", {})
    folders = {d for top in ("ekd_compress", "serve", "export") for d in [ROOT / top, *(ROOT / top).rglob("*")]
               if d.is_dir() and (d / "__init__.py").is_file() and "__pycache__" not in d.parts}
    names = set()
    for d in folders:
        parts = d.relative_to(ROOT).parts
        prefix = next((n for n, f in PACKAGE_DIR.items() if f == parts[0]), parts[0])
        names.add(".".join((prefix, *parts[1:])))
    if isinstance(setuptools.get("packages"), list):
        listed = set(setuptools["packages"])
        assert names == listed, f"pyproject.toml [tool.setuptools] packages: missing {sorted(names - listed)}, " \
                                f"extra {sorted(listed - names)}"
        data = PYPROJECT["tool"]["setuptools"].get("package-data", {})
        assert data.get(SERVE) == ["static/*"], f"the browser page (serve/static) is package data of {SERVE}"
    else:
        include = setuptools["packages"]["find"]["include"]
        assert all(any(n == i.rstrip("*") or n.startswith(i.rstrip("*")) for i in include) for n in names)
