#!/usr/bin/env bash
# Mutation testing of the core modules (issue 17) with mutmut 3; see docs/mutation.md.
#
#   tools/mutation.sh                     every stage (losses ensemble export models), then the table
#   tools/mutation.sh losses export       only those stages
#   tools/mutation.sh losses -- NAME...   re-check named mutants of one stage (after adding tests)
#   tools/mutation.sh summary             only the table (from the results kept in build/mutation/)
#   MUTATION_RUNNER=inprocess tools/mutation.sh ...
#                                         same mutants and result files, all run inside one pytest
#                                         process (tools/mutation_inprocess.py): 10-50x less CPU
#
# Scope, test selection and the table: tools/mutation.py. Every stage runs in its own work folder
# build/mutation/STAGE/ (git-ignored); results persist in its mutants/*.meta, so an interrupted
# stage resumes where it stopped. Needs `pip install mutmut` (tested with 3.8.1).
# One worker at the lowest priority: this shares small CPU machines with training jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
RUNNER=${MUTATION_RUNNER:-mutmut}

run_stage() {  # run_stage STAGE [mutant names...]
  local stage=$1; shift
  local work; work=$(python tools/mutation.py setup "$stage")
  if [ "$RUNNER" = inprocess ]; then
    nice -n 19 python tools/mutation_inprocess.py "$stage" "$@"
    return
  fi
  local names=("$@")
  [ ${#names[@]} -eq 0 ] && mapfile -t names < <(python tools/mutation.py patterns "$stage")
  # PYTHONPATH = the work folder, which mutmut drops from sys.path in favour of its mutants/
  # copy; without it an editable install of another checkout could be imported instead
  (cd "$work" && PYTHONPATH="$work" nice -n 19 mutmut run --max-children 1 "${names[@]}")
}

if [ "${2:-}" = "--" ]; then
  stage=$1; shift 2
  echo "=== stage $stage, named mutants ($(date -u +%H:%M:%S))"
  run_stage "$stage" "$@" || echo "stage $stage: the runner exited with $?" >&2
else
  stages=("$@")
  [ ${#stages[@]} -eq 0 ] && stages=(losses ensemble export models)
  for s in "${stages[@]}"; do
    [ "$s" = summary ] && continue
    echo "=== stage $s ($(date -u +%H:%M:%S))"
    run_stage "$s" || echo "stage $s: the runner exited with $?" >&2
  done
fi
python tools/mutation.py summary
