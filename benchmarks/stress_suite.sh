#!/usr/bin/env bash
# The whole test suite under load, from the repository root:
#     bash benchmarks/stress_suite.sh               # 3 runs in a row: 1, 2, then 1 thread(s)
#     RUNS=6 bash benchmarks/stress_suite.sh        # 3 runs with each thread count
#     RUNS=1 THREADS="2" BUSY=4 bash benchmarks/stress_suite.sh
# Two busy processes (a `stress --cpu 2` stand-in: pure-Python spin loops, so no package is
# needed) run for the whole time. Run i uses the i-th thread count of THREADS, cycling (OMP,
# MKL, OpenBLAS, numba and torch's intra-op threads all set to it). It stops at the first
# failing run, prints one line per run (status, wall time, pytest's last line, the
# fault-injection line) and exits non-zero unless every run passed: "passes RUNS times in a row
# under load, with 1 and 2 threads".
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
read -r -a THREADS <<<"${THREADS:-1 2}"
BUSY=${BUSY:-2}
PY=${PYTHON:-.venv/bin/python}
LOGS=${LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/stress-suite.XXXXXX")}
mkdir -p "$LOGS"

busy=()
stop_busy() {
    for pid in "${busy[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop_busy EXIT
for _ in $(seq 1 "$BUSY"); do
    "$PY" -c 'while True: pass' &
    busy+=("$!")
done
echo "stress suite: $RUNS runs, threads cycling ${THREADS[*]}, $BUSY busy processes, logs in $LOGS"

passed=0
for run in $(seq 1 "$RUNS"); do
    threads=${THREADS[$(( (run - 1) % ${#THREADS[@]} ))]}
    log="$LOGS/run${run}-threads${threads}.log"
    start=$(date +%s)
    status=0
    OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads \
        NUMBA_NUM_THREADS=$threads "$PY" -m pytest -q -p no:cacheprovider >"$log" 2>&1 \
        || status=$?
    seconds=$(( $(date +%s) - start ))
    last=$(grep -E "passed|failed|error" "$log" | tail -1)
    faults=$(grep -E "^fault injection" "$log" | tail -1 || true)
    if [[ $status -eq 0 ]]; then
        passed=$((passed + 1))
        echo "run $run, $threads thread(s): PASS in ${seconds}s: $last | $faults"
    else
        echo "run $run, $threads thread(s): FAIL (status $status) in ${seconds}s: $last"
        grep -E "^(FAILED|ERROR) " "$log" | head -20 || true
        echo "stress suite: $passed run(s) passed before this failure (log: $log)"
        exit 1
    fi
done
echo "stress suite: all $passed runs passed in a row under $BUSY busy processes"
