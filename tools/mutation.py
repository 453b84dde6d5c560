"""Mutation testing of the core modules with mutmut 3 (issue 17): scope, work folders, results.

Driven by tools/mutation.sh (see docs/mutation.md). Each stage mutates a few files and runs only
their matching test files, in its own mutmut work folder build/mutation/STAGE/ (git-ignored):

    python tools/mutation.py setup STAGE      (re)make the work folder: mutmut config + links to the sources
    python tools/mutation.py patterns STAGE   the mutant-name patterns of the stage (its scope)
    python tools/mutation.py summary [--survivors]   the table per module from every stage's results
    python tools/mutation.py diffs [STAGE]    the changed line of every surviving mutant

A stage folder holds a pyproject.toml with only the [tool.mutmut] and pytest sections, and
a copy of this checkout's sources laid out as installed (ekd_compress/, with export/ and serve/
inside it as ekd_compress.export and ekd_compress.serve; refreshed by every setup) and a link to
tests/; mutmut copies them into
mutants/ and runs the tests there. Mutants listed in tools/mutation_equivalent.txt (name, then
the reason) count as equivalent: reported, not counted against the kill rate.
"""
from __future__ import annotations

import fnmatch
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutation"

# Error-message text is not behaviour: lines that only continue a message string, raise
# lines and log calls are not mutated (tests still check a message's key phrase).
DO_NOT_MUTATE = [
    r"""^\s*\+?\s*[rRfFbBuU]*("[^"]*"|'[^']*')\s*[)+,]*\s*$""",
    r"^\s*raise \w+\(",
    r"^\s*log\.(warning|info|debug|error)\(",
]

_MODEL_METHODS = {
    "rnn": ("logits", "logits_chunk", "_run_rnn", "state_spec"),
    "tdnn": ("logits", "logits_chunk", "state_spec", "receptive_field"),
    "transformer": ("logits", "logits_chunk", "state_spec", "initial_state"),
}

# stage -> files to mutate, test selection (pytest arguments), mutant-name patterns in scope.
# Names: module.x_function__mutmut_N or module.xǁClassǁmethod__mutmut_N.
STAGES: dict[str, dict[str, list[str]]] = {
    "losses": {
        "files": ["ekd_compress/losses/essence.py", "ekd_compress/losses/ctc.py", "ekd_compress/losses/guide.py"],
        "tests": ["tests/losses"],
        "patterns": ["ekd_compress.losses.*"],
    },
    "ensemble": {
        "files": ["ekd_compress/ensemble/fusion.py", "ekd_compress/ensemble/essence.py",
                  "ekd_compress/ensemble/cache.py", "ekd_compress/ensemble/coincidence.py"],
        "tests": ["tests/ensemble/test_fusion.py", "tests/ensemble/test_essence_select.py",
                  "tests/ensemble/test_cache.py", "tests/ensemble/test_coincidence.py",
                  "tests/ensemble/test_ensemble_edges.py",
                  # ONNX export of a real ensemble: slow; the same weights are checked on dummies
                  "--deselect=tests/ensemble/test_fusion.py::test_weighted_real_members_stream_and_export_like_forward"],
        "patterns": ["ekd_compress.ensemble.fusion.*", "ekd_compress.ensemble.essence.*",
                     "ekd_compress.ensemble.cache.*", "ekd_compress.ensemble.coincidence.*"],
    },
    "export": {
        "files": ["ekd_compress/export/verify.py"],
        "tests": ["tests/export/test_verify.py", "tests/export/test_verify_edges.py"],
        "patterns": ["ekd_compress.export.verify.*"],
    },
    # model files: all of base.py (contract, CMVN, shared causal frontend) and the streaming
    # paths of rnn/tdnn/transformer (forward / forward_chunk and what they call, the state
    # layout); the model constructors (argument checks, layer sizes) are left out
    "models": {
        "files": ["ekd_compress/models/base.py", "ekd_compress/models/rnn.py",
                  "ekd_compress/models/tdnn.py", "ekd_compress/models/transformer.py"],
        "tests": ["tests/models",
                  # slow, and nothing mutated here that the streaming-vs-forward tests miss
                  "--deselect=tests/models/test_models.py::test_forward_chunk_exports_to_onnx",
                  "--deselect=tests/models/test_models.py::test_ctc_training_reduces_loss"],
        "patterns": [
            "ekd_compress.models.base.*",
            *[f"ekd_compress.models.{m}.*ǁ{f}__mutmut_*" for m, fs in _MODEL_METHODS.items() for f in fs],
            "ekd_compress.models.tdnn.xǁDilatedConvBlockǁ*",
            "ekd_compress.models.transformer.xǁChunkAttentionǁ*",
            "ekd_compress.models.transformer.xǁChunkTransformerLayerǁforward*",
        ],
    },
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked",
          37: "type check", -11: "segfault", -9: "segfault"}


def _toml_list(items: list[str]) -> str:
    return "[\n" + "".join(f"    '''{x}''',\n" for x in items) + "]"


def setup(stage: str) -> Path:
    """Make build/mutation/STAGE: config and links; keeps an existing mutants/ (resumable)."""
    spec = STAGES[stage]
    work = WORK / stage
    work.mkdir(parents=True, exist_ok=True)
    # the packages laid out as installed: export/ and serve/ are ekd_compress.export and
    # ekd_compress.serve, so mutmut names their mutants (and the tests import them) by those names.
    # A copy, not links: mutmut does not follow linked folders inside a source path.
    package = work / "ekd_compress"
    if package.is_symlink():  # the layout before the namespace change linked the whole folder
        package.unlink()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "ekd_compress", package, ignore=skip, dirs_exist_ok=True)
    for folder in ("export", "serve"):
        shutil.copytree(ROOT / folder, package / folder, ignore=skip, dirs_exist_ok=True)
    old_export = work / "export"
    if old_export.is_symlink():
        old_export.unlink()
    if not (work / "tests").is_symlink():
        (work / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    (work / "pyproject.toml").write_text(
        "# made by tools/mutation.py setup; do not edit\n"
        "[tool.mutmut]\n"
        'source_paths = ["ekd_compress"]\n'
        f"only_mutate = {_toml_list(spec['files'])}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(spec['tests'])}\n"
        f"do_not_mutate_patterns = {_toml_list(DO_NOT_MUTATE)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]\n'
        "# torch is not fork-safe once used: fork every mutant's run from a clean server process\n"
        'process_isolation = "forkserver"\n\n'
        "[tool.pytest.ini_options]\n"
        'testpaths = ["tests"]\n'
    )
    return work


def in_scope(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for spec in STAGES.values() for p in spec["patterns"])


def equivalents() -> dict[str, str]:
    path = ROOT / "tools" / "mutation_equivalent.txt"
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                out[name] = reason.strip()
    return out


def results() -> dict[str, dict[str, str]]:
    """module file -> {mutant name: status}, mutants in scope only, from every stage folder."""
    out: dict[str, dict[str, str]] = {}
    for stage, spec in STAGES.items():
        mutants = WORK / stage / "mutants"
        for file in spec["files"]:
            meta = mutants / (file + ".meta")
            if not meta.exists():
                continue
            data = json.loads(meta.read_text())
            for name, code in data["exit_code_by_key"].items():
                if in_scope(name):
                    out.setdefault(file, {})[name] = STATUS.get(code, "suspicious")
    return out


def row(module: str, c: Counter) -> str:
    checked = sum(c[s] for s in ("killed", "survived", "timeout", "no tests", "suspicious", "segfault"))
    caught = c["killed"] + c["timeout"]  # a mutant that hangs the tests is caught too
    rate = f"{100 * caught / checked:.1f} %" if checked else "-"
    rate2 = f"{100 * caught / (checked - c['equivalent']):.1f} %" if checked - c["equivalent"] else "-"
    return (f"| {module:37} | {c['mutants']:7} | {c['killed']:6} | {c['survived'] - c['equivalent']:8} | "
            f"{c['equivalent']:10} | {c['timeout']:7} | {c['no tests']:8} | {c['not checked']:7} | {rate:>9} | "
            f"{rate2:>16} |")


def summary(show_survivors: bool) -> int:
    equiv, res = equivalents(), results()
    if not res:
        print("no results under build/mutation/*/mutants: run tools/mutation.sh first")
        return 1
    head = (f"| {'module':37} | mutants | killed | survived | equivalent | timeout | no tests | not run | "
            f"kill rate | kill rate, equiv. excluded |")
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    total: Counter = Counter()
    for module, by_name in res.items():
        c = Counter(by_name.values())
        c["equivalent"] = sum(1 for n, s in by_name.items() if s == "survived" and n in equiv)
        c["mutants"] = len(by_name)
        total.update(c)
        print(row(module, c))
    print(row("total", total))
    if show_survivors:
        for by_name in res.values():
            for name, status in sorted(by_name.items()):
                if status != "killed":
                    print(f"{name}\t{'equivalent: ' + equiv[name] if name in equiv else status}")
    return 0


def _functions(source: str) -> dict[str, list[str]]:
    """`def NAME(...)` blocks (any indentation) of a mutmut-generated file -> their lines."""
    out: dict[str, list[str]] = {}
    name, indent = None, 0
    for line in source.splitlines():
        stripped = line.lstrip()
        depth = len(line) - len(stripped)
        if stripped.startswith("def "):
            name, indent = stripped[4:].split("(", 1)[0], depth
            out[name] = []
        elif name is not None and stripped and depth <= indent and not stripped.startswith(")"):
            name = None
        if name is not None:
            out[name].append(line)
    return out


def diffs(stages: list[str]) -> int:
    """Print `name<TAB>original line -> mutated line` for every surviving mutant."""
    import difflib

    equiv = equivalents()
    for stage in stages:
        for file in STAGES[stage]["files"]:
            meta = WORK / stage / "mutants" / (file + ".meta")
            if not meta.exists():
                continue
            funcs = _functions((WORK / stage / "mutants" / file).read_text())
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            for name, code in codes.items():
                if STATUS.get(code) != "survived" or not in_scope(name):
                    continue
                local = name.rpartition(".")[2]
                orig = funcs.get(local.partition("__mutmut_")[0] + "__mutmut_orig", [])
                mutated = funcs.get(local, [])
                changed = [(a, b) for a, b in zip(orig[1:], mutated[1:]) if a != b]
                if not changed:
                    changed = [("".join(difflib.unified_diff(orig, mutated, lineterm="")), "")]
                a, b = changed[0]
                tag = "  [equivalent]" if name in equiv else ""
                print(f"{name}{tag}\n    - {a.strip()}\n    + {b.strip()}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["diffs"]:
        return diffs(argv[1:] or list(STAGES))
    if len(argv) == 2 and argv[0] == "setup":
        print(setup(argv[1]))
        return 0
    if len(argv) == 2 and argv[0] == "patterns":
        print("\n".join(STAGES[argv[1]]["patterns"]))
        return 0
    if argv[:1] == ["summary"]:
        return summary("--survivors" in argv)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
