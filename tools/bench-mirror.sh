#!/usr/bin/env bash
# Benchmark `ringsync mirror` against `rsync -aHAX --delete`.
#
# Run as root from anywhere:   sudo tools/bench-mirror.sh
# Smoke-test the script:       sudo QUICK=1 tools/bench-mirror.sh
#
# Two scenarios, each on private copies made once per run (outside the timed
# region) in $BENCH_DIR/mirror-work: SRC, DST_R (ringsync's target) and DST_S
# (rsync's target), both brought up to date before anything is timed.
#   change    the `mixed` dataset (~1 GiB, ~12.5k entries). Every timed command
#             syncs exactly one fresh mutation of SRC (~1% of the entries:
#             tools/mutate-tree.py, seeded by cache mode, round and pair), and the
#             rsync run of a pair syncs the same mutation as its ringsync run.
#   nochange  the `small` dataset (50,000 x 4 KiB files): both targets already
#             equal SRC; plus one run per cache mode right after removing the
#             record xattr from DST_R ("full compare (no record)").
# Pairs (ratio = median ringsync / median rsync, per scenario, cache and pair):
#   nofsync   `ringsync mirror --fsync none -q SRC DST_R`  vs `rsync -aHAX --delete SRC/ DST_S/`
#   fsync     `ringsync mirror -q SRC DST_R` (--fsync end)  vs the same rsync `&& sync` (timed)
# Targets (issue 15, goal 3): change <= 0.3 warm, <= 0.5 cold; nochange <= 0.2.
# With SRC_FS=btrfs (goal 4): change <= 0.1, nochange <= 0.05.
#
# Environment (all optional):
#   RUNS=5                 rounds per scenario x cache mode (change: one mutation
#                          per pair per round)
#   BENCH_DIR=/var/tmp/ringsync-bench   datasets (cached, shared with bench-copy.sh),
#                          working trees (mirror-work/), logs
#   SCENARIOS="change nochange"         subset of those
#   CACHES="warm cold"                  subset of: warm cold
#   PAIRS="nofsync fsync"               subset of those
#   CHANGE_DATASET=mixed   dataset the change scenario mutates (small or mixed)
#   NOCHANGE_DATASET=small dataset of the no-change scenario (small or mixed)
#   FRACTION=0.01          share of SRC's entries each mutation changes (at least
#                          one entry of every kind, so more on tiny trees)
#   MUTATE_SEED=1          mutation seed (same seed + same dataset = same mutations)
#   QUICK=1                tiny datasets, RUNS=1 and VERIFY=1 (unless set), report
#                          goes to $BENCH_DIR/quick-reports unless OUT_DIR is set
#   RINGSYNC_BIN=...       binary to bench (default: target/release/ringsync,
#                          built with `cargo build --release`; when RINGSYNC_BIN
#                          is set, even to that path, nothing is built). It is
#                          copied to a temporary directory first, so a rebuild
#                          during the run doesn't change what is measured.
#   RINGSYNC_ARGS=""       extra options for every timed ringsync command line,
#                          inserted before SRC DST, e.g. "--engine sync"
#   OUT_DIR=perf           where mirror-YYYYmmdd-HHMM.{md,csv} are written
#   VERIFY=0               1: also compare both targets with SRC after every round
#                          (they are always compared after each scenario x cache
#                          block, and with tools/treecmp.py at the end)
#   INSTALL=1              0: don't apt-get install a missing rsync
#   KEEP=0                 1: keep $BENCH_DIR/mirror-work afterwards (inspection;
#                          also kept after a failure); the next run deletes it first
#   SEED=20240601          dataset seed (as in bench-copy.sh; changing it
#                          regenerates the datasets)
#   SRC_FS=                btrfs: each scenario's SRC is a btrfs subvolume on a
#                          loop-mounted image ($BENCH_DIR/mirror-src-btrfs.img,
#                          mounted under mirror-work/), so ringsync takes its
#                          O(changes) path; the targets stay under $BENCH_DIR.
#                          Default: SRC under $BENCH_DIR too.
#
# Each round (change): per pair, mutate SRC; `sync`; wait for the next wall-clock
# second (rsync compares mtimes in whole seconds by default and would keep its own
# mtime on a directory it changes within the second SRC's copy changed); then per
# tool, in an order that alternates from round to round: `sync`, cold: drop_caches,
# time the command. The pair order rotates too. After the pair, an untimed
# `ringsync mirror` catches DST_R up on the SRC atimes rsync's reads bumped
# (relatime; ringsync preserves atimes and reads with O_NOATIME), so the next
# timed ringsync run syncs just its own mutation. warm: before each round, every
# entry of SRC, DST_R and DST_S is stat'ed and SRC's data read, without touching
# atimes (ringsync preserves atimes, so the script's own reads must not change
# them; see tools/mutate-tree.py). A tool exiting non-zero, or a target that
# doesn't equal SRC, fails the script (exit 1) after the report is written.
set -euo pipefail

TOOL=bench-mirror
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tool_args "$@"

MUTATE="$TOOLS_DIR/mutate-tree.py"
RECORD_XATTR=user.ringsync.mirror

# Record the exact invocation (user-set variables + command) before defaulting.
record_cmdline "$@" -- QUICK RUNS BENCH_DIR SCENARIOS CACHES PAIRS CHANGE_DATASET NOCHANGE_DATASET FRACTION MUTATE_SEED RINGSYNC_BIN RINGSYNC_ARGS OUT_DIR VERIFY INSTALL KEEP SEED SRC_FS

QUICK=${QUICK:-0}
if [[ "$QUICK" == 1 ]]; then
    SCALE=quick; RUNS=${RUNS:-1}; VERIFY=${VERIFY:-1}
else
    SCALE=full; RUNS=${RUNS:-5}; VERIFY=${VERIFY:-0}
fi
BENCH_DIR=${BENCH_DIR:-/var/tmp/ringsync-bench}
SCENARIOS=${SCENARIOS:-change nochange}
CACHES=${CACHES:-warm cold}
PAIRS=${PAIRS:-nofsync fsync}
CHANGE_DATASET=${CHANGE_DATASET:-mixed}
NOCHANGE_DATASET=${NOCHANGE_DATASET:-small}
FRACTION=${FRACTION:-0.01}
MUTATE_SEED=${MUTATE_SEED:-1}
if [[ -n "${RINGSYNC_BIN:-}" ]]; then BUILD_RINGSYNC=0; else BUILD_RINGSYNC=1; fi
RINGSYNC_BIN=${RINGSYNC_BIN:-$REPO/target/release/ringsync}
if [[ "$QUICK" == 1 ]]; then OUT_DIR=${OUT_DIR:-$BENCH_DIR/quick-reports}; else OUT_DIR=${OUT_DIR:-$REPO/perf}; fi
INSTALL=${INSTALL:-1}
KEEP=${KEEP:-0}
SEED=${SEED:-20240601}
RINGSYNC_ARGS=${RINGSYNC_ARGS:-}
read -r -a RS_EXTRA <<<"$RINGSYNC_ARGS"
SRC_FS=${SRC_FS:-}
[[ "$SRC_FS" =~ ^(|btrfs)$ ]] || die "SRC_FS must be empty or btrfs (got '$SRC_FS')"
# Per scenario:cache; "*" matches any cache.
if [[ "$SRC_FS" == btrfs ]]; then
    TARGETS="change:*=0.1 nochange:*=0.05"
else
    TARGETS="change:warm=0.3 change:cold=0.5 nochange:*=0.2"
fi

[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
[[ "$FRACTION" =~ ^0?\.[0-9]+$ ]] || die "FRACTION must be a decimal fraction like 0.01 (got '$FRACTION')"
[[ "$MUTATE_SEED" =~ ^[A-Za-z0-9_.-]+$ ]] || die "MUTATE_SEED must be alphanumeric (got '$MUTATE_SEED')"
[[ "$VERIFY" =~ ^[01]$ ]] || die "VERIFY must be 0 or 1"
for s in $SCENARIOS; do [[ "$s" =~ ^(change|nochange)$ ]] || die "unknown scenario '$s' (change nochange)"; done
for c in $CACHES; do [[ "$c" =~ ^(warm|cold)$ ]] || die "unknown cache mode '$c' (warm cold)"; done
for p in $PAIRS; do [[ "$p" =~ ^(nofsync|fsync)$ ]] || die "unknown pair '$p' (nofsync fsync)"; done
for d in "$CHANGE_DATASET" "$NOCHANGE_DATASET"; do
    [[ "$d" =~ ^(small|mixed)$ ]] || die "datasets must be small or mixed (got '$d')"
done
[[ "$(id -u)" == 0 ]] || die "must run as root (drop_caches, ownership, O_NOATIME reads)"
command -v python3 >/dev/null || die "python3 is required"
[[ -f "$MUTATE" ]] || die "$MUTATE is missing"

read -r -a SCENARIO_LIST <<<"$SCENARIOS"
read -r -a CACHE_LIST <<<"$CACHES"
read -r -a PAIR_LIST <<<"$PAIRS"
((${#SCENARIO_LIST[@]} && ${#CACHE_LIST[@]} && ${#PAIR_LIST[@]})) || die "SCENARIOS, CACHES and PAIRS must not be empty"

DATA="$BENCH_DIR/data-$SCALE"
WS="$BENCH_DIR/mirror-work"
mkdir -p "$DATA" "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
new_report mirror
CSV="${REPORT%.md}.csv"
LOG_DIR="$BENCH_DIR/logs/$(basename "${REPORT%.md}")"
mkdir -p "$LOG_DIR"
WORK=$(mktemp -d "$BENCH_DIR/tmp.XXXXXX")
MUT_TSV="$WORK/mutations.tsv"
VERIFY_TSV="$WORK/verify.tsv"
: >"$MUT_TSV"
: >"$VERIFY_TSV"

# Mass deletes (same convention and stamp file as bench-copy.sh): ext4 won't
# reuse an inode freed < 60 s ago (360 s while its inode-table block is dirty;
# recently_deleted() in fs/ext4/ialloc.c), which makes creating many files right
# after deleting many slow. Only ~1% of the entries change per timed run here,
# so nothing big is deleted between timed runs; the working trees go at the end.
# A mass delete still pending (this run's start-up cleanup, or another run's exit
# cleanup) is settled with sync + drop_caches before the first timed run.
DELETE_STAMP="$BENCH_DIR/last-mass-delete"
SETTLE_PENDING=0
if [[ -f "$DELETE_STAMP" ]] && t=$(cat "$DELETE_STAMP") && [[ "$t" =~ ^[0-9]+$ ]] && (($(date +%s) - t < 400)); then
    SETTLE_PENDING=1
fi
mass_delete() { rm -rf "$@"; sync; date +%s >"$DELETE_STAMP"; SETTLE_PENDING=1; }
BTRFS_IMG="$BENCH_DIR/mirror-src-btrfs.img"
BTRFS_MNT="$WS/btrfs"
umount_src_fs() {
    if mountpoint -q "$BTRFS_MNT" 2>/dev/null; then umount "$BTRFS_MNT" || umount -l "$BTRFS_MNT"; fi
    rm -f "$BTRFS_IMG"
}

FAILURES=0
cleanup() {
    local rc=$?
    if [[ "$KEEP" == 1 ]]; then
        log "KEEP=1: working trees left in $WS"
    elif ((rc != 0)) && [[ -d "$WS" ]]; then
        log "failed: working trees left in $WS for inspection (the next run deletes them)"
    elif [[ -d "$WS" ]]; then
        umount_src_fs
        mass_delete "$WS"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
if [[ -e "$WS" ]]; then
    log "removing the working trees of an earlier run ($WS)"
    umount_src_fs
    mass_delete "$WS"
fi

# ---------------------------------------------------------------- 1. tools
if ! command -v rsync >/dev/null; then
    [[ "$INSTALL" == 1 ]] || die "rsync is not installed (INSTALL=0)"
    log "apt-get -y install rsync"
    apt-get -y install rsync || { apt-get update && apt-get -y install rsync; } || die "apt-get install rsync failed"
fi
RSYNC=$(command -v rsync)
if [[ "$BUILD_RINGSYNC" == 1 ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
fi
[[ -x "$RINGSYNC_BIN" ]] || die "ringsync binary '$RINGSYNC_BIN' not found or not executable"
# Bench a private copy: src/ may be rebuilt while this runs.
private_binary "$WORK"

VERSIONS="$WORK/versions.md"
{
    echo "| tool | path | version |"
    echo "|---|---|---|"
    echo "| ringsync | \`$RINGSYNC_BIN\` | $RS_DESC |"
    echo "| rsync | \`$RSYNC\` | $(first_line "$RSYNC" --version) |"
    echo "| python3 | \`$(command -v python3)\` | $(first_line python3 --version) |"
} >"$VERSIONS"
log "tool versions:"
cat "$VERSIONS" >&2

# ---------------------------------------------------------------- 2. datasets
# shellcheck source=tools/bench-datasets.sh
source "$TOOLS_DIR/bench-datasets.sh"
declare -A SCEN_DS=([change]=$CHANGE_DATASET [nochange]=$NOCHANGE_DATASET)
for s in "${SCENARIO_LIST[@]}"; do ensure_dataset "${SCEN_DS[$s]}"; done

# Space: three copies of each scenario's dataset.
need_b=0
for s in "${SCENARIO_LIST[@]}"; do need_b=$((need_b + 3 * $(du -sB1 "$DATA/${SCEN_DS[$s]}" | cut -f1))); done
free_b=$(df -P -B1 "$BENCH_DIR" | awk 'NR==2 {print $4}')
((need_b * 10 <= free_b * 9)) || die "working trees need $((need_b >> 20)) MiB, only $((free_b >> 20)) MiB free under $BENCH_DIR"
if [[ "$SRC_FS" == btrfs ]]; then
    command -v mkfs.btrfs >/dev/null || die "SRC_FS=btrfs needs mkfs.btrfs (apt-get install btrfs-progs)"
    # Room for every scenario's SRC twice over (metadata, the mutations), at least 2 GiB.
    img_b=$((need_b * 2 / 3 + (2 << 30)))
    mkdir -p "$BTRFS_MNT"
    truncate -s "$img_b" "$BTRFS_IMG"
    mkfs.btrfs -q -f "$BTRFS_IMG" >/dev/null || die "mkfs.btrfs $BTRFS_IMG failed"
    mount -o loop "$BTRFS_IMG" "$BTRFS_MNT" || die "mount -o loop $BTRFS_IMG failed"
    log "SRC_FS=btrfs: $BTRFS_IMG ($((img_b >> 20)) MiB) on $BTRFS_MNT"
fi

# ---------------------------------------------------------------- 3. helpers
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
us_to_s() { printf '%d.%06d' $(($1 / 1000000)) $(($1 % 1000000)); }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
if [[ " ${CACHE_LIST[*]} " == *" cold "* ]]; then
    drop_caches 2>/dev/null || die "cannot write /proc/sys/vm/drop_caches (needed for CACHES=cold)"
fi
# Start the next command in a later wall-clock second than now (see the header).
next_second() {
    local s=${EPOCHREALTIME%.*}
    while [[ "${EPOCHREALTIME%.*}" == "$s" ]]; do sleep 0.05; done
}
# settle: before a block of timed runs, get a pending mass delete's inodes out of
# ext4's reuse check (recently_deleted() only looks at cached inode-table blocks).
settle() {
    sync
    if ((SETTLE_PENDING)); then
        log "dropping caches after a mass delete (ext4 recently_deleted() reads only cached inode-table blocks)"
        echo 3 >/proc/sys/vm/drop_caches
        SETTLE_PENDING=0
    fi
}
# warm SRC DST_R DST_S: metadata of all three, data of SRC; atimes untouched.
warm() {
    python3 "$MUTATE" warm "$2" "$3" --data "$1" >>"$LOG_DIR/warm.log" 2>&1 || die "warm-up walk failed (see $LOG_DIR/warm.log)"
}

# check SCEN CACHE WHEN SRC DST_R DST_S [full]: strict comparison of both targets
# with SRC (mutate-tree.py check; atime-neutral unless "full"), logged to VERIFY_TSV.
check_targets() {
    local scen=$1 cache=$2 when=$3 src=$4 dr=$5 dst_s=$6 mode=${7:-}
    local extra=(--keep-atimes) line tgt dir
    [[ "$mode" != full ]] || extra=()
    for tgt in ringsync rsync; do
        if [[ "$tgt" == ringsync ]]; then dir=$dr; else dir=$dst_s; fi
        if line=$(python3 "$MUTATE" check "${extra[@]}" --ignore-root-xattr "$RECORD_XATTR" "$src" "$dir" 2>&1); then :; else
            FAILURES=$((FAILURES + 1))
            log "======== CHECK FAILED: $tgt target ($scen, $cache, $when): $line"
        fi
        printf '%s\t%s\t%s\t%s\tmutate-tree.py check\t%s\n' "$scen" "$cache" "$when" "$tgt" "$line" >>"$VERIFY_TSV"
    done
}

# tool_cmd TOOL SRC DST_R DST_S -> fills CMD (and THEN_SYNC: the timed region
# includes a `sync` after a successful command)
tool_cmd() {
    THEN_SYNC=0
    case "$1" in
        ringsync-nofsync|ringsync-norecord)
                      CMD=("$RS" mirror --fsync none -q "${RS_EXTRA[@]}" "$2" "$3") ;;
        ringsync)     CMD=("$RS" mirror -q "${RS_EXTRA[@]}" "$2" "$3") ;;
        rsync)        CMD=("$RSYNC" -aHAX --delete "$2/" "$4/") ;;
        rsync+sync)   CMD=("$RSYNC" -aHAX --delete "$2/" "$4/"); THEN_SYNC=1 ;;
        *) die "internal: unknown tool $1" ;;
    esac
}
# dry_counts: what `ringsync mirror --dry-run SRC DST_R` lists, counted per change letter.
dry_counts() {
    local out
    out=$("$RS" mirror --dry-run "$SRC" "$DST_R" 2>&1) || { echo "dry-run failed: ${out:0:200}"; return 0; }
    awk 'NF {c[$1]++} END {for (k in c) printf "%s%s=%d", (n++ ? " " : ""), k, c[k]}' <<<"$out"
}
pair_tools() {  # PAIR -> "RINGSYNC_TOOL RSYNC_TOOL"
    case "$1" in
        nofsync) echo "ringsync-nofsync rsync" ;;
        fsync)   echo "ringsync rsync+sync" ;;
    esac
}

echo "scenario,dataset,cache,round,pair,tool,position,seconds,exit_status,sync_after_seconds,mutation" >"$CSV"

# run_timed SCEN DS CACHE ROUND PAIR TOOL POS MUT SRC DST_R DST_S; returns 1 if the tool failed
run_timed() {
    local scen=$1 ds=$2 cache=$3 round=$4 pair=$5 tool=$6 pos=$7 mut=$8 src=$9 dr=${10} dst_s=${11}
    local logf="$LOG_DIR/$scen.$cache.r$round.$pair.$tool.log" t0 t1 s0 s1 rc secs
    tool_cmd "$tool" "$src" "$dr" "$dst_s"
    sync
    if [[ "$cache" == cold ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
    t0=$(now_us)
    if "${CMD[@]}" >"$logf" 2>&1; then rc=0; else rc=$?; fi
    if ((rc == 0 && THEN_SYNC)); then sync; fi
    t1=$(now_us)
    s0=$(now_us); sync; s1=$(now_us)
    secs=$(us_to_s $((t1 - t0)))
    if ((rc != 0)); then
        FAILURES=$((FAILURES + 1))
        {
            echo "bench-mirror: ======== FAILED: $tool ($scen on $ds, $cache, round $round), exit status $rc"
            echo "bench-mirror: command: ${CMD[*]}"
            echo "bench-mirror: log: $logf (last lines follow)"
            tail -n 15 "$logf" | sed 's/^/    /'
        } >&2
        secs=FAILED
    fi
    echo "$scen,$ds,$cache,$round,$pair,$tool,$pos,$secs,$rc,$(us_to_s $((s1 - s0))),$mut" >>"$CSV"
    printf 'bench-mirror:   %-8s %-5s r%-2d %-8s %-17s %s%s (exit %d)\n' "$scen" "$cache" "$round" "$pair" "$tool" "$secs" "$([[ "$secs" == FAILED ]] || echo s)" "$rc" >&2
    ((rc == 0))
}

# setup SCEN -> sets SRC DST_R DST_S: private copy of the dataset, both targets
# brought up to date (untimed) and checked.
setup_trees() {
    local scen=$1 ds=${SCEN_DS[$1]} base out
    base="$WS/$scen"
    SRC="$base/src" DST_R="$base/dst-ringsync" DST_S="$base/dst-rsync"
    mkdir -p "$base"
    log "== $scen: copying dataset $ds to $SRC (cp -a)"
    if [[ "$SRC_FS" == btrfs ]]; then
        SRC="$BTRFS_MNT/$scen"
        btrfs -q subvolume create "$SRC" >/dev/null || die "btrfs subvolume create $SRC failed"
        cp -a "$DATA/$ds/." "$SRC/"
    else
        cp -a "$DATA/$ds" "$SRC"
    fi
    if [[ "$scen" == change ]]; then
        python3 "$MUTATE" prep "$SRC" --seed "$MUTATE_SEED" --fraction "$FRACTION" >&2
    fi
    sync
    next_second
    log "$scen: initial ringsync mirror and rsync (untimed)"
    "$RS" mirror -q "$SRC" "$DST_R" >"$LOG_DIR/$scen.setup-ringsync.log" 2>&1 ||
        die "initial ringsync mirror failed, exit $? (log: $LOG_DIR/$scen.setup-ringsync.log)"
    "$RSYNC" -aHAX --delete "$SRC/" "$DST_S/" >"$LOG_DIR/$scen.setup-rsync.log" 2>&1 ||
        die "initial rsync failed, exit $? (log: $LOG_DIR/$scen.setup-rsync.log)"
    # rsync's reads bumped SRC atimes (relatime), which ringsync preserves: catch up.
    "$RS" mirror -q "$SRC" "$DST_R" >>"$LOG_DIR/$scen.setup-ringsync.log" 2>&1 ||
        die "second ringsync mirror failed, exit $? (log: $LOG_DIR/$scen.setup-ringsync.log)"
    out=$("$RS" mirror --dry-run "$SRC" "$DST_R" 2>&1) || die "ringsync mirror --dry-run failed: $out"
    [[ -z "$out" ]] || die "ringsync target not in sync after setup; mirror --dry-run says: $(head -n 5 <<<"$out")"
    out=$("$RSYNC" -aHAX --delete -n -i "$SRC/" "$DST_S/" 2>&1) || die "rsync -n failed: $out"
    [[ -z "$out" ]] || die "rsync target not in sync after setup; rsync -n -i says: $(head -n 5 <<<"$out")"
    check_targets "$scen" setup "after setup" "$SRC" "$DST_R" "$DST_S"
    ((FAILURES == 0)) || die "targets differ from SRC after setup"
    SCEN_ENTRIES[$scen]=$(($(find "$SRC" | wc -l) - 1))
    SCEN_BYTES[$scen]=$(du -sb --apparent-size "$SRC" | cut -f1)
}

# ---------------------------------------------------------------- 4. scenarios
declare -A SCEN_ENTRIES=() SCEN_BYTES=()
ABORT=0
npairs=${#PAIR_LIST[@]}

run_change() {
    local ds=${SCEN_DS[change]} cache r j pi pair rtool stool first second mut line nlines ok catchup
    setup_trees change
    for cache in "${CACHE_LIST[@]}"; do
        settle
        log "== change on $ds, $cache cache, $RUNS round(s), pairs: ${PAIR_LIST[*]}"
        for ((r = 1; r <= RUNS; r++)); do
            if [[ "$cache" == warm ]]; then warm "$SRC" "$DST_R" "$DST_S"; fi
            for ((j = 0; j < npairs; j++)); do
                pi=$(((r - 1 + j) % npairs))
                pair=${PAIR_LIST[$pi]}
                read -r rtool stool <<<"$(pair_tools "$pair")"
                mut="$MUTATE_SEED:$cache:$r:$pair"
                line=$(python3 "$MUTATE" mutate "$SRC" --seed "$mut" --fraction "$FRACTION") ||
                    die "mutate-tree.py mutate failed (seed $mut)"
                log "  $line"
                # What ringsync will have to do (dry run: no lock, no writes, no atime changes).
                nlines=$(dry_counts)
                sync
                next_second
                if (((r + pi) % 2 == 1)); then first=$rtool second=$stool; else first=$stool second=$rtool; fi
                ok=1
                if ! run_timed change "$ds" "$cache" "$r" "$pair" "$first" 1 "$mut" "$SRC" "$DST_R" "$DST_S" ||
                    ! run_timed change "$ds" "$cache" "$r" "$pair" "$second" 2 "$mut" "$SRC" "$DST_R" "$DST_S"; then
                    ok=0
                fi
                # rsync reads SRC without O_NOATIME: under relatime that bumps the atimes of
                # the files it copied and the directories it listed that had changed. ringsync
                # preserves atimes, so when rsync ran second, the next ringsync run would
                # also have to fix those: an artifact of sharing SRC. An untimed catch-up run
                # removes it. When ringsync ran second there should be nothing left.
                catchup=-
                if ((ok)); then
                    catchup=$(dry_counts)
                    if [[ -n "$catchup" ]]; then
                        if [[ "$second" == "$rtool" ]]; then
                            log "WARNING: right after its own run, ringsync mirror --dry-run still lists: $catchup"
                            catchup="**after ringsync ran last**: $catchup"
                        fi
                        "$RS" mirror --fsync none -q "$SRC" "$DST_R" >>"$LOG_DIR/catchup.log" 2>&1 ||
                            die "untimed catch-up ringsync mirror failed, exit $? (log: $LOG_DIR/catchup.log)"
                    fi
                fi
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mut" "$cache" "$r" "$pair" "${line#mutate: }" "$nlines" "${catchup:-none}" >>"$MUT_TSV"
                ((ok)) || { ABORT=1; break; }
                if [[ "$VERIFY" == 1 ]]; then check_targets change "$cache" "round $r $pair" "$SRC" "$DST_R" "$DST_S"; fi
                ((FAILURES == 0)) || { ABORT=1; break; }
            done
            ((ABORT == 0)) || break
        done
        ((ABORT == 0)) || return 0
        if [[ "$VERIFY" != 1 ]]; then check_targets change "$cache" "end of block" "$SRC" "$DST_R" "$DST_S"; fi
        ((FAILURES == 0)) || { ABORT=1; return 0; }
    done
    final_check change
}

run_nochange() {
    local ds=${SCEN_DS[nochange]} cache r i k tool p t
    local tools=()
    for p in "${PAIR_LIST[@]}"; do
        for t in $(pair_tools "$p"); do tools+=("$p:$t"); done
    done
    k=${#tools[@]}
    setup_trees nochange
    for cache in "${CACHE_LIST[@]}"; do
        settle
        log "== nochange on $ds, $cache cache, $RUNS round(s), pairs: ${PAIR_LIST[*]}"
        for ((r = 1; r <= RUNS; r++)); do
            if [[ "$cache" == warm ]]; then warm "$SRC" "$DST_R" "$DST_S"; fi
            for ((i = 0; i < k; i++)); do
                t=${tools[$(((r - 1 + i) % k))]}
                run_timed nochange "$ds" "$cache" "$r" "${t%%:*}" "${t#*:}" $((i + 1)) "" "$SRC" "$DST_R" "$DST_S" ||
                    { ABORT=1; break; }
            done
            ((ABORT == 0)) || return 0
        done
        # Full compare: without a record ringsync compares every entry's xattrs.
        if [[ "$cache" == warm ]]; then warm "$SRC" "$DST_R" "$DST_S"; fi
        python3 -c 'import os, sys; os.removexattr(sys.argv[1], sys.argv[2])' "$DST_R" "$RECORD_XATTR" ||
            die "could not remove $RECORD_XATTR from $DST_R"
        run_timed nochange "$ds" "$cache" 1 norecord ringsync-norecord 1 "" "$SRC" "$DST_R" "$DST_S" ||
            { ABORT=1; return 0; }
        check_targets nochange "$cache" "end of block" "$SRC" "$DST_R" "$DST_S"
        ((FAILURES == 0)) || { ABORT=1; return 0; }
    done
    final_check nochange
}

# final_check SCEN: the independent check (tools/treecmp.py, which must report
# OK and every kept attribute as "all") plus the strict check with symlink
# targets. Both read without O_NOATIME, so they only run after a scenario's
# last timed run.
final_check() {
    local scen=$1 tgt dir line
    check_targets "$scen" all "final" "$SRC" "$DST_R" "$DST_S" full
    for tgt in ringsync rsync; do
        if [[ "$tgt" == ringsync ]]; then dir=$DST_R; else dir=$DST_S; fi
        if line=$(python3 "$TOOLS_DIR/treecmp.py" "$SRC" "$dir" 2>&1) &&
            ! grep -Eq '(=|:)(none|[0-9]+/[0-9]+)|differ|mtime-truncated' <<<"$line"; then :; else
            FAILURES=$((FAILURES + 1))
            log "======== TREECMP FAILED: $tgt target ($scen): $line"
        fi
        printf '%s\t%s\t%s\t%s\ttreecmp.py\t%s\n' "$scen" all final "$tgt" "$line" >>"$VERIFY_TSV"
    done
}

for s in "${SCENARIO_LIST[@]}"; do
    ((ABORT == 0)) || break
    "run_$s"
done

# ---------------------------------------------------------------- 5. report
fstype=$(stat -f -c %T "$BENCH_DIR")
SUMMARY_TXT="$WORK/summary.txt"
RESULTS_MD="$WORK/results.md"
python3 - "$CSV" "$MUT_TSV" "$VERIFY_TSV" "$SUMMARY_TXT" "$RESULTS_MD" "$TARGETS" <<'EOF'
import csv, statistics, sys
csv_path, mut_path, ver_path, txt_path, md_path, targets = sys.argv[1:7]
TARGETS = {k: float(v) for k, v in (t.split("=") for t in targets.split())}

def target_of(scen, cache):
    return TARGETS.get("%s:%s" % (scen, cache), TARGETS.get("%s:*" % scen))
rows = list(csv.DictReader(open(csv_path)))
CMDS = {
    "ringsync-nofsync": "ringsync mirror --fsync none -q",
    "ringsync": "ringsync mirror -q (--fsync end)",
    "ringsync-norecord": "ringsync mirror --fsync none -q, no record",
    "rsync": "rsync -aHAX --delete",
    "rsync+sync": "rsync -aHAX --delete && sync",
}
PAIRS = {"nofsync": ("ringsync-nofsync", "rsync"), "fsync": ("ringsync", "rsync+sync")}

def secs(r):
    return None if r["seconds"] == "FAILED" else float(r["seconds"])

def med(v):
    return statistics.median(v) if v else None

def f(x, nd=3):
    return "-" if x is None else "%.*f" % (nd, x)

blocks = []  # (scen, ds, cache, pair)
for r in rows:
    k = (r["scenario"], r["dataset"], r["cache"], r["pair"])
    if k not in blocks:
        blocks.append(k)
summary = []
raw = []
for scen, ds, cache, pair in blocks:
    if pair == "norecord":
        continue
    rt, st = PAIRS[pair]
    sel = [r for r in rows if (r["scenario"], r["dataset"], r["cache"], r["pair"]) == (scen, ds, cache, pair)]
    rounds = sorted({int(r["round"]) for r in sel})
    rv, sv, paired = [], [], []
    for n in rounds:
        a = [r for r in sel if int(r["round"]) == n and r["tool"] == rt]
        b = [r for r in sel if int(r["round"]) == n and r["tool"] == st]
        x = secs(a[0]) if a else None
        y = secs(b[0]) if b else None
        first = "-"
        if a and b:
            first = "ringsync" if int(a[0]["position"]) < int(b[0]["position"]) else "rsync"
        if x is not None:
            rv.append(x)
        if y is not None:
            sv.append(y)
        if x is not None and y:
            paired.append(x / y)
        mut = (a or b)[0]["mutation"] if (a or b) else ""
        sa = a[0]["sync_after_seconds"] if a else "-"
        sb = b[0]["sync_after_seconds"] if b else "-"
        raw.append((scen, ds, cache, pair, n, mut or "-", first, f(x), f(y),
                    f(x / y if x is not None and y else None, 2), sa, sb))
    mr, ms = med(rv), med(sv)
    ratio = mr / ms if mr is not None and ms else None
    failed = any(r["seconds"] == "FAILED" for r in sel)
    target = target_of(scen, cache)
    verdict = "FAILED RUN" if failed else ("-" if ratio is None else ("PASS" if ratio <= target else "FAIL"))
    summary.append([scen, ds, cache, pair, CMDS[rt], f(mr), CMDS[st], f(ms), f(ratio, 3),
                    f(med(paired), 3), "%d/%d" % (len(rv), len(sv)), "<= %.2f" % target, verdict])
    if scen == "nochange" and pair == "nofsync":
        nr = [r for r in rows if (r["scenario"], r["cache"], r["pair"]) == ("nochange", cache, "norecord")]
        if nr:
            x = secs(nr[0])
            summary.append([scen, ds, cache, "norecord", CMDS["ringsync-norecord"] + " (full compare)",
                            f(x), CMDS[st], f(ms), f(x / ms if x is not None and ms else None, 3),
                            "-", "1/%d" % len(sv), "(info)", "FAILED RUN" if x is None else "-"])

head = ["scenario", "dataset", "cache", "pair", "ringsync command", "ringsync s", "rsync command",
        "rsync s", "ratio", "paired", "runs", "target", "verdict"]
with open(txt_path, "w") as out:
    w = [max(len(str(c)) for c in col) for col in zip(head, *summary)] if summary else [len(h) for h in head]
    for line in [head] + summary:
        out.write("  ".join(str(c).ljust(n) for c, n in zip(line, w)).rstrip() + "\n")

def table(out, hdr, body, align=None):
    out.write("| " + " | ".join(hdr) + " |\n")
    out.write("|" + "|".join(align or ["---"] * len(hdr)) + "|\n")
    for b in body:
        out.write("| " + " | ".join(str(c) for c in b) + " |\n")
    out.write("\n")

with open(md_path, "w") as out:
    out.write("## Results\n\n")
    out.write("Medians of the rounds (seconds). ratio = median ringsync / median rsync; paired = median of the\n"
              "per-round ratios (each ringsync run against the rsync run that synced the same mutation); runs =\n"
              "successful ringsync/rsync runs. Targets: %s.\n\n" % targets)
    table(out, head, summary, ["---"] * 4 + ["---", "---:", "---", "---:", "---:", "---:", "---:", ":-:", ":-:"])
    out.write("## Raw runs\n\n")
    table(out, ["scenario", "dataset", "cache", "pair", "round", "mutation (seed)", "first", "ringsync s",
                "rsync s", "ratio", "ringsync: untimed sync after, s", "rsync: untimed sync after, s"], raw,
          ["---"] * 4 + ["---:", "---", "---"] + ["---:"] * 5)
    nr = [r for r in rows if r["pair"] == "norecord"]
    if nr:
        out.write("No-change run right after `setfattr -x user.ringsync.mirror DST_R` (full compare, xattrs of every entry):\n\n")
        table(out, ["dataset", "cache", "command", "seconds", "exit"],
              [(r["dataset"], r["cache"], CMDS[r["tool"]], r["seconds"], r["exit_status"]) for r in nr])
    muts = [l.rstrip("\n").split("\t") for l in open(mut_path) if l.strip()]
    if muts:
        out.write("## Mutations (change scenario)\n\n")
        out.write("One per timed pair, applied to SRC before the pair's two runs. Kinds are counted in\n"
                  "operations; a new/deleted directory counts its files too (entries). The last column is\n"
                  "what `ringsync mirror --dry-run SRC DST_R` listed before the runs (diff format letters:\n"
                  "+ created, - deleted, M content, A attributes, T type, L links, R renamed). After both runs,\n"
                  "the dry run again: what was left for an untimed catch-up run (atimes rsync's reads bumped\n"
                  "when it ran second; anything after ringsync ran last is flagged).\n\n")
        table(out, ["seed", "cache", "round", "pair", "mutation", "ringsync --dry-run before", "untimed atime catch-up"],
              [(m[0], m[1], m[2], m[3], m[4].replace("|", "\\|"), m[5], m[6]) for m in muts])
    ver = [l.rstrip("\n").split("\t") for l in open(ver_path) if l.strip()]
    if ver:
        out.write("## Target checks\n\n")
        out.write("`mutate-tree.py check` (strict: type, mode, owner, mtime ns, size, content, symlink targets,\n"
                  "hardlink structure, every xattr; only `user.ringsync.mirror` on DST_R's root is ignored; atime is\n"
                  "not compared) and, at the end of each scenario, `tools/treecmp.py` (independent; must say OK with\n"
                  "every kept attribute `all`).\n\n")
        table(out, ["scenario", "cache", "when", "target", "checker", "result"],
              [(v[0], v[1], v[2], v[3], v[4], v[5].replace("|", "\\|")) for v in ver])
EOF

fail=()
((ABORT == 0 && FAILURES == 0)) || fail=("**$FAILURES FAILURE(S)**: a tool exited non-zero or a target differs from SRC; the run stopped there." "Logs: \`$LOG_DIR\`.")
{
    report_head "ringsync mirror benchmark" "tiny datasets, numbers are meaningless." "${fail[@]}"
    cat "$RESULTS_MD"
    echo "## Machine"
    echo
    echo "- nproc: $(nproc)"
    echo "- CPU: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "- kernel: $(uname -r)"
    echo "- \`$BENCH_DIR\`: fs type \`$fstype\` ($(findmnt -n -o SOURCE,FSTYPE,OPTIONS -T "$BENCH_DIR" 2>/dev/null || echo '?'))"
    if [[ "$SRC_FS" == btrfs ]]; then
        echo "- SRC: a btrfs subvolume per scenario on a loop-mounted image (\`$BTRFS_IMG\` on \`$BTRFS_MNT\`, $(findmnt -n -o OPTIONS "$BTRFS_MNT" 2>/dev/null || echo '?')); the targets under \`$BENCH_DIR\`"
    fi
    echo "- \`free -g\`:"
    echo
    echo '```'
    free -g
    echo '```'
    echo
    echo "## Tool versions"
    echo
    cat "$VERSIONS"
    echo
    echo "## Method"
    echo
    echo "- Datasets (\`tools/gen-dataset.py\`, scale \`$SCALE\`, seed $SEED, cached in \`$DATA\`), copied once per run"
    echo "  with \`cp -a\` to \`$WS/<scenario>/src\` (SRC); targets \`dst-ringsync\` (DST_R) and \`dst-rsync\` (DST_S)"
    echo "  on the same filesystem. Before timing: \`ringsync mirror\`, \`rsync -aHAX --delete\`, \`ringsync mirror\` again"
    echo "  (rsync's reads bump SRC atimes under relatime, and ringsync preserves atimes), then both"
    echo "  \`ringsync mirror --dry-run\` and \`rsync -n -i\` must report nothing and the strict check must pass."
    for s in "${SCENARIO_LIST[@]}"; do
        [[ -n "${SCEN_ENTRIES[$s]:-}" ]] || continue
        echo "  - \`$s\`: dataset \`${SCEN_DS[$s]}\`, SRC $(awk -v b="${SCEN_BYTES[$s]}" 'BEGIN {printf "%.2f GiB", b / 2^30}'), ${SCEN_ENTRIES[$s]} entries (root excluded) after setup."
    done
    echo "- Pairs: \`nofsync\` = \`ringsync mirror --fsync none -q SRC DST_R\` vs \`rsync -aHAX --delete SRC/ DST_S/\`"
    echo "  (neither flushes); \`fsync\` = \`ringsync mirror -q SRC DST_R\` (default \`--fsync end\`: syncfs of the target)"
    echo "  vs the same rsync followed by \`sync\`, both inside the timed region."
    if ((${#RS_EXTRA[@]})); then
        echo "- **RINGSYNC_ARGS**: every timed ringsync command also passes \`${RS_EXTRA[*]}\` (before SRC DST)."
    fi
    echo "- \`change\`: $RUNS round(s) per cache mode; in each round, for each pair (pair order rotates per round):"
    echo "  a fresh mutation of SRC (\`tools/mutate-tree.py mutate --fraction $FRACTION --seed $MUTATE_SEED:<cache>:<round>:<pair>\`;"
    echo "  ~${FRACTION} of the entries, at least one of each kind; table above), \`sync\`, a wait for the next wall-clock second"
    echo "  (rsync compares mtimes in whole seconds and would keep its own mtime on a directory it changes within"
    echo "  the second SRC's changed), then ringsync and rsync on that same mutation, the first tool alternating"
    echo "  from round to round. \`prep\` added a few small directories to SRC before setup, for the first"
    echo "  \"delete a small directory\". After each pair, an untimed \`ringsync mirror --fsync none\` catches DST_R up"
    echo "  on the SRC atimes that rsync's reads bumped (relatime) when it ran second: ringsync preserves atimes"
    echo "  and reads with O_NOATIME, so otherwise its next timed run would also pay for rsync's side effects."
    echo "- \`nochange\`: $RUNS round(s) per cache mode, each running every tool once (start rotated per round); then one"
    echo "  run right after removing the record xattr \`$RECORD_XATTR\` from DST_R (ringsync then compares every"
    echo "  entry's xattrs), which also writes a new record."
    echo "- Before every timed command (untimed): \`sync\`; **cold** also \`echo 3 > /proc/sys/vm/drop_caches\`."
    echo "  **warm**: before each round every entry of SRC, DST_R and DST_S is stat'ed and SRC's data read, with"
    echo "  O_NOATIME (no atime changes), and nothing drops caches during the block. After each command the"
    echo "  untimed \`sync\` is timed too (raw table), showing what a command left dirty."
    echo "- Timer: bash \`\$EPOCHREALTIME\` around the command (µs). Exit status other than 0 fails the run."
    echo "- Targets compared with SRC after $([[ "$VERIFY" == 1 ]] && echo "every round" || echo "every scenario x cache block") (atime-neutral strict check), and with"
    echo "  \`tools/treecmp.py\` plus the strict check with symlink targets after each scenario's last run."
    echo "- Nothing big is deleted between timed runs (ext4 \`recently_deleted()\`, see perf/README.md); the"
    echo "  working trees are deleted at exit. A pending mass delete is settled by sync + drop_caches first."
    echo "- The benchmark VM is noisy and shared: compare only medians and ratios within one report."
    echo "- Raw runs: \`$(basename "$CSV")\` (\`scenario,dataset,cache,round,pair,tool,position,seconds,exit_status,sync_after_seconds,mutation\`);"
    echo "  per-run logs: \`$LOG_DIR\`."
} >"$REPORT"

echo
cat "$SUMMARY_TXT"
echo
log "report: $REPORT"
log "raw CSV: $CSV"
if ((FAILURES || ABORT)); then
    log "======== $FAILURES FAILURE(S); see the report and $LOG_DIR"
    exit 1
fi
