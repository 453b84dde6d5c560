"""Run mutmut's mutants inside ONE pytest process (for machines with very little CPU).

mutmut 3 (`tools/mutation.sh`) forks a fresh pytest session for every mutant: ~0.2-0.5 CPU
seconds of start-up and collection each, which on a shared 2-core machine is most of the
cost. This runner uses the same mutants (mutmut generates them, with its trampolines that
pick the active mutant from $MUTANT_UNDER_TEST at every call) and records results in the
same mutants/*.meta files, so `mutmut results`, `mutmut show NAME` and
`python tools/mutation.py summary` read them. It collects the stage's tests once, then:

  1. runs every test once with the original code, recording which mutated functions each
     test reaches (mutmut's "stats" mode) and its CPU time; any failure aborts;
  2. for each mutant: sets $MUTANT_UNDER_TEST and reruns only the tests that reach the
     mutated function (module fixtures kept between tests), stopping at the first failure;
     killed = a test failed, survived = all passed, timeout = over 20x the tests' clean CPU
     time + 2 s (CPU time, so a loaded machine does not fake timeouts), no tests = none reach it.

Usage (via tools/mutation.sh --inprocess, or directly):

    python tools/mutation_inprocess.py STAGE [--force] [--exclude=TEST_FILE ...] [NAME_PATTERN ...]

Mutants that already have a result are skipped unless named or --force is given.
"""
from __future__ import annotations

import fnmatch
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from mutation import STAGES, WORK  # noqa: E402

KILLED, SURVIVED, NO_TESTS, TIMEOUT = 1, 0, 33, 36


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Parent:
    """Stands for "the item's parents": teardown_exact(_Parent(item)) drops the item's own
    fixtures and keeps those of its module and session."""

    def __init__(self, item) -> None:
        self.chain = item.listchain()[:-1]

    def listchain(self):
        return self.chain


class _Timeout(BaseException):
    pass


class Runner:
    def __init__(self, stage: str, patterns: list[str], force: bool) -> None:
        self.stage, self.patterns, self.force = stage, patterns, force
        self.named = bool(patterns)
        self.last_error = ""

    def run(self, item) -> bool:
        """Set up, call and tear down one test; True when it passed (or skipped). No report is
        made: formatting a failure's traceback would cost more than most tests here."""
        from _pytest.outcomes import Skipped
        from _pytest.runner import CallInfo, get_reraise_exceptions

        parent = _Parent(item)
        item.session._setupstate.teardown_exact(parent)
        if hasattr(item, "_request") and not item._request:
            item._initrequest()
        reraise = get_reraise_exceptions(item.config)
        ihook = item.ihook

        from _pytest.tmpdir import tmppath_result_key

        def outcome(hook, when: str, **kw) -> str:
            info = CallInfo.from_call(lambda: hook(item=item, **kw), when=when, reraise=reraise)
            # what pytest_runtest_makereport (skipped here) records for the tmp_path fixture
            item.stash.setdefault(tmppath_result_key, {})[when] = info.excinfo is None
            if info.excinfo is None:
                return "passed"
            if info.excinfo.errisinstance(Skipped):
                return "skipped"
            self.last_error = f"{when}: {info.excinfo.exconly()[:2000]}"
            return "failed"

        setup = outcome(ihook.pytest_runtest_setup, "setup")
        call = outcome(ihook.pytest_runtest_call, "call") if setup == "passed" else setup
        teardown = outcome(ihook.pytest_runtest_teardown, "teardown", nextitem=parent)
        ok = "failed" not in (setup, call, teardown)
        if hasattr(item, "_request"):
            item._request = False
            item.funcargs = None
        return ok

    def pytest_runtestloop(self, session):
        import mutmut.mutation.trampoline as trampoline

        items = list(session.items)
        spec = STAGES[self.stage]
        for file in spec["files"]:  # the tests must import the mutated copy
            module = sys.modules.get(file[:-3].replace("/", "."))
            if module is not None:
                assert Path(module.__file__).resolve().is_relative_to(Path.cwd().resolve()), module.__file__
        reached: set[str] = set()
        trampoline.record_trampoline_hit = lambda name, caller=None: reached.add(name)
        os.environ["MUTANT_UNDER_TEST"] = "stats"
        hits, cost = {}, {}
        t0 = time.time()
        for item in items:
            reached.clear()
            start = cpu()
            if not self.run(item):
                print(f"\nclean run failed: {item.nodeid}; fix the tests first\n{self.last_error}", flush=True)
                session.shouldfail = "clean run failed"
                return True
            cost[item], hits[item] = cpu() - start, set(reached)
        print(f"\nclean run: {len(items)} tests, {sum(cost.values()):.1f} CPU s, {time.time() - t0:.0f} s", flush=True)
        mutated = {Path(f[:-3]).as_posix().replace("/", ".") for f in spec["files"]}
        todo = []
        metas = {}
        for file in spec["files"]:
            meta_path = Path(file + ".meta")
            if not meta_path.exists():
                continue
            metas[meta_path] = json.loads(meta_path.read_text())
            for name, code in metas[meta_path]["exit_code_by_key"].items():
                wanted = self.patterns or spec["patterns"]
                if not any(fnmatch.fnmatch(name, p) for p in wanted):
                    continue
                if code is not None and not (self.named or self.force):
                    continue
                todo.append((meta_path, name))
        print(f"{len(todo)} mutants to check (stage {self.stage}; modules {sorted(mutated)})", flush=True)

        def on_timeout(signum, frame):
            raise _Timeout()

        signal.signal(signal.SIGPROF, on_timeout)
        counts = {KILLED: 0, SURVIVED: 0, NO_TESTS: 0, TIMEOUT: 0}
        last_save = time.time()
        for n, (meta_path, name) in enumerate(todo, 1):
            fn = name.partition("__mutmut_")[0]
            covering = [it for it in items if fn in hits[it]]
            code = NO_TESTS
            if covering:
                os.environ["MUTANT_UNDER_TEST"] = name
                limit = 20 * sum(cost[it] for it in covering) + 2.0
                code = SURVIVED
                timed_out = False
                start = cpu()
                try:
                    signal.setitimer(signal.ITIMER_PROF, limit)
                    for it in sorted(covering, key=lambda i: cost[i]):
                        if not self.run(it):
                            code = KILLED
                            break
                except _Timeout:
                    timed_out = True
                finally:
                    signal.setitimer(signal.ITIMER_PROF, 0)
                if timed_out or cpu() - start > limit:
                    code = TIMEOUT
                    session._setupstate.teardown_exact(None)
            metas[meta_path]["exit_code_by_key"][name] = code
            metas[meta_path].setdefault("durations_by_key", {})[name] = 0.0
            counts[code] += 1
            if time.time() - last_save > 20 or n == len(todo):
                self.save(metas)
                last_save = time.time()
                print(f"  {n}/{len(todo)}: killed {counts[KILLED]}, survived {counts[SURVIVED]}, "
                      f"timeout {counts[TIMEOUT]}, no tests {counts[NO_TESTS]}", flush=True)
        os.environ["MUTANT_UNDER_TEST"] = ""
        session._setupstate.teardown_exact(None)
        self.save(metas)
        return True

    @staticmethod
    def save(metas) -> None:
        for path, data in metas.items():
            tmp = path.with_suffix(".meta.tmp")
            tmp.write_text(json.dumps(data, indent=4))
            os.replace(tmp, path)


def generate(stage: str) -> None:
    """Let mutmut copy the sources into mutants/ and write the mutants (no test run)."""
    from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants, setup_source_paths
    from mutmut.mutation.trampoline import set_mutant_under_test

    set_mutant_under_test("mutant_generation")
    Path("mutants").mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    setup_source_paths()
    stats = create_mutants(1)
    print(f"mutants generated: {stats}", flush=True)
    set_mutant_under_test(None)
    os.environ.pop("MUTANT_UNDER_TEST", None)


def main(argv: list[str]) -> int:
    import pytest

    stage, rest = argv[0], argv[1:]
    force = "--force" in rest
    exclude = [a.split("=", 1)[1] for a in rest if a.startswith("--exclude=")]  # test files left out
    patterns = [a for a in rest if a != "--force" and not a.startswith("--exclude=")]
    work = WORK / stage
    os.chdir(work)
    generate(stage)
    os.chdir(work / "mutants")
    sys.path.insert(0, str(Path.cwd()))
    os.environ["MUTANT_UNDER_TEST"] = ""
    tests = [t for t in STAGES[stage]["tests"] if t not in exclude]
    return pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--rootdir=.", *tests],
                       plugins=[Runner(stage, patterns, force)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
