#!/usr/bin/env bash
# Mutation testing of the core modules (issue 17) with mutmut 3; see docs/mutation.md.
#
#   tools/mutation.sh                 every stage below, then the summary table
#   tools/mutation.sh losses export   only those stages (losses, ensemble, export, models)
#   tools/mutation.sh summary         only the table (from the results in mutants/)
#
# Config: [tool.mutmut] in pyproject.toml (files to mutate, test selection). mutmut copies
# ekd_compress/ and export/ into mutants/ (git-ignored) and runs the tests from there; results
# persist in mutants/*.meta, so a stage that was interrupted resumes where it stopped, and
# `mutmut run NAME...` re-checks named mutants. Needs `pip install mutmut` (tested: 3.8.1).
# One worker, lowest priority: this shares small CPU machines with training jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# the tests must import this checkout (mutmut puts mutants/ first on sys.path), not an
# editable install of another tree; one thread per process
export PYTHONPATH="$ROOT" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
MM=(nice -n 19 mutmut run --max-children 1)


stage() {
  case "$1" in
    losses|ensemble|export|models)
      # the stage's mutant name patterns (scope) live in tools/mutation_summary.py
      mapfile -t patterns < <(python tools/mutation_summary.py --patterns "$1")
      "${MM[@]}" "${patterns[@]}" ;;
    summary)  ;;
    *) echo "unknown stage $1 (losses, ensemble, export, models, summary)" >&2; exit 2 ;;
  esac
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(losses ensemble export models)
for s in "${stages[@]}"; do
  echo "=== stage $s ($(date -u +%H:%M:%S))"
  stage "$s" || echo "stage $s: mutmut exited with $?" >&2
done
python tools/mutation_summary.py
