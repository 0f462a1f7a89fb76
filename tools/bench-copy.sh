#!/usr/bin/env bash
# Benchmark `ringsync copy` against cp, rsync, xcp and fcp.
#
# Run as root from anywhere:   sudo tools/bench-copy.sh
# Smoke-test the script:       sudo QUICK=1 tools/bench-copy.sh
#
# Environment (all optional):
#   RUNS=5                 timed runs per tool x dataset x cache mode
#   BENCH_DIR=/var/tmp/ringsync-bench   datasets (cached), destinations, fio files
#   DATASETS="big small mixed"          subset of: big small mixed
#   CACHES="warm cold"                  subset of: warm cold
#   TOOLS="ringsync ringsync-nofsync cp rsync xcp fcp"   subset of those, plus
#                          `floor`: tools/floor-small.py, the fewest syscalls a copy can
#                          make (open, read, create, write, futimens, close; mkdir), one
#                          process per core, then syncfs; it prints its children's system
#                          time, the kernel's share. Measured: slower than ringsync on the
#                          50k-file tree (Python per file), so its wall time is no floor
#                          (it drops owner and xattrs: not copy-checked)
#   QUICK=1                tiny datasets, RUNS=1 (unless RUNS is set), report
#                          goes to $BENCH_DIR/quick-reports unless OUT_DIR is set
#   RINGSYNC_BIN=...       binary to bench (default: target/release/ringsync,
#                          built with `cargo build --release`; when RINGSYNC_BIN
#                          is set, even to that path, nothing is built)
#   OUT_DIR=perf           where copy-YYYYmmdd-HHMM.{md,csv} are written
#   FIO=1 MEMTEST=1 VERIFY=1 INSTALL=1   set to 0 to skip the fio copy bound,
#                          the 4 GiB memory test, the copy check, or installing
#                          missing peers
#   SEED=20240601          dataset seed (changing it regenerates the datasets)
#   DELETE_SETTLE_MODE=dropcache  after deleting many-file destinations: drop caches
#                          (default), or `sleep` DELETE_SETTLE_S (default 370) seconds
#                          before the next timed run (QUICK default: 0); see
#                          "Destination policy" below
#   RINGSYNC_ARGS=""       extra options for every ringsync command line (timed
#                          runs and memory test), inserted after the script's
#                          own options and before SRC DST, e.g.
#                          RINGSYNC_ARGS="--engine sync --threads 4"
#
# Every timed run writes into a destination that never existed before (every
# tool creates DST itself); `sync` (cold: drop_caches) precedes it and only the
# command is timed. Tools run interleaved: each round runs every tool once,
# and the starting tool rotates from round to round.
#
# Destination policy: ext4 (at least in no-journal mode) refuses to reuse an
# inode freed less than 60 s ago, 360 s if its inode-table block is dirty
# (recently_deleted() in fs/ext4/ialloc.c), so a copy that starts right after
# `rm -rf` of a 50,000-file tree spends most of its time in the kernel skipping
# those inodes (measured: 5.5 s instead of 0.6 s for the same copy). So for the
# many-file datasets (small, mixed) every run gets a fresh directory
# DST_ROOT/<dataset>/<cache>/<tool>-r<round> and nothing is deleted between
# timed runs; all of them are deleted after the last run of that dataset and
# cache mode, followed by `sync` and a DELETE_SETTLE_S wait before the next
# timed run. If those copies would need more than 80% of the free space (or
# inodes), the dataset falls back to rm + sync + DELETE_SETTLE_S wait before
# each run (slow, but still free of the artifact). `big` (one file) keeps
# rm + sync before each run. The report states the policy used per dataset.
set -euo pipefail

TOOL=bench-copy
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tool_args "$@"

# Record the exact invocation (user-set variables + command) before defaulting.
record_cmdline "$@" -- QUICK RUNS BENCH_DIR DATASETS CACHES TOOLS RINGSYNC_BIN RINGSYNC_ARGS OUT_DIR FIO MEMTEST VERIFY INSTALL SEED DELETE_SETTLE_S DELETE_SETTLE_MODE

QUICK=${QUICK:-0}
if [[ "$QUICK" == 1 ]]; then SCALE=quick; RUNS=${RUNS:-1}; else SCALE=full; RUNS=${RUNS:-5}; fi
BENCH_DIR=${BENCH_DIR:-/var/tmp/ringsync-bench}
DATASETS=${DATASETS:-big small mixed}
CACHES=${CACHES:-warm cold}
TOOLS=${TOOLS:-ringsync ringsync-nofsync cp rsync xcp fcp}
if [[ -n "${RINGSYNC_BIN:-}" ]]; then BUILD_RINGSYNC=0; else BUILD_RINGSYNC=1; fi
RINGSYNC_BIN=${RINGSYNC_BIN:-$REPO/target/release/ringsync}
if [[ "$QUICK" == 1 ]]; then OUT_DIR=${OUT_DIR:-$BENCH_DIR/quick-reports}; else OUT_DIR=${OUT_DIR:-$REPO/perf}; fi
FIO=${FIO:-1}
MEMTEST=${MEMTEST:-1}
VERIFY=${VERIFY:-1}
INSTALL=${INSTALL:-1}
SEED=${SEED:-20240601}
if [[ "$QUICK" == 1 ]]; then DELETE_SETTLE_S=${DELETE_SETTLE_S:-0}; else DELETE_SETTLE_S=${DELETE_SETTLE_S:-370}; fi
DELETE_SETTLE_MODE=${DELETE_SETTLE_MODE:-dropcache}
if [[ "$DELETE_SETTLE_MODE" == dropcache ]]; then SETTLE_DESC="sync + drop_caches (+ warm-up read when warm)"; else SETTLE_DESC="sync + ${DELETE_SETTLE_S} s wait"; fi
[[ "$DELETE_SETTLE_MODE" =~ ^(dropcache|sleep)$ ]] || die "DELETE_SETTLE_MODE must be dropcache or sleep"
RINGSYNC_ARGS=${RINGSYNC_ARGS:-}
read -r -a RS_EXTRA <<<"$RINGSYNC_ARGS"
MEM_LIMIT_MIB=160

[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
[[ "$DELETE_SETTLE_S" =~ ^[0-9]+$ ]] || die "DELETE_SETTLE_S must be a non-negative integer (got '$DELETE_SETTLE_S')"
for d in $DATASETS; do [[ "$d" =~ ^(big|small|mixed)$ ]] || die "unknown dataset '$d' (big small mixed)"; done
for c in $CACHES; do [[ "$c" =~ ^(warm|cold)$ ]] || die "unknown cache mode '$c' (warm cold)"; done
for t in $TOOLS; do
    [[ "$t" =~ ^(ringsync|ringsync-nofsync|cp|rsync|xcp|fcp|floor)$ ]] ||
        die "unknown tool '$t' (ringsync ringsync-nofsync cp rsync xcp fcp floor)"
done
[[ "$(id -u)" == 0 ]] || die "must run as root (drop_caches, ownership-preserving copies)"
command -v python3 >/dev/null || die "python3 is required"

read -r -a DATASET_LIST <<<"$DATASETS"
read -r -a CACHE_LIST <<<"$CACHES"
read -r -a TOOL_LIST <<<"$TOOLS"
has_tool() { local t; for t in "${TOOL_LIST[@]}"; do [[ "$t" == "$1" ]] && return 0; done; return 1; }
uses_ringsync() { has_tool ringsync || has_tool ringsync-nofsync || [[ "$MEMTEST" == 1 ]]; }

DATA="$BENCH_DIR/data-$SCALE"
DST_ROOT="$BENCH_DIR/dst"
mkdir -p "$DATA" "$DST_ROOT" "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
new_report copy
CSV="${REPORT%.md}.csv"
LOG_DIR="$BENCH_DIR/logs/$(basename "${REPORT%.md}")"
mkdir -p "$LOG_DIR"
WORK=$(mktemp -d "$BENCH_DIR/tmp.XXXXXX")
SYNC_CSV="$WORK/sync.csv"
VERIFY_TSV="$WORK/verify.tsv"

# Mass deletes (see "Destination policy" in the header). SETTLE_FROM is the time
# (epoch s) a mass delete finished, after its `sync`, while its DELETE_SETTLE_S
# wait is still owed; empty when none is. DELETE_STAMP carries it across runs
# of this script (a run started right after another one's cleanup waits too);
# deletes made by anything else can't be seen: leave the filesystem quiet.
DELETE_STAMP="$BENCH_DIR/last-mass-delete"
SETTLE_FROM=""
if [[ -f "$DELETE_STAMP" ]] && t=$(cat "$DELETE_STAMP") && [[ "$t" =~ ^[0-9]+$ ]]; then SETTLE_FROM=$t; fi
note_mass_delete() { SETTLE_FROM=$(date +%s); echo "$SETTLE_FROM" >"$DELETE_STAMP"; }
mass_delete() { rm -rf "$@"; sync; note_mass_delete; }
# settle CACHE SRC: before timed runs. sync; if a mass delete is pending, get its
# inodes out of ext4's reuse check. recently_deleted() only looks at inode-table
# blocks that are still in the buffer cache, so by default (DELETE_SETTLE_MODE=
# dropcache) `sync; echo 3 > drop_caches` evicts them and ends the effect at
# once; for a warm run the source is then read again. DELETE_SETTLE_MODE=sleep
# waits DELETE_SETTLE_S seconds instead (the kernel's window is 60 s, 360 s
# while the block is dirty, which new allocations make it).
settle() {
    local cache=$1 src=$2
    sync
    [[ -n "$SETTLE_FROM" ]] || return 0
    if [[ "$DELETE_SETTLE_MODE" == dropcache ]]; then
        log "dropping caches after a mass delete (ext4 recently_deleted() reads only cached inode-table blocks)"
        echo 3 >/proc/sys/vm/drop_caches
        if [[ "$cache" == warm ]]; then warm_read "$src"; fi
        SETTLE_FROM=""
        return 0
    fi
    local left=$((SETTLE_FROM + DELETE_SETTLE_S - $(date +%s)))
    ((left <= DELETE_SETTLE_S)) || left=$DELETE_SETTLE_S
    if ((left > 0)); then
        log "waiting ${left}s for recently deleted inodes to leave ext4's reuse window (DELETE_SETTLE_S=$DELETE_SETTLE_S)"
        sleep "$left"
        sync
    fi
    SETTLE_FROM=""
}
has_entries() { [[ -d "$1" ]] && [[ -n "$(find "$1" -mindepth 1 -maxdepth 1 -print -quit)" ]]; }

cleanup() {
    if has_entries "$DST_ROOT"; then mass_delete "$DST_ROOT"; else rm -rf "$DST_ROOT"; fi
    rm -rf "$BENCH_DIR/fio" "$WORK"
}
trap cleanup EXIT
# Leftovers of an interrupted run would collide with the fresh destination names.
if has_entries "$DST_ROOT"; then
    log "removing stale destinations in $DST_ROOT"
    mass_delete "$DST_ROOT"
    mkdir -p "$DST_ROOT"
fi

# ---------------------------------------------------------------- 1. tools
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"
NOT_INSTALLED=()

apt_install() {
    log "apt-get -y install $*"
    apt-get -y install "$@" || { apt-get update && apt-get -y install "$@"; }
}

if [[ "$INSTALL" == 1 ]]; then
    need=()
    if has_tool rsync && ! command -v rsync >/dev/null; then need+=(rsync); fi
    if [[ "$FIO" == 1 ]] && ! command -v fio >/dev/null; then need+=(fio); fi
    if [[ "$MEMTEST" == 1 ]] && [[ ! -x /usr/bin/time ]]; then need+=(time); fi
    if ((${#need[@]})); then apt_install "${need[@]}" || die "apt-get install ${need[*]} failed"; fi
    for t in xcp fcp; do
        if has_tool "$t" && [[ ! -x "$CARGO_BIN/$t" ]]; then
            command -v cargo >/dev/null || die "cargo not found; needed to install $t"
            log "cargo install --locked $t (takes a few minutes)"
            cargo install --locked "$t" || log "WARNING: cargo install $t FAILED"
        fi
    done
fi
[[ "$FIO" == 0 ]] || command -v fio >/dev/null || die "fio not found (set FIO=0 to skip the copy bound)"
[[ "$MEMTEST" == 0 ]] || [[ -x /usr/bin/time ]] || die "/usr/bin/time not found (apt-get install time, or MEMTEST=0)"

# Resolve each peer to an absolute path; a peer that is missing is reported,
# not silently skipped.
declare -A BIN=()
for t in cp rsync xcp fcp; do
    has_tool "$t" || continue
    if [[ "$t" == xcp || "$t" == fcp ]] && [[ -x "$CARGO_BIN/$t" ]]; then
        BIN[$t]="$CARGO_BIN/$t"
    elif p=$(command -v "$t"); then
        BIN[$t]=$p
    else
        log "WARNING: $t is not installed; it will be reported as NOT INSTALLED"
        NOT_INSTALLED+=("$t")
    fi
done
if ((${#NOT_INSTALLED[@]})); then
    keep=()
    for t in "${TOOL_LIST[@]}"; do
        [[ " ${NOT_INSTALLED[*]} " == *" $t "* ]] || keep+=("$t")
    done
    TOOL_LIST=("${keep[@]}")
fi
((${#TOOL_LIST[@]})) || die "no tools left to benchmark"

if uses_ringsync; then
    if [[ "$BUILD_RINGSYNC" == 1 ]]; then
        log "cargo build --release"
        (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
    fi
    [[ -x "$RINGSYNC_BIN" ]] || die "ringsync binary '$RINGSYNC_BIN' not found or not executable"
fi

VERSIONS="$WORK/versions.md"
{
    echo "| tool | path | version |"
    echo "|---|---|---|"
    if uses_ringsync; then
        rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no commit")
        echo "| ringsync | \`$RINGSYNC_BIN\` | $(first_line "$RINGSYNC_BIN" --version) (git $rev) |"
    fi
    [[ -z "${BIN[cp]:-}" ]]    || echo "| cp | \`${BIN[cp]}\` | $(first_line cp --version) |"
    [[ -z "${BIN[rsync]:-}" ]] || echo "| rsync | \`${BIN[rsync]}\` | $(first_line rsync --version) |"
    [[ -z "${BIN[xcp]:-}" ]]   || echo "| xcp | \`${BIN[xcp]}\` | $(first_line "${BIN[xcp]}" --version) |"
    [[ -z "${BIN[fcp]:-}" ]]   || echo "| fcp | \`${BIN[fcp]}\` | fcp $(first_line "${BIN[fcp]}" --version) |"
    [[ "$FIO" == 0 ]]          || echo "| fio | \`$(command -v fio)\` | $(first_line fio --version) |"
    echo "| python3 | \`$(command -v python3)\` | $(first_line python3 --version) |"
} >"$VERSIONS"
log "tool versions:"
cat "$VERSIONS" >&2

# ---------------------------------------------------------------- 2. datasets
# shellcheck source=tools/bench-datasets.sh
source "$TOOLS_DIR/bench-datasets.sh"

avail_gib=$(df -P -BG "$BENCH_DIR" | awk 'NR==2 {sub("G","",$4); print $4}')
if [[ "$SCALE" == full ]]; then
    # Datasets: big 2 + small ~0.4 + mixed 1 + huge 4; fresh destinations for
    # one dataset and cache mode: mixed 1 x 6 tools x RUNS 5 = 30; fio 4; slack.
    need_gib=45
    ((avail_gib >= need_gib)) || log "WARNING: only ${avail_gib} GiB free under $BENCH_DIR; a full run may need ~${need_gib} GiB (with less, many-file datasets fall back to rm + settle before each run)"
    mem_gib=$(awk '/MemTotal/ {print int($2/1048576)}' /proc/meminfo)
    ((mem_gib >= 6)) || log "WARNING: ${mem_gib} GiB RAM: 'warm' big-file runs may not be fully cached"
fi

for d in "${DATASET_LIST[@]}"; do ensure_dataset "$d"; done
if [[ "$MEMTEST" == 1 ]]; then ensure_dataset huge; fi

dataset_bytes() { du -sb --apparent-size "$DATA/$1" | cut -f1; }

# ---------------------------------------------------------------- 3. timed runs
# tool_cmd TOOL SRC DST -> fills the global array CMD
tool_cmd() {
    local src=$2 dst=$3
    case "$1" in
        ringsync)         CMD=("$RINGSYNC_BIN" copy --quiet "${RS_EXTRA[@]}" "$src" "$dst") ;;
        ringsync-nofsync) CMD=("$RINGSYNC_BIN" copy --quiet --fsync none "${RS_EXTRA[@]}" "$src" "$dst") ;;
        cp)               CMD=("${BIN[cp]}" -a "$src/." "$dst") ;;
        rsync)            CMD=("${BIN[rsync]}" -aHAX "$src/" "$dst/") ;;
        # xcp: with DST absent, `xcp -r SRC DST` makes DST a copy of SRC (an
        # existing DST would get DST/basename(SRC)). -o keeps ownership like cp -a.
        xcp)              CMD=("${BIN[xcp]}" -r -o --no-progress "$src" "$dst") ;;
        # fcp: same rule; it has no options besides --help/--version.
        fcp)              CMD=("${BIN[fcp]}" "$src" "$dst") ;;
        floor)            CMD=(python3 "$TOOLS_DIR/floor-small.py" "$src" "$dst") ;;
    esac
}

now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
us_to_s() { printf '%d.%06d' $(($1 / 1000000)) $(($1 % 1000000)); }

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
if [[ " ${CACHE_LIST[*]} " == *" cold "* ]]; then
    drop_caches 2>/dev/null || die "cannot write /proc/sys/vm/drop_caches (needed for CACHES=cold)"
fi

warm_read() {
    find "$1" -type f -print0 | xargs -0 -r cat >/dev/null
}

declare -A VERIFIED=()
FAILURES=0
echo "tool,dataset,cache,round,seconds" >"$CSV"
echo "tool,dataset,cache,round,sync_seconds" >"$SYNC_CSV"
: >"$VERIFY_TSV"

# run_one TOOL DATASET CACHE ROUND POLICY; POLICY (see the header):
#   fresh      nothing is deleted (the block's destinations go after its last run)
#   rm         rm -rf the block's earlier destinations, sync (big: one inode)
#   rm-settle  rm -rf the block's earlier destinations, sync, DELETE_SETTLE_S wait
run_one() {
    local tool=$1 ds=$2 cache=$3 round=$4 policy=$5
    local src="$DATA/$ds" blk="$DST_ROOT/$ds/$cache"
    local dst="$blk/$tool-r$round" logf="$LOG_DIR/$ds.$cache.$round.$tool.log"
    local t0 t1 s0 s1 rc secs
    if [[ "$policy" != fresh ]] && has_entries "$blk"; then
        if [[ "$policy" == rm-settle ]]; then mass_delete "${blk:?}"/*; else rm -rf "${blk:?}"/*; fi
    fi
    [[ ! -e "$dst" ]] || die "destination $dst already exists"
    tool_cmd "$tool" "$src" "$dst"
    settle "$cache" "$src"
    if [[ "$cache" == cold ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
    t0=$(now_us)
    if "${CMD[@]}" >"$logf" 2>&1; then rc=0; else rc=$?; fi
    t1=$(now_us)
    s0=$(now_us); sync; s1=$(now_us)
    if ((rc != 0)); then
        FAILURES=$((FAILURES + 1))
        {
            echo "bench-copy: ======== FAILED: $tool on $ds ($cache, round $round), exit status $rc"
            echo "bench-copy: command: ${CMD[*]}"
            echo "bench-copy: log: $logf (last lines follow)"
            tail -n 15 "$logf" | sed 's/^/    /'
        } >&2
        echo "$tool,$ds,$cache,$round,FAILED" >>"$CSV"
        return 0
    fi
    secs=$(us_to_s $((t1 - t0)))
    echo "$tool,$ds,$cache,$round,$secs" >>"$CSV"
    echo "$tool,$ds,$cache,$round,$(us_to_s $((s1 - s0)))" >>"$SYNC_CSV"
    printf 'bench-copy:   %-17s %-6s %-5s round %d: %ss\n' "$tool" "$ds" "$cache" "$round" "$secs" >&2
    if [[ "$VERIFY" == 1 && "$tool" != floor && -z "${VERIFIED[$tool,$ds]:-}" ]]; then
        VERIFIED[$tool,$ds]=1
        local line
        if line=$(python3 "$TOOLS_DIR/treecmp.py" "$src" "$dst"); then :; else
            echo "bench-copy: ======== COPY CHECK FAILED: $tool on $ds: $line" >&2
        fi
        printf '%s\t%s\t%s\n' "$tool" "$ds" "$line" >>"$VERIFY_TSV"
    fi
}

ntools=${#TOOL_LIST[@]}
declare -A POLICY=()      # "$ds/$cache" -> report text
gib() { awk -v b="$1" 'BEGIN {if (b >= 2^30) printf "%.1f GiB", b / 2^30; else printf "%.1f MiB", b / 2^20}'; }
for ds in "${DATASET_LIST[@]}"; do
    # Space one copy takes: allocated bytes (du without --apparent-size also
    # counts directory blocks) and inodes (every name; hardlinks overcount).
    ds_bytes=$(du -sB1 "$DATA/$ds" | cut -f1)
    ds_inodes=$(find "$DATA/$ds" | wc -l)
    for cache in "${CACHE_LIST[@]}"; do
        blk="$DST_ROOT/$ds/$cache"
        mkdir -p "$blk"
        if [[ "$ds" == big ]]; then
            policy="rm"
            POLICY[$ds/$cache]="rm -rf of the previous destination + sync before each run (one file: no inode-reuse effect)"
        else
            runs_here=$((ntools * RUNS))
            need_b=$((ds_bytes * runs_here)) need_i=$((ds_inodes * runs_here))
            read -r free_b free_i < <(df -P -B1 "$BENCH_DIR" | awk 'NR==2 {printf "%s ", $4}'
                                      df -P -i "$BENCH_DIR" | awk 'NR==2 {print $4}')
            [[ "$free_i" =~ ^[0-9]+$ ]] || free_i=0
            if ((need_b * 10 <= free_b * 8)) && { ((free_i == 0)) || ((need_i * 10 <= free_i * 8)); }; then
                policy=fresh
                POLICY[$ds/$cache]="fresh directory per run, nothing deleted between runs; all $runs_here deleted after the last run, then $SETTLE_DESC before the next timed run"
            else
                policy=rm-settle
                POLICY[$ds/$cache]="**FALLBACK (disk space)**: $runs_here copies need $(gib "$need_b") / $need_i inodes, over 80% of the free $(gib "$free_b") / $free_i inodes; rm -rf of the previous destination + sync + ${DELETE_SETTLE_S} s wait before each run"
                log "WARNING: $ds/$cache: $runs_here copies need $(gib "$need_b") and $need_i inodes, over 80% of the free $(gib "$free_b") / $free_i inodes under $BENCH_DIR; falling back to rm + sync + ${DELETE_SETTLE_S}s wait before each run (slow)"
            fi
        fi
        log "== dataset $ds, $cache cache, $RUNS round(s), tools: ${TOOL_LIST[*]}, destinations: $policy"
        for ((r = 1; r <= RUNS; r++)); do
            if [[ "$cache" == warm ]]; then warm_read "$DATA/$ds"; fi
            for ((i = 0; i < ntools; i++)); do
                run_one "${TOOL_LIST[$(((r - 1 + i) % ntools))]}" "$ds" "$cache" "$r" "$policy"
            done
        done
        if [[ "$policy" == rm ]]; then
            rm -rf "$blk"
        else
            log "deleting the $ds/$cache destinations"
            mass_delete "$blk"
        fi
    done
done

# ---------------------------------------------------------------- 4. fio copy bound
FIO_READ="" FIO_WRITE="" FIO_CMD=""
if [[ "$FIO" == 1 ]]; then
    if [[ "$SCALE" == full ]]; then fio_size=2G; else fio_size=64M; fi
    mkdir -p "$BENCH_DIR/fio"
    fio_json="$WORK/fio.json"
    fio_args=(--output-format=json "--output=$fio_json"
        --direct=1 --bs=1M --iodepth=32 --ioengine=io_uring "--size=$fio_size"
        --name=seqread --rw=read "--filename=$BENCH_DIR/fio/read.dat"
        --name=seqwrite --rw=write "--filename=$BENCH_DIR/fio/write.dat")
    FIO_CMD="fio ${fio_args[*]}"
    log "fio copy bound: $FIO_CMD"
    sync
    if fio "${fio_args[@]}" >"$LOG_DIR/fio.log" 2>&1; then
        read -r FIO_READ FIO_WRITE < <(python3 - "$fio_json" <<'EOF'
import json, sys
jobs = {j["jobname"]: j for j in json.load(open(sys.argv[1]))["jobs"]}
print("%.1f %.1f" % (jobs["seqread"]["read"]["bw_bytes"] / 1e6, jobs["seqwrite"]["write"]["bw_bytes"] / 1e6))
EOF
        )
        log "fio: read ${FIO_READ} MB/s, write ${FIO_WRITE} MB/s"
    else
        FAILURES=$((FAILURES + 1))
        log "======== FAILED: fio (log: $LOG_DIR/fio.log)"
        tail -n 15 "$LOG_DIR/fio.log" >&2 || true
    fi
    rm -rf "$BENCH_DIR/fio"
fi

# ---------------------------------------------------------------- 5. memory test
MEM_SECTION="$WORK/mem.md"
: >"$MEM_SECTION"
if [[ "$MEMTEST" == 1 ]]; then
    huge_bytes=$(dataset_bytes huge)
    dst="$DST_ROOT/huge"
    rm -rf "$dst"
    sync
    tv="$WORK/time-v.txt"
    mem_cmd=(/usr/bin/time -v -o "$tv" "$RINGSYNC_BIN" copy --quiet --memory 64M "${RS_EXTRA[@]}" "$DATA/huge" "$dst")
    log "memory test: ${mem_cmd[*]}"
    t0=$(now_us)
    if "${mem_cmd[@]}" >"$LOG_DIR/memtest.log" 2>&1; then rc=0; else rc=$?; fi
    t1=$(now_us)
    {
        echo "## Memory test"
        echo
        echo "\`/usr/bin/time -v $RINGSYNC_BIN copy --quiet --memory 64M ${RS_EXTRA[*]:+${RS_EXTRA[*]} }$DATA/huge $dst\`"
        echo "($(awk -v b="$huge_bytes" 'BEGIN {printf "%.2f GiB", b / 2^30}') source)"
        echo
        if ((rc != 0)); then
            FAILURES=$((FAILURES + 1))
            echo "**FAILED** (exit status $rc; log: \`$LOG_DIR/memtest.log\`)"
            log "======== FAILED: memory test, exit status $rc"
            tail -n 15 "$LOG_DIR/memtest.log" >&2 || true
        else
            rss_kib=$(awk -F': *' '/Maximum resident set size/ {print $2}' "$tv")
            rss_mib=$(awk -v k="$rss_kib" 'BEGIN {printf "%.1f", k / 1024}')
            verdict=$(awk -v k="$rss_kib" -v l="$MEM_LIMIT_MIB" 'BEGIN {print (k / 1024 < l) ? "PASS" : "FAIL"}')
            echo "| max RSS | limit | result | wall s |"
            echo "|---:|---:|:-:|---:|"
            echo "| ${rss_mib} MiB | < ${MEM_LIMIT_MIB} MiB | **${verdict}** | $(us_to_s $((t1 - t0))) |"
            log "memory test: max RSS ${rss_mib} MiB -> $verdict"
        fi
        echo
    } >>"$MEM_SECTION"
    rm -rf "$dst"
fi

# ---------------------------------------------------------------- 6. report
big_bytes=""
if [[ " ${DATASET_LIST[*]} " == *" big "* ]]; then big_bytes=$(dataset_bytes big); fi
fstype=$(stat -f -c %T "$BENCH_DIR")
{
    report_head "ringsync copy benchmark" "tiny datasets, numbers are meaningless."
    echo "Destination policy (DELETE_SETTLE_S=$DELETE_SETTLE_S; why: Method):"
    echo
    for d in "${DATASET_LIST[@]}"; do
        declare -A seen=()
        texts=()
        for c in "${CACHE_LIST[@]}"; do
            p=${POLICY[$d/$c]:-not run}
            if [[ -z "${seen[$p]:-}" ]]; then seen[$p]=$c; texts+=("$p"); else seen[$p]+=", $c"; fi
        done
        for p in "${texts[@]}"; do echo "- \`$d\` (${seen[$p]}): $p"; done
        unset seen
    done
    echo
    echo "## Machine"
    echo
    echo "- nproc: $(nproc)"
    echo "- CPU: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "- kernel: $(uname -r)"
    echo "- \`$BENCH_DIR\`: fs type \`$fstype\` ($(findmnt -n -o SOURCE,FSTYPE,OPTIONS -T "$BENCH_DIR" 2>/dev/null || echo '?'))"
    echo "- \`free -g\`:"
    echo
    echo '```'
    free -g
    echo '```'
    echo
    echo "## Tool versions"
    echo
    cat "$VERSIONS"
    if ((${#NOT_INSTALLED[@]})); then
        echo
        echo "NOT INSTALLED (not benchmarked): ${NOT_INSTALLED[*]}"
    fi
    echo
    echo "## Method"
    echo
    echo "- Datasets (\`tools/gen-dataset.py\`, scale \`$SCALE\`, seed $SEED, cached in \`$DATA\`):"
    for d in "${DATASET_LIST[@]}"; do
        echo "  - \`$d\`: $(find "$DATA/$d" -type f | wc -l) regular-file names (hardlinks counted per name), $(find "$DATA/$d" -type l | wc -l) symlinks, $(find "$DATA/$d" -type d | wc -l) dirs, $(awk -v b="$(dataset_bytes "$d")" 'BEGIN {printf "%.2f GiB", b / 2^30}')"
    done
    echo "- Source and destination on the same filesystem (\`$DST_ROOT\`). The destination never exists before a run."
    echo "- $RUNS round(s) per dataset and cache mode; each round runs every tool once, starting tool rotated each round."
    echo "- Before every timed run (untimed): \`sync\`; **cold** also \`echo 3 > /proc/sys/vm/drop_caches\`;"
    echo "  **warm**: the source is read once (\`cat\` of every file to /dev/null) at the start of each round."
    echo "- Destinations: ext4 won't reuse an inode freed < 60 s ago (360 s while its inode-table block is dirty;"
    echo "  \`recently_deleted()\` in fs/ext4/ialloc.c), so a copy right after \`rm -rf\` of a many-file tree mostly"
    echo "  measures the kernel skipping those inodes. Many-file datasets therefore get a fresh directory per run and"
    echo "  are deleted only after all runs of that dataset and cache mode, followed by \`sync\` and a"
    echo "  DELETE_SETTLE_S wait before the next timed run (policy per dataset: top of this report)."
    echo "- Only the copy command is timed. **\`ringsync\` defaults to \`--fsync end\`** (it syncs the target filesystem"
    echo "  before exiting); cp, rsync, xcp and fcp do not, so \`ringsync --fsync none\` is the like-for-like row."
    echo "  \"median cmd+sync\" adds the untimed \`sync\` that followed each run, for a flushed-to-disk comparison."
    echo "- Commands (SRC, DST): \`ringsync copy --quiet [--fsync none] SRC DST\`, \`cp -a SRC/. DST\`, \`rsync -aHAX SRC/ DST/\`,"
    echo "  \`xcp -r -o --no-progress SRC DST\`, \`fcp SRC DST\`."
    if ((${#RS_EXTRA[@]})); then
        echo "- **RINGSYNC_ARGS**: both ringsync rows (and the memory test) also pass \`${RS_EXTRA[*]}\` (before SRC DST)."
    fi
    echo "- Raw runs: \`$(basename "$CSV")\`; per-run logs: \`$LOG_DIR\`."
    if ((FAILURES)); then
        echo
        echo "**$FAILURES failure(s)**: see FAILED entries below and the logs."
    fi
    echo
    summ_args=(--csv "$CSV" --sync-csv "$SYNC_CSV" --tools "${TOOL_LIST[*]}")
    if [[ "$VERIFY" == 1 ]]; then summ_args+=(--verify "$VERIFY_TSV"); fi
    if [[ -n "$FIO_READ" ]]; then summ_args+=(--fio-read "$FIO_READ" --fio-write "$FIO_WRITE"); fi
    if [[ -n "$big_bytes" ]]; then summ_args+=(--big-bytes "$big_bytes"); fi
    python3 "$TOOLS_DIR/summarize.py" "${summ_args[@]}"
    if [[ -n "$FIO_CMD" ]]; then
        echo "fio command: \`${FIO_CMD//$WORK/\$TMP}\`"
        if [[ -z "$FIO_READ" ]]; then echo; echo "**fio FAILED**; see \`$LOG_DIR/fio.log\`."; fi
        echo
    fi
    cat "$MEM_SECTION"
} >"$REPORT"

cat "$REPORT"
log "report: $REPORT"
log "raw CSV: $CSV"
if ((FAILURES)); then
    log "======== $FAILURES FAILURE(S); see the report and $LOG_DIR"
    exit 1
fi
