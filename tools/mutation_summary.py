"""Mutation-testing scope and result table for tools/mutation.sh (issue 17).

    python tools/mutation_summary.py                  table per module from mutants/*.meta
    python tools/mutation_summary.py --survivors      ... and every surviving mutant's name
    python tools/mutation_summary.py --patterns STAGE the mutmut name patterns of one stage

Mutants listed in tools/mutation_equivalent.txt (name, then the reason) are counted as
equivalent: they are reported, not counted against the kill rate.
"""
from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# stage -> mutmut name patterns (module.xǁClassǁmethod__mutmut_N, module.x_function__mutmut_N)
STAGES = {
    "losses": ["ekd_compress.losses.*"],
    "ensemble": ["ekd_compress.ensemble.fusion.*", "ekd_compress.ensemble.essence.*",
                 "ekd_compress.ensemble.cache.*", "ekd_compress.ensemble.coincidence.*"],
    "export": ["export.verify.*"],
    # model files: the streaming paths (forward / forward_chunk and what they call, state
    # layout, the shared frontend) and all of base.py; the constructors' argument checks are out
    "models": [
        "ekd_compress.models.base.*",
        *[f"ekd_compress.models.rnn.*ǁ{f}__mutmut_*" for f in ("logits", "logits_chunk", "_run_rnn", "state_spec")],
        "ekd_compress.models.tdnn.xǁCausalConvBlockǁ*",
        *[f"ekd_compress.models.tdnn.*ǁ{f}__mutmut_*" for f in ("logits", "logits_chunk", "state_spec",
                                                                 "receptive_field")],
        "ekd_compress.models.transformer.xǁChunkAttentionǁ*",
        "ekd_compress.models.transformer.xǁChunkTransformerLayerǁforward*",
        *[f"ekd_compress.models.transformer.*ǁ{f}__mutmut_*" for f in ("logits", "logits_chunk", "state_spec",
                                                                        "initial_state")],
    ],
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked",
          37: "type check", -11: "segfault", -9: "segfault"}


def in_scope(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for patterns in STAGES.values() for p in patterns)


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
    """module file -> {mutant name: status}, in-scope mutants only."""
    out: dict[str, dict[str, str]] = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        module = str(meta.relative_to(ROOT / "mutants"))[: -len(".meta")]
        for name, code in data["exit_code_by_key"].items():
            if in_scope(name):
                out.setdefault(module, {})[name] = STATUS.get(code, "suspicious")
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--patterns"]:
        print("\n".join(STAGES[argv[1]]))
        return 0
    equiv = equivalents()
    res = results()
    if not res:
        print("no results in mutants/: run tools/mutation.sh first")
        return 1
    head = f"| {'module':38} | mutants | killed | survived | equivalent | timeout | no tests | not run | kill rate | kill rate (non-equiv.) |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    total: Counter = Counter()
    for module, by_name in res.items():
        c = Counter(by_name.values())
        eq = sum(1 for n, s in by_name.items() if s == "survived" and n in equiv)
        c["equivalent"] = eq
        c["mutants"] = len(by_name)
        total.update(c)
        print(row(module, c))
    print(row("total", total))
    if "--survivors" in argv:
        for module, by_name in res.items():
            for name, status in sorted(by_name.items()):
                if status not in ("killed",):
                    tag = f"equivalent: {equiv[name]}" if name in equiv else status
                    print(f"{name}\t{tag}")
    return 0


def row(module: str, c: Counter) -> str:
    checked = c["killed"] + c["survived"] + c["timeout"] + c["no tests"] + c["suspicious"] + c["segfault"]
    killed = c["killed"] + c["timeout"]  # a mutant that hangs the tests is caught
    rate = f"{100 * killed / checked:.1f} %" if checked else "-"
    non_eq = checked - c["equivalent"]
    rate2 = f"{100 * killed / non_eq:.1f} %" if non_eq else "-"
    return (f"| {module:38} | {c['mutants']:7} | {c['killed']:6} | {c['survived'] - c['equivalent']:8} | "
            f"{c['equivalent']:10} | {c['timeout']:7} | {c['no tests']:8} | {c['not checked']:7} | {rate:>9} | "
            f"{rate2:>22} |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
