#!/usr/bin/env bash
# Soak the randomized reliability suites (issue 16, item 8): run them over and over, each run
# with a fresh seed, for as long as asked, and write a report to perf/.
#
#   sudo tools/soak.sh                      # 30 minutes, the default suites
#   sudo MINUTES=120 SUITES="kill_e2e" tools/soak.sh
#
# Environment (all optional):
#   MINUTES=30        how long to keep starting runs (the run going at the deadline finishes)
#   SUITES="kill_e2e shutdown_e2e mirror_btrfs_e2e failpoint_e2e enospc_resume_e2e race_e2e"
#                     test files (tests/<name>.rs) to cycle through; missing ones are skipped
#   OUT_DIR=perf      where soak-YYYYmmdd-HHMM.md goes (logs of failed runs next to it, in
#                     soak-YYYYmmdd-HHMM-logs/)
#
# Every run gets a fresh 64-bit seed in each suite's replay variable (RINGSYNC_KILL_SEED,
# RINGSYNC_SHUTDOWN_SEED, RINGSYNC_BTRFS_SEED, RINGSYNC_FP_SEED, RINGSYNC_ENOSPC_SEED,
# RINGSYNC_RACE_SEED),
# so a failure is replayed with `RINGSYNC_<X>_SEED=<seed> cargo test --release --features
# failpoints --test <suite>`. CI=1 is set: a missing prerequisite fails a run instead of
# skipping it. The binaries are built once, with `--features failpoints`, before the clock starts.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-30}
SUITES=${SUITES:-kill_e2e shutdown_e2e mirror_btrfs_e2e failpoint_e2e enospc_resume_e2e race_e2e}
OUT_DIR=${OUT_DIR:-perf}
stamp=$(date -u +%Y%m%d-%H%M)
report="$OUT_DIR/soak-$stamp.md"
logs="$OUT_DIR/soak-$stamp-logs"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

declare -A BIN=()
present=()
for s in $SUITES; do
    if [[ -f "tests/$s.rs" ]]; then present+=("$s"); else echo "soak: tests/$s.rs missing, skipped" >&2; fi
done
((${#present[@]})) || { echo "soak: no suite to run" >&2; exit 2; }
args=()
for s in "${present[@]}"; do args+=(--test "$s"); done
echo "soak: building ${present[*]} (--features failpoints)" >&2
cargo test --release --features failpoints --no-run "${args[@]}" 2>"$work/build.log" || {
    cat "$work/build.log" >&2
    exit 1
}
for s in "${present[@]}"; do
    exe=$(grep -o "(target/release/deps/$s-[0-9a-f]*)" "$work/build.log" | tail -1 | tr -d '()')
    [[ -x "$exe" ]] || { echo "soak: no test binary for $s" >&2; exit 1; }
    BIN[$s]=$exe
done

declare -A RUNS=() FAILS=() SECS=()
for s in "${present[@]}"; do RUNS[$s]=0; FAILS[$s]=0; SECS[$s]=0; done
failures=()
start=$(date +%s)
deadline=$((start + MINUTES * 60))
i=0
while (($(date +%s) < deadline)); do
    s=${present[$((i % ${#present[@]}))]}
    i=$((i + 1))
    seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    t0=$(date +%s)
    if env CI=1 RINGSYNC_KILL_SEED="$seed" RINGSYNC_SHUTDOWN_SEED="$seed" RINGSYNC_BTRFS_SEED="$seed" \
        RINGSYNC_FP_SEED="$seed" RINGSYNC_ENOSPC_SEED="$seed" RINGSYNC_RACE_SEED="$seed" \
        "${BIN[$s]}" >"$work/run.log" 2>&1; then
        rc=0
    else
        rc=$?
    fi
    t1=$(date +%s)
    RUNS[$s]=$((RUNS[$s] + 1))
    SECS[$s]=$((SECS[$s] + t1 - t0))
    if ((rc != 0)); then
        FAILS[$s]=$((FAILS[$s] + 1))
        mkdir -p "$logs"
        cp "$work/run.log" "$logs/$s-$seed.log"
        failures+=("| $s | $seed | $rc | \`$logs/$s-$seed.log\` |")
        echo "soak: FAILED $s seed $seed (exit $rc), log $logs/$s-$seed.log" >&2
    else
        echo "soak: ok $s seed $seed ($((t1 - t0)) s)" >&2
    fi
done
end=$(date +%s)

total_runs=0
total_fails=0
for s in "${present[@]}"; do
    total_runs=$((total_runs + RUNS[$s]))
    total_fails=$((total_fails + FAILS[$s]))
done
mkdir -p "$OUT_DIR"
{
    echo "# Soak of the randomized reliability suites ($stamp UTC)"
    echo
    echo "Command: \`MINUTES=$MINUTES SUITES=\"${present[*]}\" tools/soak.sh\` at $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (uncommitted changes)')."
    echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)."
    echo "Ran $(((end - start) / 60)) min $(((end - start) % 60)) s: $total_runs runs, $total_fails failed."
    echo
    echo "Each run is one whole test file (all its tests, each with its default rounds) with a fresh"
    echo "seed; CI=1 (a missing prerequisite fails). Replay a failure with its suite's seed variable."
    echo
    echo "| suite | runs | failed | seconds |"
    echo "|---|---:|---:|---:|"
    for s in "${present[@]}"; do
        echo "| $s | ${RUNS[$s]} | ${FAILS[$s]} | ${SECS[$s]} |"
    done
    if ((${#failures[@]})); then
        echo
        echo "## Failures"
        echo
        echo "| suite | seed | exit | log |"
        echo "|---|---|---:|---|"
        printf '%s\n' "${failures[@]}"
    fi
} >"$report"
cat "$report"
((total_fails == 0))
