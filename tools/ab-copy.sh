#!/usr/bin/env bash
# Paired A/B of two ringsync binaries on the bench-copy datasets: every round runs A and B
# once each (order alternating), each into a fresh destination; medians and the paired ratio
# B/A per dataset, cache mode and --fsync mode. Run as root (drop_caches).
#
#   A=/path/to/old B=/path/to/new [ROUNDS=7] [DATASETS="small mixed big"] [CACHES="warm cold"]
#   [FSYNCS="end none"] [BENCH_DIR=/var/tmp/ringsync-bench] [ARGS_A=...] [ARGS_B=...]
#   [CMD=copy] tools/ab-copy.sh > report.md
#
# ARGS_A / ARGS_B: extra options for A's / B's command line (word-split), e.g. the same binary
# as A and B with ARGS_B=--verify for what an option costs. CMD=mirror times a first mirror
# (into a fresh DST: an initial sync) instead of a copy.
#
# The datasets are the ones tools/bench-copy.sh makes (run it once first). Destinations of a
# block are deleted only after the block, then caches are dropped, so ext4's slow reuse of
# freshly freed inodes (recently_deleted) does not land inside a timed run.
set -euo pipefail
: "${A:?A=old binary}" "${B:?B=new binary}"
ROUNDS=${ROUNDS:-7}
DATASETS=${DATASETS:-small mixed big}
CACHES=${CACHES:-warm cold}
FSYNCS=${FSYNCS:-end none}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ringsync-bench}
DATA=$BENCH_DIR/data-full
OUT=$BENCH_DIR/ab-dst
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ARGS_A=${ARGS_A:-}
ARGS_B=${ARGS_B:-}
CMD=${CMD:-copy}
echo "# ringsync $CMD A/B: A=$A $ARGS_A ($("$A" --version | head -1)), B=$B $ARGS_B ($("$B" --version | head -1))"
echo
echo "$(nproc) CPUs, $(uname -r), $(findmnt -no FSTYPE --target "$BENCH_DIR"); $ROUNDS rounds, order alternating"
echo
echo "| dataset | cache | --fsync | A median s | B median s | B/A median of paired ratios | B/A min..max |"
echo "|---|---|---|---:|---:|---:|---|"
for ds in $DATASETS; do
  for cache in $CACHES; do
    for fs in $FSYNCS; do
      rm -rf "$OUT"; mkdir -p "$OUT"; drop
      [ "$cache" = warm ] && cat $(find "$DATA/$ds" -type f) > /dev/null 2>&1 || true
      ta=(); tb=(); ratios=()
      for r in $(seq 1 "$ROUNDS"); do
        if (( r % 2 )); then order="A B"; else order="B A"; fi
        declare -A t=()
        for w in $order; do
          bin=$A; args=$ARGS_A; [ "$w" = B ] && bin=$B && args=$ARGS_B
          if [ "$cache" = cold ]; then drop; else sync; fi
          s=$(date +%s.%N)
          # shellcheck disable=SC2086 # options word-split on purpose
          "$bin" "$CMD" -q --fsync "$fs" $args "$DATA/$ds" "$OUT/$w-$r"
          e=$(date +%s.%N)
          t[$w]=$(echo "$e - $s" | bc -l)
        done
        ta+=("${t[A]}"); tb+=("${t[B]}"); ratios+=("$(echo "${t[B]} / ${t[A]}" | bc -l)")
        unset t
      done
      ma=$(printf '%s\n' "${ta[@]}" | median); mb=$(printf '%s\n' "${tb[@]}" | median)
      mr=$(printf '%s\n' "${ratios[@]}" | median)
      lo=$(printf '%s\n' "${ratios[@]}" | sort -g | head -1); hi=$(printf '%s\n' "${ratios[@]}" | sort -g | tail -1)
      printf '| %s | %s | %s | %.3f | %.3f | %.3f | %.2f..%.2f |\n' "$ds" "$cache" "$fs" "$ma" "$mb" "$mr" "$lo" "$hi"
    done
  done
done
rm -rf "$OUT"; drop
