#!/usr/bin/env bash
# Check `ringsync copy --bwlimit RATE` against its acceptance item:
#   "over a 10 s copy at 50 MB/s, the average rate is within ±5% and no 100 ms window
#    exceeds 1.5x the limit".
#
# Run as root from anywhere:   sudo tools/bwlimit-check.sh
# Smoke-test the script:       sudo QUICK=1 tools/bwlimit-check.sh
#
# Per case (default: auto ring sync, see CASES), with the same cached source tree:
#   rm -rf the old target; sync; echo 3 > /proc/sys/vm/drop_caches (cold cache, and ext4's
#   recently_deleted() inode-reuse check settled); then
#     ringsync copy -q --fsync none --bwlimit $RATE <case options> $RINGSYNC_ARGS SRC DST
#   started by `tools/iorate.py run`, which samples the process's /proc/PID/io every
#   INTERVAL (10 ms) until it exits; then the target is checked against the source's
#   manifest (every file's relative path, size and sha256, written when the tree was made;
#   nothing of ringsync's is used), and the samples are analysed (tools/iorate.py analyse):
#   average = bytes / (time of last byte - time of first byte); every window from sample i to
#   the first sample >= t_i + WINDOW: max, p99 and median of delta bytes / delta t.
# One line per case (PASS/FAIL), a report OUT_DIR/bwlimit-YYYYmmdd-HHMM.md and the raw
# samples of every case next to it (bwlimit-YYYYmmdd-HHMM-<case>.csv, iorate.py's format).
# Exit status 1 if any case misses a target, exits non-zero, or copies wrongly.
#
# Targets: |average - RATE| <= AVG_TOL % of RATE, and max window <= MAX_WINDOW x RATE.
#
# Source tree ($BENCH_DIR/src-<scale>, cached with a .stamp and a .manifest; rebuilt when the
# layout or the seed changes): RATE x DURATION bytes of incompressible (seeded pseudo-random)
# data, SMALL_SHARE % of it in SMALL_KIB files (the ring path: below 1 MiB) in directories of
# 100, the rest in BIG_FILES equal files (copy_file_range under --data-path auto). Defaults:
# 50M x 12.5 s = 625 MiB = 4 x 125 MiB + 1000 x 128 KiB; QUICK: 20M x 3 s = 60 MiB.
#
# Environment (all optional):
#   RATE=50M               --bwlimit value: bytes/s, K/M/G suffix in powers of 1024
#                          (50M = 52,428,800 B/s); QUICK: 20M
#   DURATION=12.5          seconds the copy takes at RATE (sizes the tree); QUICK: 3
#   CASES="auto ring sync" subset of: auto (--data-path auto), ring (--data-path ring),
#                          cfr (--data-path cfr), sync (--engine sync), uring (--engine uring)
#   BIG_FILES=4 SMALL_SHARE=20 SMALL_KIB=128   tree layout (see above)
#   BENCH_DIR=/var/tmp/ringsync-bench/bwlimit  source trees (cached), target, logs
#   OUT_DIR=perf           where the report and CSVs go; QUICK: $BENCH_DIR/quick-reports
#   QUICK=1                small tree, RATE=20M, DURATION=3 (unless set)
#   RINGSYNC_BIN=target/release/ringsync   binary to check. Never built here (run
#                          `cargo build --release` first); it must list --bwlimit in
#                          `copy --help`. It is copied to a temporary directory first, so a
#                          rebuild during the run doesn't change what is measured.
#   RINGSYNC_ARGS=""       extra options for every ringsync command line (before SRC DST)
#   INTERVAL=0.01          seconds between samples
#   WINDOW=0.1             window length, seconds
#   AVG_TOL=5              allowed average error, % of RATE
#   MAX_WINDOW=1.5         allowed max window, x RATE
#   SEED=20240601          tree seed (changing it rebuilds the tree)
#   KEEP=0                 1: keep the last case's target ($BENCH_DIR/dst) afterwards
# Per-run logs (ringsync's stdout/stderr, iorate.py's meta and analysis JSON per case):
# $BENCH_DIR/logs/<full|quick>-<report name>/.
#
# How rates are measured. /proc/PID/io is per process: the live threads plus every thread
# that already exited (io_uring's iou-wrk workers are threads of the process: they show in
# /proc/PID/task and their bytes are in the total). What was checked on this machine (Linux
# 6.18, ext4 without a journal on a virtio disk, read_ahead_kb 8192) with dd, fio, python
# stand-ins and per-thread samples of ringsync itself:
#   write_bytes  counted when the process turns a page-cache page dirty, i.e. at the write:
#                a python writer doing a 1 MiB write() every 50 ms shows each MiB in
#                write_bytes in the same 10 ms sample as in wchar. The same for
#                copy_file_range (ext4 has no copy_file_range op; the kernel's splice copy
#                dirties the target pages in the caller), for io_uring buffered writes
#                (fio --ioengine=io_uring, with --force_async=1 too: the bytes land on the
#                iou-wrk threads, ringsync's ring path does the same) and for O_DIRECT writes
#                (at submission). Extra: metadata blocks the process dirties itself (no
#                journal): +368 KiB for 1000 x 128 KiB files (0.29%), +296 KiB for 1000
#                empty files, +4 KiB for an atime update. So write_bytes = data written (+ a
#                little metadata), on every data path: the primary measure.
#   read_bytes   counted when the process submits a block read (submit_bio): cold data
#                plus readahead and metadata, 0 for cached data; a cold 1 MiB dd read gave
#                3.2 MiB, and a copy_file_range copy throttled to 64 MiB/s had smooth
#                write_bytes (max 100 ms window 1.21x) but read_bytes windows up to 2.5x.
#                Readahead runs ahead in large steps: reported, not judged.
#   rchar/wchar  bytes through read/write-family syscalls: read/write/pread/pwrite and, on
#                this kernel, copy_file_range too (256 MiB copied: both +256 MiB); never io_uring
#                reads and writes (fio io_uring: both stay at fio's own few KiB). Reported only.
#   iorate.py run reads the counters a last time from the exited process (a zombie until it
#   reaps it): a 5 ms `dd` of 10 MiB shows all 10 MiB.
set -euo pipefail

TOOL=bwlimit-check
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tool_args "$@"

IORATE="$TOOLS_DIR/iorate.py"

# Record the exact invocation (user-set variables + command) before defaulting.
record_cmdline "$@" -- QUICK RATE DURATION CASES BIG_FILES SMALL_SHARE SMALL_KIB BENCH_DIR OUT_DIR RINGSYNC_BIN RINGSYNC_ARGS INTERVAL WINDOW AVG_TOL MAX_WINDOW SEED KEEP

QUICK=${QUICK:-0}
if [[ "$QUICK" == 1 ]]; then
    SCALE=quick; RATE=${RATE:-20M}; DURATION=${DURATION:-3}
else
    SCALE=full; RATE=${RATE:-50M}; DURATION=${DURATION:-12.5}
fi
CASES=${CASES:-auto ring sync}
BIG_FILES=${BIG_FILES:-4}
SMALL_SHARE=${SMALL_SHARE:-20}
SMALL_KIB=${SMALL_KIB:-128}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ringsync-bench/bwlimit}
if [[ "$QUICK" == 1 ]]; then OUT_DIR=${OUT_DIR:-$BENCH_DIR/quick-reports}; else OUT_DIR=${OUT_DIR:-$REPO/perf}; fi
RINGSYNC_BIN=${RINGSYNC_BIN:-$REPO/target/release/ringsync}
RINGSYNC_ARGS=${RINGSYNC_ARGS:-}
read -r -a RS_EXTRA <<<"$RINGSYNC_ARGS"
INTERVAL=${INTERVAL:-0.01}
WINDOW=${WINDOW:-0.1}
AVG_TOL=${AVG_TOL:-5}
MAX_WINDOW=${MAX_WINDOW:-1.5}
SEED=${SEED:-20240601}
KEEP=${KEEP:-0}

NUM='^[0-9]+(\.[0-9]+)?$'
[[ "$RATE" =~ ^[0-9]+[KMG]?$ ]] || die "RATE must be an integer with an optional K/M/G suffix (got '$RATE')"
for v in DURATION INTERVAL WINDOW AVG_TOL MAX_WINDOW; do
    [[ "${!v}" =~ $NUM ]] || die "$v must be a positive number (got '${!v}')"
done
for v in BIG_FILES SMALL_SHARE SMALL_KIB; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((SMALL_SHARE <= 100)) || die "SMALL_SHARE is a percentage (got $SMALL_SHARE)"
((SMALL_KIB > 0 && SMALL_KIB < 1024)) || die "SMALL_KIB must be 1..1023 (files below 1 MiB take the ring path)"
((BIG_FILES > 0 || SMALL_SHARE == 100)) || die "BIG_FILES=0 needs SMALL_SHARE=100"
[[ "$SEED" =~ ^[A-Za-z0-9_.-]+$ ]] || die "SEED must be alphanumeric (got '$SEED')"
[[ "$KEEP" =~ ^[01]$ ]] || die "KEEP must be 0 or 1"
declare -A CASE_OPTS=(
    [auto]="--data-path auto" [ring]="--data-path ring" [cfr]="--data-path cfr"
    [sync]="--engine sync" [uring]="--engine uring"
)
read -r -a CASE_LIST <<<"$CASES"
((${#CASE_LIST[@]})) || die "CASES must not be empty"
for c in "${CASE_LIST[@]}"; do [[ -n "${CASE_OPTS[$c]:-}" ]] || die "unknown case '$c' (auto ring cfr sync uring)"; done
[[ "$(id -u)" == 0 ]] || die "must run as root (drop_caches)"
command -v python3 >/dev/null || die "python3 is required"
[[ -f "$IORATE" ]] || die "$IORATE is missing"
[[ -x "$RINGSYNC_BIN" ]] || die "ringsync binary '$RINGSYNC_BIN' not found or not executable (build it: cargo build --release)"

unit() { case "$1" in *K) echo 1024 ;; *M) echo 1048576 ;; *G) echo 1073741824 ;; *) echo 1 ;; esac; }
RATE_BPS=$(( ${RATE%[KMG]} * $(unit "$RATE") ))
((RATE_BPS > 0)) || die "RATE must be positive"

# Layout: total = RATE x DURATION; SMALL_SHARE % in SMALL_KIB files, the rest in BIG_FILES
# equal files of whole MiB.
read -r SMALL_N BIG_SIZE < <(awk -v r="$RATE_BPS" -v d="$DURATION" -v s="$SMALL_SHARE" -v k="$SMALL_KIB" -v b="$BIG_FILES" 'BEGIN {
    total = r * d; n = int(total * s / 100 / (k * 1024) + 0.5)
    big = (b > 0) ? int((total - n * k * 1024) / b / 1048576) * 1048576 : 0
    print n, big }')
SMALL_SIZE=$((SMALL_KIB * 1024))
TREE_BYTES=$((SMALL_N * SMALL_SIZE + BIG_FILES * BIG_SIZE))
((TREE_BYTES > 0)) || die "the tree would be empty (RATE x DURATION too small)"
((BIG_FILES == 0 || BIG_SIZE >= 1048576)) || die "big files would be under 1 MiB (RATE x DURATION too small)"
LAYOUT="${BIG_FILES}x${BIG_SIZE}+${SMALL_N}x${SMALL_SIZE}"

SRC="$BENCH_DIR/src-$SCALE"
MANIFEST="$SRC.manifest"
DST="$BENCH_DIR/dst"
mkdir -p "$BENCH_DIR" "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
# Per-run logs: $BENCH_DIR/logs/<scale>-<report name>, never shared with another run.
new_report bwlimit
BASE="${REPORT%.md}"
LOG_DIR="$BENCH_DIR/logs/$SCALE-$(basename "$BASE")"
mkdir -p "$LOG_DIR"
WORK=$(mktemp -d "$BENCH_DIR/tmp.XXXXXX")
cleanup() {
    if [[ "$KEEP" == 1 ]]; then
        log "KEEP=1: last target left in $DST"
    else
        rm -rf "$DST"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------- 1. binary
# Check a private copy: target/release may be rebuilt while this runs.
private_binary "$WORK"
"$RS" copy --help 2>&1 | grep -q -e '--bwlimit' || die "'$RINGSYNC_BIN copy --help' doesn't mention --bwlimit"
log "ringsync: $RINGSYNC_BIN: $RS_DESC"

# ---------------------------------------------------------------- 2. source tree
WANT="layout=$LAYOUT seed=$SEED format=1"
if [[ -f "$SRC.stamp" && -d "$SRC" && -f "$MANIFEST" && "$(cat "$SRC.stamp")" == "$WANT" ]]; then
    log "source tree: cached ($SRC, $LAYOUT)"
else
    log "source tree: generating $SRC ($LAYOUT, $((TREE_BYTES >> 20)) MiB)"
    rm -rf "$SRC" "$SRC.tmp" "$SRC.stamp" "$MANIFEST"
    free_b=$(df -P -B1 "$BENCH_DIR" | awk 'NR==2 {print $4}')
    ((TREE_BYTES * 3 * 10 <= free_b * 9)) || die "need $((TREE_BYTES * 3 >> 20)) MiB free under $BENCH_DIR (tree + target + slack), have $((free_b >> 20)) MiB"
    python3 - "$SRC.tmp" "$MANIFEST" "$BIG_FILES" "$BIG_SIZE" "$SMALL_N" "$SMALL_SIZE" "$SEED" <<'EOF' || die "generating the source tree failed"
import hashlib, os, random, sys
dest, manifest, nbig, bigsz, nsmall, smallsz, seed = sys.argv[1:8]
nbig, bigsz, nsmall, smallsz = int(nbig), int(bigsz), int(nsmall), int(smallsz)
rng = random.Random("bwlimit:" + seed)
os.makedirs(dest)
entries = []
def write(rel, size):
    h = hashlib.sha256()
    with open(os.path.join(dest, rel), "wb") as f:
        left = size
        while left:
            b = rng.randbytes(min(left, 4 << 20))
            f.write(b)
            h.update(b)
            left -= len(b)
    entries.append((rel, size, h.hexdigest()))
os.mkdir(os.path.join(dest, "big"))
for i in range(nbig):
    write("big/big%02d.bin" % i, bigsz)
for i in range(nsmall):
    d = "small/d%03d" % (i // 100)
    if i % 100 == 0:
        os.makedirs(os.path.join(dest, d))
    write("%s/f%03d.bin" % (d, i % 100), smallsz)
with open(manifest, "w") as m:
    for rel, size, sha in sorted(entries):
        m.write("%s\t%d\t%s\n" % (sha, size, rel))
EOF
    mv "$SRC.tmp" "$SRC"
    sync
    echo "$WANT" >"$SRC.stamp"
fi
free_b=$(df -P -B1 "$BENCH_DIR" | awk 'NR==2 {print $4}')
((TREE_BYTES * 10 <= free_b * 9)) || die "the target needs $((TREE_BYTES >> 20)) MiB, only $((free_b >> 20)) MiB free under $BENCH_DIR"

# ---------------------------------------------------------------- 3. cases
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
drop_caches 2>/dev/null || die "cannot write /proc/sys/vm/drop_caches"

# verify_copy DST: compare every regular file under DST with the manifest (paths, sizes,
# sha256; no extra or missing entries). Prints one line; non-zero if it differs.
verify_copy() {
    python3 - "$MANIFEST" "$1" <<'EOF'
import hashlib, os, sys
manifest, dst = sys.argv[1:3]
want = {}
for line in open(manifest):
    sha, size, rel = line.rstrip("\n").split("\t")
    want[rel] = (int(size), sha)
have, other = {}, []
for root, dirs, files in os.walk(dst):
    for name in files:
        p = os.path.join(root, name)
        rel = os.path.relpath(p, dst)
        if os.path.islink(p) or not os.path.isfile(p):
            other.append(rel)
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while True:
                b = f.read(4 << 20)
                if not b:
                    break
                h.update(b)
        have[rel] = (os.path.getsize(p), h.hexdigest())
missing = sorted(set(want) - set(have))
extra = sorted(set(have) - set(want)) + other
bad = sorted(r for r in set(want) & set(have) if want[r] != have[r])
nbytes = sum(s for s, _ in have.values())
if missing or extra or bad:
    print("DIFFERS: %d missing, %d extra, %d with other size/content (first: %s)" % (
        len(missing), len(extra), len(bad), (missing + extra + bad)[0]))
    sys.exit(1)
print("OK: %d files, %d bytes, sizes and sha256 equal the manifest" % (len(have), nbytes))
EOF
}

FAILURES=0
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
for c in "${CASE_LIST[@]}"; do
    read -r -a opts <<<"${CASE_OPTS[$c]}"
    csv="$BASE-$c.csv"
    cmd=("$RS" copy -q --fsync none --bwlimit "$RATE" "${opts[@]}" "${RS_EXTRA[@]}" "$SRC" "$DST")
    rm -rf "$DST"
    drop_caches
    log "case $c: ${cmd[*]/#$WORK\//}"
    rc=0
    python3 "$IORATE" run "$csv" --interval "$INTERVAL" --meta "$LOG_DIR/$c.meta.json" -- "${cmd[@]}" \
        >"$LOG_DIR/$c.stdout" 2>"$LOG_DIR/$c.stderr" || rc=$?
    if [[ ! -f "$LOG_DIR/$c.meta.json" ]]; then
        FAILURES=$((FAILURES + 1))
        log "======== case $c: the sampler failed (see $LOG_DIR/$c.stderr)"
        printf '%s\t%s\t%s\t%s\n' "$c" "${CASE_OPTS[$c]}" "$rc" "NOT RUN (sampler failed)" >>"$RESULTS"
        continue
    fi
    if check=$(verify_copy "$DST" 2>&1); then :; else FAILURES=$((FAILURES + 1)); fi
    if ((rc != 0)); then
        FAILURES=$((FAILURES + 1))
        log "======== case $c: ringsync exited with status $rc: $(head -c 300 "$LOG_DIR/$c.stderr")"
    fi
    for m in write_bytes read_bytes; do
        python3 "$IORATE" analyse "$csv" --limit "$RATE_BPS" --window "$WINDOW" --metric "$m" \
            --avg-tol "$AVG_TOL" --max-window "$MAX_WINDOW" --json >"$LOG_DIR/$c.$m.json" || true
    done
    printf '%s\t%s\t%s\t%s\n' "$c" "${CASE_OPTS[$c]}" "$rc" "$check" >>"$RESULTS"
done

# ---------------------------------------------------------------- 4. report
SUMMARY_TXT="$WORK/summary.txt"
RESULTS_MD="$WORK/results.md"
TARGET_FAILS=0
python3 - "$RESULTS" "$LOG_DIR" "$BASE" "$RATE_BPS" "$TREE_BYTES" "$AVG_TOL" "$MAX_WINDOW" "$WINDOW" \
    "$SUMMARY_TXT" "$RESULTS_MD" <<'EOF' || TARGET_FAILS=$?
import json, os, sys
res_path, log_dir, base, rate, tree, tol, maxw, window, txt_path, md_path = sys.argv[1:11]
rate, tree, tol, maxw, window = float(rate), int(tree), float(tol), float(maxw), float(window)
MiB = 1 << 20
def load(p):
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None
def f(x, fmt):
    return "-" if x is None else fmt % x
rows, series, fails = [], [], 0
for line in open(res_path):
    case, opts, rc, check = line.rstrip("\n").split("\t")
    meta = load(os.path.join(log_dir, case + ".meta.json")) or {}
    w = load(os.path.join(log_dir, case + ".write_bytes.json")) or {}
    r = load(os.path.join(log_dir, case + ".read_bytes.json")) or {}
    ok_copy = check.startswith("OK")
    ok = rc == "0" and ok_copy and bool(w.get("pass_avg")) and bool(w.get("pass_max"))
    fails += not ok
    why = []
    if rc != "0": why.append("exit %s" % rc)
    if not ok_copy: why.append("copy differs")
    if w and not w.get("pass_avg"): why.append("average")
    if w and not w.get("pass_max"): why.append("max window")
    if not w: why.append("no samples")
    verdict = "PASS" if ok else "FAIL (%s)" % ", ".join(why)
    rows.append(dict(case=case, opts=opts, rc=rc, check=check, meta=meta, w=w, r=r, verdict=verdict))
    if w.get("per_second_x"):
        series.append((case, w["per_second_x"]))

with open(txt_path, "w") as out:
    for x in rows:
        w = x["w"]
        out.write("%-5s %-18s avg %s MiB/s (%s%%)  max %gms window %sx  p99 %sx  wall %s s  exit %s  copy %s  %s\n" % (
            x["case"], x["opts"], f(w.get("avg_rate") and w["avg_rate"] / MiB, "%.2f"), f(w.get("avg_err_pct"), "%+.2f"),
            window * 1e3, f(w.get("max_window_x"), "%.3f"), f(w.get("p99_window_x"), "%.3f"),
            f(x["meta"].get("wall_s"), "%.2f"), x["rc"], "OK" if x["check"].startswith("OK") else "DIFFERS", x["verdict"]))

with open(md_path, "w") as out:
    out.write("## Results\n\n")
    out.write("Counter judged: `write_bytes` of `/proc/PID/io` (see Method). Limit %.2f MiB/s (%d B/s); targets:\n"
              "average within ±%g%%, max %g ms window <= %gx the limit.\n\n" % (rate / MiB, rate, tol, window * 1e3, maxw))
    hdr = ["case", "options", "exit", "copy", "wall s", "first byte s", "span s", "write_bytes - data KiB",
           "avg MiB/s", "avg error", "max window", "max at (after first byte)", "p99 window", "median window",
           "first window", "largest 1-sample step", "verdict"]
    out.write("| " + " | ".join(hdr) + " |\n|" + "|".join(["---", "---", "---:", "---", "---:", "---:", "---:", "---:",
              "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---"]) + "|\n")
    for x in rows:
        w = x["w"]
        out.write("| %s | `%s` | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | **%s** |\n" % (
            x["case"], x["opts"], x["rc"], "OK" if x["check"].startswith("OK") else "DIFFERS",
            f(x["meta"].get("wall_s"), "%.3f"), f(w.get("first_byte_s"), "%.3f"), f(w.get("span_s"), "%.3f"),
            f(w.get("total_bytes") and (w["total_bytes"] - tree) / 1024, "%+.0f"),
            f(w.get("avg_rate") and w["avg_rate"] / MiB, "%.2f"), f(w.get("avg_err_pct"), "%+.2f%%"),
            f(w.get("max_window_x"), "%.3fx"),
            "-" if w.get("max_window_at_s") is None else "%.3f s (%+.3f s), %.1f ms" % (
                w["max_window_at_s"], w["max_window_from_first_byte_s"], 1e3 * w["max_window_len_s"]),
            f(w.get("p99_window_x"), "%.3fx"), f(w.get("p50_window_x"), "%.3fx"), f(w.get("first_window_x"), "%.3fx"),
            "-" if w.get("max_step_bytes") is None else "%d KiB (%.0f ms of limit) at %.3f s" % (
                w["max_step_bytes"] // 1024, w["max_step_ms_of_limit"], w["max_step_at_s"]),
            x["verdict"]))
    out.write("\nwall = start of `ringsync` to its exit; first byte / span: of `write_bytes` (span = last byte - first\n"
              "byte); first window = the %g ms window from the last sample before the first byte; write_bytes - data:\n"
              "the counter's total minus the tree's %d bytes (metadata blocks the process dirtied itself).\n\n" % (window * 1e3, tree))
    out.write("Other counters (reported, not judged):\n\n")
    out.write("| case | read_bytes MiB | read_bytes avg MiB/s | read_bytes max window | read_bytes p99 | rchar MiB | rchar avg MiB/s | rchar max window | wchar MiB | sampling interval median / p99 / max ms |\n")
    out.write("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    for x in rows:
        r, w = x["r"], x["w"]
        oc = w.get("other_counters", {})
        rc_ = oc.get("rchar", {})
        out.write("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n" % (
            x["case"], f(r.get("total_bytes") and r["total_bytes"] / MiB, "%.2f"),
            f(r.get("avg_rate") and r["avg_rate"] / MiB, "%.2f"), f(r.get("max_window_x"), "%.3fx"),
            f(r.get("p99_window_x"), "%.3fx"),
            f(rc_.get("total_bytes") is not None and rc_["total_bytes"] / MiB or None, "%.2f"),
            f(rc_.get("avg_rate") and rc_["avg_rate"] / MiB, "%.2f"), f(rc_.get("max_window_x"), "%.3fx"),
            f(oc.get("wchar", {}).get("total_bytes") is not None and oc["wchar"]["total_bytes"] / MiB or None, "%.2f"),
            "-" if w.get("interval_median_s") is None else "%.1f / %.1f / %.1f" % (
                1e3 * w["interval_median_s"], 1e3 * w["interval_p99_s"], 1e3 * w["interval_max_s"])))
    out.write("\nrchar counts pread/read and copy_file_range but not io_uring reads (so near 0 for the ring path);\n"
              "read_bytes counts block reads when submitted, readahead included (bursty by nature).\n")
    out.write("\nCopy checks (target against the source manifest: paths, sizes, sha256):\n\n")
    for x in rows:
        out.write("- %s: %s\n" % (x["case"], x["check"]))
    if series:
        out.write("\nwrite_bytes per second from the first byte, x limit (a last bin under 0.5 s is left out):\n\n")
        for case, s in series:
            out.write("- %s: %s\n" % (case, " ".join("%.3f" % v for v in s)))
    out.write("\n")
sys.exit(1 if fails else 0)
EOF
((TARGET_FAILS == 0)) || FAILURES=$((FAILURES + 1))

fsdev=$(findmnt -n -o SOURCE -T "$BENCH_DIR" 2>/dev/null || echo '?')
journal="?"
if [[ -r "/sys/fs/ext4/${fsdev#/dev/}/journal_task" ]]; then
    jt=$(cat "/sys/fs/ext4/${fsdev#/dev/}/journal_task")
    if [[ "$jt" == "<none>" ]]; then journal="no journal"; else journal="journal ($jt)"; fi
fi
ra="?"
if [[ -r "/sys/block/${fsdev#/dev/}/queue/read_ahead_kb" ]]; then ra="$(cat "/sys/block/${fsdev#/dev/}/queue/read_ahead_kb") KiB"; fi
fail=()
((FAILURES == 0)) || fail=("**FAILED**: at least one case missed a target, exited non-zero or copied wrongly (see the table).")
{
    report_head "ringsync copy --bwlimit check" "small tree, short copies; not the acceptance measurement." "${fail[@]}"
    echo "Per case: \`ringsync copy -q --fsync none --bwlimit $RATE <options>${RS_EXTRA[*]:+ ${RS_EXTRA[*]}} SRC DST\`"
    echo "($RATE = $RATE_BPS B/s), cold cache, fresh target."
    echo
    cat "$RESULTS_MD"
    echo "## Machine"
    echo
    echo "- nproc: $(nproc); CPU: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "- memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "- kernel: $(uname -r)"
    echo "- \`$BENCH_DIR\`: $(findmnt -n -o SOURCE,FSTYPE,OPTIONS -T "$BENCH_DIR" 2>/dev/null | tr -s ' ' || echo '?'); $journal; read_ahead_kb: $ra"
    echo "- ringsync: \`$RINGSYNC_BIN\`: $RS_DESC"
    echo "- python3: $(first_line python3 --version)"
    echo
    echo "## Method"
    echo
    echo "- Source tree \`$SRC\` (cached, seed $SEED): $BIG_FILES x $((BIG_SIZE >> 20)) MiB files (copy_file_range under"
    echo "  \`--data-path auto\`) and $SMALL_N x $SMALL_KIB KiB files in directories of 100 (ring path), incompressible"
    echo "  pseudo-random data, $((TREE_BYTES >> 20)) MiB in all = $DURATION s at the limit."
    echo "- Before each case (untimed): \`rm -rf DST; sync; echo 3 > /proc/sys/vm/drop_caches\`. \`--fsync none\`, so"
    echo "  the copy ends when the data is in the page cache and the flusher's writeback is not the process's."
    echo "- \`tools/iorate.py run\` starts ringsync and reads \`/proc/PID/io\` every $INTERVAL s (time.monotonic, midpoint"
    echo "  of the read; the final counters from the zombie before reaping it). The file covers the whole"
    echo "  process: live threads, exited threads and io_uring's iou-wrk workers."
    echo "- Judged counter: \`write_bytes\`, counted when the process dirties a page-cache page, i.e. at each write,"
    echo "  whatever the data path (write/pwrite, copy_file_range's in-kernel copy, io_uring buffered writes,"
    echo "  inline or from iou-wrk threads), plus ~0.3 KiB per created file of metadata blocks on this ext4"
    echo "  without a journal. \`read_bytes\` counts block reads as submitted (cold data plus readahead of up to"
    echo "  read_ahead_kb, so it leads the data and comes in bursts). \`rchar\`/\`wchar\` don't see io_uring I/O"
    echo "  (they do see pread/pwrite and, on this kernel, copy_file_range). Checked on this machine with dd, fio"
    echo "  (\`--ioengine=io_uring\`, with and without \`--force_async\`) and python stand-ins; details in"
    echo "  \`tools/bwlimit-check.sh --help\`."
    echo "- average = write_bytes moved between first and last byte / (last byte - first byte); first byte ="
    echo "  midpoint between the last sample without data and the first with, last byte = midpoint between the last sample below the"
    echo "  total and the first at it, ignoring up to 64 KiB at either end (metadata pages dirtied before the data"
    echo "  starts or after it ends; the report shows how much that was). Windows: from every sample i to the first sample j with t_j >= t_i + $WINDOW s,"
    echo "  rate = delta bytes / (t_j - t_i) (so a window lasts ${WINDOW} s plus up to one sampling interval); max over"
    echo "  every window ending after the first byte, p99/median over those starting between the first and"
    echo "  last byte. Past the exit the counter stays put (a window running off the end counts ${WINDOW} s)."
    echo "- Copy check: every file of DST against the manifest written with the tree (relative path, size,"
    echo "  sha256; no missing or extra files), independent of ringsync."
    echo "- Raw samples: \`$(basename "$BASE")-<case>.csv\` (\`t,read_bytes,write_bytes,rchar,wchar,syscr,syscw,cancelled_write_bytes\`);"
    echo "  re-analyse with \`tools/iorate.py analyse FILE --limit $RATE\`. Logs: \`$LOG_DIR\`."
} >"$REPORT"

echo
cat "$SUMMARY_TXT"
echo
log "report: $REPORT"
log "raw samples: $BASE-<case>.csv"
if ((FAILURES)); then
    log "======== FAILED: see the report"
    exit 1
fi
