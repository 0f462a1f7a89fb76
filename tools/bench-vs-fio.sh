#!/usr/bin/env bash
# Validate `ringsync bench` against fio: the same operations on the same files, side by side.
#
# Run as root from anywhere:   sudo tools/bench-vs-fio.sh
# Smoke-test the script:       sudo QUICK=1 tools/bench-vs-fio.sh
#
# The issue's acceptance items: ringsync's read-only and write-only MB/s within ±TOLERANCE %
# (10) of fio's for the same combination, and its best copy path >= COPY_TARGET % (90) of the
# copy bound: fio with a sequential read job and a sequential write job running at once
# (io_uring, direct, 1M, qd32), bound = min(read, write) MB/s. Exit status 1 if a target is
# missed or a run failed (after the report is written).
#
# 1. Matched combinations (COMBOS), RUNS rounds; every round runs every combination once, the
#    order rotating from round to round. One pair = one combination once per tool, on the same
#    files:
#      a. layout: `ringsync bench --files $BENCH_DIR/tmp.X/files/pair --size SIZE ...` with a
#         0.05 s psync read (discarded), which lays out src.0 and dst.0 (SIZE each, unique
#         incompressible data, fsynced and dropped from the cache); then sync and SETTLE
#         seconds of rest, so that neither tool measures the disk while it is still busy with
#         the layout;
#      b. ringsync: sync; echo 3 > /proc/sys/vm/drop_caches; then
#           ringsync bench --files <that dir> --size SIZE --paths P --modes M --block-sizes BS
#                          --qd QD --runtime RUNTIME --warmup WARMUP --json -q
#         which finds both files in place and uses them as they are (the run fails unless its
#         JSON says reused_files 2 and the files' inode, size and extents are unchanged);
#      c. fio: sync; drop_caches; fio on that very src.0 (read) or dst.0 (write): same inode,
#         same extents (inode, size and `filefrag -e` extents compared before and after; a fio
#         that says "Laying out" fails the run); --size = the file's size, so fio lays nothing
#         out; combinations marked :batch then run fio again with ringsync's submission
#         pattern (see below), an extra "fio +batch" row; the two fio jobs swap places from
#         round to round;
#      d. the files are deleted.
#    Odd rounds run b before c, even rounds c before b: whatever the disk does after a
#    layout or after the other tool falls on both tools alike.
#    Results: median MB/s per tool, min-max, ratio = median ringsync / median fio, and the
#    median of the per-pair ratios. Verdict PASS when |ratio - 1| <= TOLERANCE %. JUDGE picks
#    the fio job that decides the exit status where a combination has both: "match" (default),
#    the job that submits the way ringsync does for that block size (see Submission below), so
#    the same requests reach the disk: plain fio from 1 MiB up, fio +batch below; or "batch" or
#    "plain" for every combination. The other job's row is shown as "(info)".
#
# How ringsync works, and the fio options that reproduce it (fio 3.33, `fio --enghelp=io_uring`):
#   A pass: sequential BS-sized ops over the whole file with up to QD in flight; at the end of
#   the file ringsync lets the queue drain, fdatasyncs the target (write mode, every path, also
#   O_DIRECT), drops both files' pages (POSIX_FADV_DONTNEED, cold mode, buffered paths) and
#   starts over at offset 0; after the deadline, one more fdatasync. All of it timed. fio does
#   the same with one pass per loop:
#     --loops=1000000 --runtime=RUNTIME (not time_based: fio stops at the runtime, mid-pass)
#     --ramp_time=WARMUP --size=<file bytes> --rw=read|write --bs=BS --iodepth=QD
#     --invalidate=1 (fio drops the file's pages at every open, i.e. every loop: checked with
#     strace, one fadvise64 per loop) --fadvise_hint=0 (fio's default FADV_SEQUENTIAL doubles the
#     readahead window; ringsync gives no hint) --lat_percentiles=1 (submission-to-completion
#     latency, what ringsync records)
#     writes: --end_fsync=1: fio waits for its queue, fsyncs at the end of every loop and of the
#     last partial one, inside its runtime (checked: strace on psync, a 1.1 s fsync made the
#     runtime 1.1 s longer). fsync and not fdatasync: an inode timestamp more per pass.
#   Why not time_based with --fdatasync=N (N = ops per pass)? fio zeroes its op counter when the
#   ramp ends, so its fdatasyncs fall mid-pass, and the DONTNEED at the wrap cannot drop the
#   dirty pages: fio would keep part of the file cached. And with loops, fio drains its queue at
#   every pass end, as ringsync does. One catch: fio 3.33 stops a looped job after its first
#   loop, with 0 bytes, when the ramp_time is still running at the end of that loop's I/O (the
#   script fails such runs): WARMUP must be shorter than the first pass's I/O. The fastest here
#   is a buffered write pass, which only fills the page cache (~4 GB/s: 1 GiB in ~0.25 s).
#   path           ringsync                                   fio
#   uring-direct   io_uring READ_FIXED/WRITE_FIXED, O_DIRECT  --ioengine=io_uring --direct=1 --fixedbufs=1
#   uring-fixed    the same, buffered                         --ioengine=io_uring --direct=0 --fixedbufs=1
#   uring-vec      READV/WRITEV, 4 iovecs per op, buffered    --ioengine=io_uring --direct=0 --fixedbufs=0 --nonvectored=0 (1 iovec)
#   psync          pread/pwrite, one at a time, buffered      --ioengine=psync --direct=0
#   Neither registers files (ringsync registers its buffers only; fio registerfiles=0); both set
#   up their rings with SINGLE_ISSUER|DEFER_TASKRUN.
#   Writes and fixed buffers: fio's io_uring engine (3.33 and 3.42 alike) keeps one SQE per io_u
#   and leaves buf_index set when it turns that SQE into an FSYNC, which the kernel rejects with
#   EINVAL (tracepoint io_uring:io_uring_req_failed: "opcode FSYNC ... buf_index=31 ...
#   error=-22"); 3.33 ignores the error, 3.42 prints "end_fsync failed". With fixedbufs=1 and
#   iodepth > 1 the end_fsync does nothing (the whole file was still dirty after such runs).
#   The script probes FIO_BIN for this (a 64 MiB buffered write with fixedbufs=1, iodepth=4,
#   end_fsync=1; broken if it reports the failure or /proc/meminfo Dirty stays >= 32 MiB):
#     working (e.g. fio built from source with tools/fio-fsync-buf-index.patch, which clears
#     buf_index for sync ops): writes use --fixedbufs=1, i.e. WRITE_FIXED as ringsync does;
#     broken (stock fio): writes use --fixedbufs=0 --nonvectored=1 (IORING_OP_WRITE): the
#     buffers are pinned per op, which costs CPU and latency that ringsync does not pay.
#   Build the fixed fio: FIO_SRC=<fio checkout> tools/build-fio.sh (prints the binary's path).
#   fio's ramp_time does not mix well with --loops (see WARMUP below).
#   Submission: ringsync reaps every completion that is ready and refills every free slot. Ops
#   under 1 MiB (ring::SOLO_BYTES) go to the kernel together, in one io_uring_enter; ops of
#   1 MiB or more each in their own enter as they are queued. fio by default submits each op on
#   its own (iodepth_batch_submit=1). Ops submitted together in one enter (three or more) share
#   a block plug, which merges adjacent sequential ones into bigger requests (per-run request
#   counts and sizes are in the report); that pays for small ops and costs for 1 MiB ones on
#   this disk, which writes 3 MiB requests more slowly than 1 MiB ones (perf/hugepages-20261122.md).
#   ":batch" combinations run fio a second time submitting in batches: --iodepth_batch_submit=QD
#   --iodepth_batch_complete_max=QD (reap 1..QD, refill all, submit together). Below 1 MiB that
#   job is the one that matches ringsync operation for operation; from 1 MiB up plain fio is,
#   and the +batch row shows what batching would cost.
#   Buffered writes: a pass dirties the file in the page cache (1 GiB is far below this VM's
#   dirty limits), then the pass's sync writes it out; both tools do exactly that.
#   Buffer memory: ringsync backs a thread's buffer pool of 1 MiB or more (BS x QD; psync: BS)
#   with 2 MiB transparent huge pages, so a 1 MiB op is one physically contiguous segment and
#   reaches the disk as one request (with 4 KiB pages this VM's virtio disk, max_segments 254,
#   splits it 1016 KiB + 8 KiB; O_DIRECT 1M qd 1 reads went from ~1.0 to ~2.1 GB/s). fio's
#   malloc'd buffers are 4 KiB pages, so for those combinations fio gets the same memory:
#   --iomem=shmhuge, from hugetlb pages the script reserves (vm.nr_hugepages, put back at
#   exit) when THP is on here and a probe job works; otherwise fio keeps 4 KiB pages and the
#   report says so. ringsync's JSON tells how much of its buffers got huge pages
#   (huge_page_bytes); a pair where it got less than all of them carries a note.
#
# 2. The copy bound. First a sweep, once: `ringsync bench --modes copy --paths COPY_PATHS
#    --block-sizes COPY_BS --qd COPY_QD --runtime COPY_SWEEP_RUNTIME`; its JSON `best` copy entry
#    (ringsync leaves out reflink, which copies nothing, and cfr where the filesystem could
#    share extents) picks the combination. Then RUNS pairs as in 1 (fresh files, settled, the
#    order alternating): that combination at RUNTIME, and on the same src.0/dst.0:
#      fio --ioengine=io_uring --direct=1 --fixedbufs=1 --bs=1M --iodepth=32 --size=<file>
#          --time_based --runtime=RUNTIME --ramp_time=WARMUP --invalidate=1 --fadvise_hint=0
#          --name=read --rw=read --filename=src.0 --name=write --rw=write --filename=dst.0
#    (two jobs at once, no group_reporting: each job's own bandwidth). A copy reads and writes
#    every byte once, so it cannot go faster than either stream does while the other one runs:
#    bound = min(read, write) MB/s of the same run. Target: median ringsync best copy >=
#    COPY_TARGET % of the median bound. The bound's write job does no fsync (the issue's job as
#    written); ringsync's copy pays its per-pass fdatasync, so the bound is slightly generous.
#
# Environment (all optional):
#   RUNS=3                 rounds (pairs per combination; copy pairs)
#   SIZE=1G                file size (ringsync --size: K/M/G in powers of 1024)
#   RUNTIME=3              measured seconds per run (both tools)
#   SETTLE=2               seconds of rest between a pair's layout and its first measurement
#   CPUS=                  run every measured command under `taskset -c CPUS` (e.g. the CPU that
#                          takes the disk's interrupt, /proc/interrupts): a thread that waits
#                          for completions on another CPU pays a cross-CPU wakeup per op, and
#                          where an unpinned tool lands decides its qd 1 numbers (on this VM,
#                          fio 1M O_DIRECT qd 1 reads: 1117-1165 MB/s pinned to CPU 0, 1785-2066
#                          on CPU 1, the IRQ's); empty: no taskset, the scheduler decides
#   WARMUP=0.1             warm-up seconds (ringsync --warmup, fio --ramp_time). fio and
#                          ramp_time with --loops: 3.33 loses the job (0 bytes) when the ramp
#                          outlasts the first loop's I/O, so keep it below one pass; 3.42 lost
#                          every buffered psync write job with any ramp_time here: use WARMUP=0
#   COMBOS="..."           MODE:PATH:BS:QD[:batch] each (QD 1 for psync; an io_uring combination
#                          under 1 MiB needs :batch for a fio job that submits as ringsync does);
#                          default: read and write
#                          uring-direct 1M:1, 1M:32:batch, 64K:32:batch, 4K:32:batch; read
#                          uring-fixed 1M:32, uring-vec 1M:32, psync 1M; write uring-fixed 1M:32,
#                          psync 1M
#   COPY=1                 0: skip the copy sweep and the copy bound
#   COPY_PATHS=uring-vec,uring-fixed,uring-direct,psync,cfr,splice,reflink   sweep --paths
#   COPY_BS=64K,1M,8M      sweep --block-sizes
#   COPY_QD=1,8,32,64      sweep --qd
#   COPY_SWEEP_RUNTIME=2   sweep --runtime per combination (the pick is re-measured at RUNTIME)
#   TOLERANCE=10           allowed |ringsync/fio - 1|, %
#   COPY_TARGET=90         required best copy / bound, %
#   BENCH_DIR=/var/tmp/ringsync-bench/bench-vs-fio   test files (tmp.*/, removed at the end) and
#                          logs (every JSON and stderr of both tools: logs/<scale>-<report name>/)
#   OUT_DIR=perf           where bench-vs-fio-YYYYmmdd-HHMM.{md,csv} go; QUICK: $BENCH_DIR/quick-reports
#   QUICK=1                SIZE=512M RUNTIME=1 WARMUP=0.05 RUNS=1, small copy sweep (unless set)
#   RINGSYNC_BIN=target/release/ringsync   never built here; copied to a temporary directory
#                          first, so a rebuild during the run doesn't change what is measured
#   FIO_BIN=fio            fio to compare with (e.g. a build from tools/build-fio.sh)
#   JUDGE=match            which fio job decides the verdict in :batch combinations: match (the
#                          one submitting as ringsync does: plain from 1 MiB, +batch below) |
#                          batch | plain
#   KEEP=0                 1: keep the files of every pair of the last round (BENCH_DIR/tmp.*)
#
# Each run also records the block device's counters over its last RUNTIME seconds (the measured
# part; /sys/class/block/DEV/stat sampled every 10 ms: MB, requests, mean request size in the
# mode's direction) and whether other benchmark or build processes (cargo, rustc, fio, a ringsync
# under some target/) were running at its start or end: the VM is shared, and a foreign run
# shows in that column.
set -euo pipefail

TOOL=bench-vs-fio
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tool_args "$@"

# Record the exact invocation (user-set variables + command) before defaulting.
record_cmdline "$@" -- QUICK RUNS SIZE RUNTIME WARMUP SETTLE CPUS COMBOS COPY COPY_PATHS COPY_BS COPY_QD COPY_SWEEP_RUNTIME TOLERANCE COPY_TARGET BENCH_DIR OUT_DIR RINGSYNC_BIN FIO_BIN JUDGE KEEP

QUICK=${QUICK:-0}
if [[ "$QUICK" == 1 ]]; then
    SCALE=quick; RUNS=${RUNS:-1}; SIZE=${SIZE:-512M}; RUNTIME=${RUNTIME:-1}; WARMUP=${WARMUP:-0.05}
    COPY_BS=${COPY_BS:-1M}; COPY_QD=${COPY_QD:-1,32}; COPY_SWEEP_RUNTIME=${COPY_SWEEP_RUNTIME:-0.5}
else
    SCALE=full; RUNS=${RUNS:-3}; SIZE=${SIZE:-1G}; RUNTIME=${RUNTIME:-3}; WARMUP=${WARMUP:-0.1}
    COPY_BS=${COPY_BS:-64K,1M,8M}; COPY_QD=${COPY_QD:-1,8,32,64}; COPY_SWEEP_RUNTIME=${COPY_SWEEP_RUNTIME:-2}
fi
DEFAULT_COMBOS="read:uring-direct:1M:1 read:uring-direct:1M:32:batch read:uring-direct:64K:32:batch
read:uring-direct:4K:32:batch write:uring-direct:1M:1 write:uring-direct:1M:32:batch
write:uring-direct:64K:32:batch write:uring-direct:4K:32:batch read:uring-fixed:1M:32
read:uring-vec:1M:32 read:psync:1M:1 write:uring-fixed:1M:32 write:psync:1M:1"
COMBOS=${COMBOS:-$DEFAULT_COMBOS}
SETTLE=${SETTLE:-2}
CPUS=${CPUS:-}
COPY=${COPY:-1}
COPY_PATHS=${COPY_PATHS:-uring-vec,uring-fixed,uring-direct,psync,cfr,splice,reflink}
TOLERANCE=${TOLERANCE:-10}
COPY_TARGET=${COPY_TARGET:-90}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ringsync-bench/bench-vs-fio}
if [[ "$QUICK" == 1 ]]; then OUT_DIR=${OUT_DIR:-$BENCH_DIR/quick-reports}; else OUT_DIR=${OUT_DIR:-$REPO/perf}; fi
RINGSYNC_BIN=${RINGSYNC_BIN:-$REPO/target/release/ringsync}
FIO_BIN=${FIO_BIN:-fio}
JUDGE=${JUDGE:-match}
KEEP=${KEEP:-0}

NUM='^[0-9]+(\.[0-9]+)?$'
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
[[ "$SIZE" =~ ^[1-9][0-9]*[KMG]?$ ]] || die "SIZE must be an integer with an optional K/M/G suffix (got '$SIZE')"
for v in RUNTIME WARMUP SETTLE COPY_SWEEP_RUNTIME TOLERANCE COPY_TARGET; do
    [[ "${!v}" =~ $NUM ]] || die "$v must be a non-negative number (got '${!v}')"
done
awk -v r="$RUNTIME" -v s="$COPY_SWEEP_RUNTIME" 'BEGIN {exit !(r > 0 && s > 0)}' || die "RUNTIME and COPY_SWEEP_RUNTIME must be > 0"
[[ "$COPY" =~ ^[01]$ ]] || die "COPY must be 0 or 1"
[[ "$KEEP" =~ ^[01]$ ]] || die "KEEP must be 0 or 1"
[[ "$JUDGE" =~ ^(match|batch|plain)$ ]] || die "JUDGE must be match, batch or plain (got '$JUDGE')"
[[ -z "$CPUS" || "$CPUS" =~ ^[0-9]+([-,][0-9]+)*$ ]] || die "CPUS must be a CPU list such as 1 or 0-1 (got '$CPUS')"
[[ -z "$CPUS" ]] || command -v taskset >/dev/null || die "CPUS needs taskset (util-linux)"
[[ "$COPY_BS" =~ ^[0-9]+[KMG]?(,[0-9]+[KMG]?)*$ ]] || die "COPY_BS must be a comma list of sizes (got '$COPY_BS')"
[[ "$COPY_QD" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "COPY_QD must be a comma list of integers (got '$COPY_QD')"
[[ "$COPY_PATHS" =~ ^[a-z-]+(,[a-z-]+)*$ ]] || die "COPY_PATHS must be a comma list of path names (got '$COPY_PATHS')"
read -r -a COMBO_LIST <<<"$(echo "$COMBOS" | tr '\n' ' ')"
((${#COMBO_LIST[@]})) || die "COMBOS must not be empty"
for c in "${COMBO_LIST[@]}"; do
    [[ "$c" =~ ^(read|write):(uring-direct|uring-fixed|uring-vec|psync):[1-9][0-9]*[KMG]?:[1-9][0-9]*(:batch)?$ ]] ||
        die "bad combination '$c' (MODE:PATH:BS:QD[:batch], MODE read|write, PATH uring-direct|uring-fixed|uring-vec|psync)"
done
[[ "$(id -u)" == 0 ]] || die "must run as root (drop_caches)"
command -v python3 >/dev/null || die "python3 is required"
command -v "$FIO_BIN" >/dev/null || die "fio not found ('$FIO_BIN'; apt-get install fio)"
command -v filefrag >/dev/null || die "filefrag (e2fsprogs) is required"
[[ -x "$RINGSYNC_BIN" ]] || die "ringsync binary '$RINGSYNC_BIN' not found or not executable (build it: cargo build --release)"

unit() { case "$1" in *K) echo 1024 ;; *M) echo 1048576 ;; *G) echo 1073741824 ;; *) echo 1 ;; esac; }
bytes() { echo $(( ${1%[KMG]} * $(unit "$1") )); }
SIZE_B=$(bytes "$SIZE")
for c in "${COMBO_LIST[@]}"; do
    IFS=: read -r _ _ bs _ <<<"$c"
    ((SIZE_B % $(bytes "$bs") == 0)) || die "SIZE ($SIZE) must be a multiple of every block size ($bs in '$c')"
done
ms() { awk -v s="$1" 'BEGIN {printf "%d", s * 1000 + 0.5}'; }
RUNTIME_MS=$(ms "$RUNTIME")
WARMUP_MS=$(ms "$WARMUP")

mkdir -p "$BENCH_DIR" "$OUT_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
OUT_DIR=$(cd "$OUT_DIR" && pwd)
free_b=$(df -P -B1 "$BENCH_DIR" | awk 'NR==2 {print $4}')
((2 * SIZE_B * 10 <= free_b * 9)) || die "need $((2 * SIZE_B >> 20)) MiB free under $BENCH_DIR, have $((free_b >> 20)) MiB"
new_report bench-vs-fio
CSV="${REPORT%.md}.csv"
LOG_DIR="$BENCH_DIR/logs/$SCALE-$(basename "${REPORT%.md}")"
mkdir -p "$LOG_DIR"
WORK=$(mktemp -d "$BENCH_DIR/tmp.XXXXXX")
FILES="$WORK/files"
mkdir -p "$FILES"
NR_HUGE_OLD=""
cleanup() {
    if [[ -n "$NR_HUGE_OLD" ]]; then echo "$NR_HUGE_OLD" >/proc/sys/vm/nr_hugepages || true; fi
    if [[ "$KEEP" == 1 ]]; then
        log "KEEP=1: files left in $FILES"
        rm -f "$WORK/ringsync"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- 1. tools and machine
private_binary "$WORK"
"$RS" bench --help 2>&1 | grep -q -e '--files' || die "'$RINGSYNC_BIN bench --help' doesn't list --files (too old a build?)"
FIO_PATH=$(command -v "$FIO_BIN")
FIO_VER=$(first_line "$FIO_BIN" --version)
enghelp=$("$FIO_BIN" --enghelp=io_uring 2>&1 || true)
for o in fixedbufs nonvectored registerfiles; do
    grep -q "^$o" <<<"$enghelp" || die "$FIO_PATH: io_uring engine has no '$o' option (fio --enghelp=io_uring)"
done
# Does FIO_BIN's io_uring FSYNC work after fixed-buffer writes? (see "Writes and fixed buffers")
PROBE="$WORK/fsync-probe"
sync
"$FIO_BIN" --name=probe "--filename=$PROBE" --size=64M --rw=write --bs=1M --ioengine=io_uring --direct=0 \
    --fixedbufs=1 --iodepth=4 --end_fsync=1 --output-format=terse >"$PROBE.out" 2>&1 || true
dirty_kb=$(awk '/^Dirty:/ {print $2}' /proc/meminfo)
if grep -q -i "fsync failed\|invalid argument" "$PROBE.out" || ((dirty_kb >= 32768)); then
    FIXED_WRITES=0
    FIXED_NOTE="no: its end_fsync fails after fixed-buffer writes (Dirty ${dirty_kb} kB after the probe); writes run with --fixedbufs=0 --nonvectored=1"
else
    FIXED_WRITES=1
    FIXED_NOTE="yes (Dirty ${dirty_kb} kB after the probe); writes run with --fixedbufs=1"
fi
# Huge-page buffers for fio where ringsync's pool gets them (see "Buffer memory").
HUGE_MIN_B=1048576
huge_pool() { (($(bytes "$1") * $2 >= HUGE_MIN_B)); } # BS QD: does ringsync back this pool with THP?
THP=$(grep -o '\[[a-z]*\]' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null | tr -d '[]' || true)
hp_kb=$(awk '/^Hugepagesize:/ {print $2}' /proc/meminfo)
need=0 # 2 MiB pages of the biggest fio job's buffers (QD x BS plus a page of alignment, rounded up, one spare)
for c in "${COMBO_LIST[@]}"; do
    IFS=: read -r _ _ bs qd _ <<<"$c"
    if huge_pool "$bs" "$qd"; then
        p=$((($(bytes "$bs") * qd + 4096 + 2097151) / 2097152 + 1))
        ((p > need)) && need=$p
    fi
done
((COPY == 1 && need < 36)) && need=36 # the copy bound: two 1M x 32 jobs at once
FIO_HUGE=0
if [[ "$THP" != always && "$THP" != madvise ]]; then
    HUGE_NOTE="transparent huge pages are '${THP:-absent}' here: ringsync's buffers are 4 KiB pages, and so are fio's"
elif [[ "$hp_kb" != 2048 ]]; then
    HUGE_NOTE="huge page size ${hp_kb:-?} kB, not 2048: fio keeps 4 KiB pages (ringsync's pools >= 1 MiB are THP)"
elif ((need == 0)); then
    HUGE_NOTE="no combination has a buffer pool of 1 MiB or more"
else
    NR_HUGE_OLD=$(cat /proc/sys/vm/nr_hugepages)
    echo $((NR_HUGE_OLD + need)) >/proc/sys/vm/nr_hugepages 2>/dev/null || true
    hp_free=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
    if ((hp_free >= need)) && "$FIO_BIN" --name=hugeprobe "--filename=$PROBE" --size=4M --rw=read --bs=1M \
        --iodepth=1 --ioengine=io_uring --direct=1 --fixedbufs=1 --iomem=shmhuge --output-format=terse \
        >"$PROBE.out" 2>&1; then
        FIO_HUGE=1
        HUGE_NOTE="ringsync backs buffer pools of 1 MiB or more (BS x QD) with 2 MiB THP; fio gets --iomem=shmhuge for those combinations ($need hugetlb pages reserved: vm.nr_hugepages $NR_HUGE_OLD -> $((NR_HUGE_OLD + need)), put back at exit)"
    else
        HUGE_NOTE="could not give fio huge pages (HugePages_Free $hp_free of $need needed, or fio --iomem=shmhuge failed: $(head -c 200 "$PROBE.out" | tr '\n' ' ')): fio keeps 4 KiB pages while ringsync's pools >= 1 MiB are THP"
    fi
fi
rm -f "$PROBE" "$PROBE.out"
log "ringsync: $RINGSYNC_BIN: $RS_DESC"
log "fio: $FIO_PATH: $FIO_VER; fsync after fixed-buffer writes works: $FIXED_NOTE"
log "buffers: $HUGE_NOTE"

DEV_SRC=$(findmnt -n -o SOURCE -T "$BENCH_DIR" 2>/dev/null || echo '?')
DEV=${DEV_SRC#/dev/}
DEV_STAT="/sys/class/block/$DEV/stat"
[[ -r "$DEV_STAT" ]] || { log "no $DEV_STAT: device counters not recorded"; DEV_STAT=""; }
DISK=$DEV
if [[ -n "$DEV_STAT" && -e "/sys/class/block/$DEV/partition" ]]; then
    DISK=$(basename "$(dirname "$(readlink -f "/sys/class/block/$DEV")")")
fi
qattr() { tr -s ' \n' ' ' <"/sys/block/$DISK/queue/$1" 2>/dev/null | sed 's/ $//' || echo '?'; }
MACHINE="$WORK/machine.md"
{
    echo "- nproc: $(nproc); CPU: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "- memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo); vm.dirty_ratio $(cat /proc/sys/vm/dirty_ratio), dirty_background_ratio $(cat /proc/sys/vm/dirty_background_ratio)"
    echo "- kernel: $(uname -r)"
    echo "- \`$BENCH_DIR\`: $(findmnt -n -o SOURCE,FSTYPE,OPTIONS -T "$BENCH_DIR" 2>/dev/null | tr -s ' ' || echo '?')"
    echo "- device \`$DISK\`: $(awk '{printf "%.0f GiB", $1 * 512 / 2^30}' "/sys/block/$DISK/size" 2>/dev/null || echo '?'), driver \`$(basename "$(readlink -f "/sys/block/$DISK/device/driver" 2>/dev/null)" 2>/dev/null || echo '?')\`; queue: scheduler \`$(qattr scheduler)\`, write_cache \`$(qattr write_cache)\`, read_ahead_kb $(qattr read_ahead_kb), nr_requests $(qattr nr_requests), max_sectors_kb $(qattr max_sectors_kb), rotational $(qattr rotational)"
    echo "- ringsync: \`$RINGSYNC_BIN\`: $RS_DESC"
    echo "- fio: \`$FIO_PATH\`: $FIO_VER; fsync after fixed-buffer writes works: $FIXED_NOTE"
    echo "- buffers: $HUGE_NOTE"
    echo "- python3: $(first_line python3 --version)"
} >"$MACHINE"

# ---------------------------------------------------------------- 2. helpers
PY="$WORK/bvf.py"
cat >"$PY" <<'EOF'
"""Helpers of bench-vs-fio.sh: one tool's JSON -> CSV rows; the report."""
import csv, json, os, statistics, sys

FIELDS = ["section", "combo", "mode", "path", "bs", "qd", "tool", "round", "status", "mb_s", "iops",
          "cpu_s_per_gb", "lat_p50_us", "lat_p99_us", "lat_p999_us", "lat_max_us", "bytes", "seconds",
          "dev_read_mb", "dev_write_mb", "dev_reqs", "dev_req_kib", "foreign", "note"]
BASE = ["section", "combo", "mode", "path", "bs", "qd", "tool", "round", "devstat", "foreign"]


def append(csv_path, row):
    new = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in FIELDS})


def base(a):
    """SECTION COMBO MODE PATH BS QD TOOL ROUND DEVSTAT FOREIGN; DEVSTAT = 'r_ios r_sect w_ios w_sect'
    deltas (mode decides which direction the request count and size describe)."""
    b = dict(zip(BASE, a))
    r_ios, r_sec, w_ios, w_sec = (int(x) for x in b.pop("devstat").split())
    b["dev_read_mb"] = "%.1f" % (r_sec * 512 / 1e6)
    b["dev_write_mb"] = "%.1f" % (w_sec * 512 / 1e6)
    ios, sec = {"read": (r_ios, r_sec), "write": (w_ios, w_sec)}.get(b["mode"], (r_ios + w_ios, r_sec + w_sec))
    b["dev_reqs"] = ios
    b["dev_req_kib"] = "%.1f" % (sec * 512 / 1024 / ios) if ios else ""
    return b


def f3(x):
    return "" if x is None else "%.3f" % x


def short(n):
    for u, s in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if n >= u and n % u == 0:
            return "%d%s" % (n // u, s)
    return str(n)


def rs_rows(argv):
    """rs CSV JSON RC BASE...: every result row (one for a pair, all for the sweep). Prints
    'DIR<TAB>MB/s' (pairs) or 'PATH BS QD MB/s' of the best copy (sweep)."""
    csv_path, js, rc = argv[:3]
    b = base(argv[3:])
    sweep = b["section"] == "sweep"
    try:
        doc = json.load(open(js))
    except (OSError, ValueError) as e:
        append(csv_path, dict(b, status="error", note="ringsync exit %s, no JSON (%s)" % (rc, e)))
        print("" if sweep else "\terror\t?")
        return
    for r in doc["results"]:
        row = dict(b)
        if sweep:
            row.update(combo="copy:%s:%s:%s" % (r["path"], short(r["block_size"]) if r["block_size"] else "-",
                                                r["qd"] or "-"),
                       mode=r["mode"], path=r["path"], bs=short(r["block_size"]) if r["block_size"] else "",
                       qd=r["qd"] or "", dev_read_mb="", dev_write_mb="", dev_reqs="", dev_req_kib="")
        lat = r.get("lat_us") or {}
        notes = [r.get("note") or "", "" if rc == "0" else "ringsync exit %s" % rc]
        buf, huge = r.get("buffer_bytes"), r.get("huge_page_bytes")
        if buf and buf // max(r["threads"], 1) >= (1 << 20) and (huge or 0) < buf:
            notes.append("only %.0f of %.0f MiB of ringsync's buffers in huge pages" % ((huge or 0) / 2**20, buf / 2**20))
        row.update(status=r["status"], mb_s=f3(r["mb_s"]), iops=f3(r["iops"]),
                   cpu_s_per_gb=f3(r["cpu_s_per_gb"]), lat_p50_us=f3(lat.get("p50")),
                   lat_p99_us=f3(lat.get("p99")), lat_p999_us=f3(lat.get("p999")),
                   lat_max_us=f3(lat.get("max")), bytes=r["bytes"], seconds=f3(r["seconds"]),
                   note="; ".join(n for n in notes if n))
        if r["status"] == "ok" and rc not in ("0", "3"):
            row["status"] = "error"
        append(csv_path, row)
    if sweep:
        best = [r for r in doc.get("best", []) if r["mode"] == "copy" and r["path"] != "reflink"]
        if best:
            r = best[0]
            print("%s %s %s %.3f" % (r["path"], short(r["block_size"]), r["qd"] if r["qd"] is not None else 1,
                                     r["mb_s"]))
        else:
            print("")
        return
    r = doc["results"][0] if doc["results"] else {}
    print("%s\t%s\t%s" % (doc.get("dir", ""), "%.0f" % r["mb_s"] if r.get("status") == "ok" else r.get("status", "?"),
                          doc.get("reused_files", "?")))


def fio_job(j, ddir):
    d = j[ddir]
    lat = d.get("lat_ns") or {}
    pct = lat.get("percentile") or {}
    runtime_s = j.get("job_runtime", d.get("runtime", 0)) / 1000.0
    cpu_s = (j.get("usr_cpu", 0) + j.get("sys_cpu", 0)) / 100.0 * runtime_s
    us = lambda k: pct[k] / 1000.0 if k in pct else None
    return dict(mb_s=d["bw_bytes"] / 1e6, iops=d["iops"], bytes=d["io_bytes"], seconds=d["runtime"] / 1000.0,
                cpu=cpu_s / (d["io_bytes"] / 1e9) if d["io_bytes"] else None,
                p50=us("50.000000"), p99=us("99.000000"), p999=us("99.900000"),
                max=lat.get("max", 0) / 1000.0, err=j.get("error", 0))


def fio_rows(argv):
    """fio CSV JSON RC NOTE BASE...: one row per fio job; prints 'job=MB/s ...' or 'error'."""
    csv_path, js, rc, note = argv[:4]
    b = base(argv[4:])
    try:
        doc = json.load(open(js))
    except (OSError, ValueError) as e:
        append(csv_path, dict(b, status="error", note=" ".join(x for x in ["fio exit %s, no JSON (%s)" % (rc, e), note] if x)))
        print("error")
        return
    out, bad_any = [], False
    for j in doc["jobs"]:
        ddir = "write" if j["write"]["io_bytes"] or j["jobname"] == "write" else "read"
        x = fio_job(j, ddir)
        row = dict(b)
        if b["section"] == "copy":
            row.update(tool="fio-" + j["jobname"], mode=ddir)
        notes = [note, "fio exit %s" % rc if rc != "0" else "", "job error %s" % x["err"] if x["err"] else "",
                 "no data: fio lost the job to its ramp_time (WARMUP); see WARMUP in --help"
                 if not x["bytes"] else ""]
        bad = rc != "0" or bool(x["err"]) or bool(note) or not x["bytes"]
        bad_any |= bad
        row.update(status="error" if bad else "ok", mb_s=f3(x["mb_s"]), iops=f3(x["iops"]),
                   cpu_s_per_gb=f3(x["cpu"]), lat_p50_us=f3(x["p50"]), lat_p99_us=f3(x["p99"]),
                   lat_p999_us=f3(x["p999"]), lat_max_us=f3(x["max"]), bytes=x["bytes"],
                   seconds=f3(x["seconds"]), note="; ".join(s for s in notes if s))
        append(csv_path, row)
        out.append("%s=%.0f" % (j["jobname"], x["mb_s"]))
    print("error " + " ".join(out) if bad_any else " ".join(out))


def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def fmt(x, nd=0):
    return "-" if x is None else "%.*f" % (nd, x)


# ringsync submits reads and writes of this many bytes or more alone (src/ring/mod.rs SOLO_BYTES).
SOLO_BYTES = 1 << 20


def size_bytes(text):
    """'4K' -> 4096: the K/M/G suffixes of COMBOS, powers of 1024."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def report(argv):
    """report CSV TOLERANCE COPY_TARGET JUDGE SUMMARY_TXT RESULTS_MD COMBOS..."""
    csv_path, tol, target, judge, txt_path, md_path = argv[:6]
    combos = argv[6:]
    tol, target = float(tol), float(target)
    rows = list(csv.DictReader(open(csv_path))) if os.path.exists(csv_path) else []
    num = lambda r, k: float(r[k]) if r.get(k) not in (None, "") else None
    ok = lambda rr: [r for r in rr if r["status"] == "ok"]
    fails = 0
    side, detail = [], []
    for spec in combos:
        c = spec[:-len(":batch")] if spec.endswith(":batch") else spec
        sel = [r for r in rows if r["section"] == "pair" and r["combo"] == c]
        rs = [r for r in sel if r["tool"] == "ringsync"]
        mode, path, bs, qd = c.split(":")
        fio_tools = ["fio", "fio-batch"] if spec.endswith(":batch") else ["fio"]
        for tool in fio_tools:
            fo = [r for r in sel if r["tool"] == tool]
            rv = [num(r, "mb_s") for r in ok(rs)]
            fv = [num(r, "mb_s") for r in ok(fo)]
            paired = []
            for r in ok(rs):
                f = [x for x in ok(fo) if x["round"] == r["round"]]
                if f and num(f[0], "mb_s"):
                    paired.append(num(r, "mb_s") / num(f[0], "mb_s"))
            mr, mf = med(rv), med(fv)
            ratio = mr / mf if mr is not None and mf else None
            if not rs or not fo or len(ok(rs)) < len(rs) or len(ok(fo)) < len(fo):
                verdict = "FAILED RUN"
            elif abs(ratio - 1) * 100 <= tol:
                verdict = "PASS"
            else:
                verdict = "FAIL (%s slower)" % ("ringsync" if ratio < 1 else "fio")
            if len(fio_tools) == 1:
                judged = True
            else:
                batched = judge == "batch" or (judge == "match" and size_bytes(bs) < SOLO_BYTES)
                judged = tool == ("fio-batch" if batched else "fio")
            if judged:
                fails += verdict != "PASS"
            else:
                verdict = "(info) " + verdict
            spread = lambda v: "-" if not v else "%.0f-%.0f" % (min(v), max(v))
            side.append([mode, path, bs, qd if path != "psync" else "-", "fio" if tool == "fio" else "fio +batch",
                         fmt(mr), spread(rv), fmt(mf), spread(fv), fmt(ratio, 3), fmt(med(paired), 3),
                         "%d/%d" % (len(rv), len(fv)), verdict])
        m = lambda rr, k: med([num(r, k) for r in ok(rr)])
        tools = [("rs", rs)] + [(t.replace("fio-batch", "fio+b"), [r for r in sel if r["tool"] == t]) for t in fio_tools]
        for name, rr in tools:
            detail.append([c if name == "rs" else "", name, fmt(m(rr, "mb_s")), fmt(m(rr, "iops")),
                           fmt(m(rr, "cpu_s_per_gb"), 3), fmt(m(rr, "lat_p50_us")), fmt(m(rr, "lat_p99_us")),
                           fmt(m(rr, "lat_p999_us")), fmt(m(rr, "lat_max_us")), fmt(m(rr, "bytes") and m(rr, "bytes") / 1e6),
                           fmt(m(rr, "dev_read_mb")), fmt(m(rr, "dev_write_mb")), fmt(m(rr, "dev_reqs")),
                           fmt(m(rr, "dev_req_kib"), 1),
                           "%d/%d" % (sum(1 for r in rr if r.get("foreign") not in ("", "0", None)), len(rr))])
    # copy
    copy_lines, copy_md = [], []
    cp = [r for r in rows if r["section"] == "copy"]
    sweep = [r for r in rows if r["section"] == "sweep"]
    if cp or sweep:
        rounds = sorted({r["round"] for r in cp}, key=int)
        per = []
        for n in rounds:
            pick = lambda t: [num(r, "mb_s") for r in cp if r["round"] == n and r["tool"] == t and r["status"] == "ok"]
            x, r_, w_ = (pick(t)[0] if pick(t) else None for t in ("ringsync", "fio-read", "fio-write"))
            b = min(r_, w_) if r_ is not None and w_ is not None else None
            per.append((n, x, r_, w_, b))
        mx, mb_ = med([p[1] for p in per]), med([p[4] for p in per])
        mr_, mw_ = med([p[2] for p in per]), med([p[3] for p in per])
        pct = 100 * mx / mb_ if mx is not None and mb_ else None
        bad = not per or any(p[1] is None or p[4] is None for p in per)
        verdict = "FAILED RUN" if bad else ("PASS" if pct >= target else "FAIL")
        fails += verdict != "PASS"
        combo = cp[0]["combo"] if cp else "-"
        copy_lines.append("copy bound: fio read %s + write %s MB/s at once (medians; bound = min per run, median %s MB/s); "
                          "ringsync best copy %s: %s MB/s = %s%% of the bound (target >= %g%%): %s" % (
                              fmt(mr_), fmt(mw_), fmt(mb_), combo, fmt(mx), fmt(pct, 1), target, verdict))
        copy_md.append("| round | ringsync `%s` MB/s | fio read MB/s | fio write MB/s | bound = min | ringsync / bound |" % combo)
        copy_md.append("|---:|---:|---:|---:|---:|---:|")
        for n, x, r_, w_, b in per:
            copy_md.append("| %s | %s | %s | %s | %s | %s |" % (n, fmt(x), fmt(r_), fmt(w_), fmt(b),
                                                            "-" if x is None or not b else "%.1f%%" % (100 * x / b)))
        copy_md.append("| **median** | **%s** | %s | %s | **%s** | **%s** (target >= %g%%: **%s**) |" % (
            fmt(mx), fmt(mr_), fmt(mw_), fmt(mb_), "-" if pct is None else "%.1f%%" % pct, target, verdict))
        sw = sorted(ok(sweep), key=lambda r: -float(r["mb_s"]))
        if sweep:
            copy_md.append("")
            copy_md.append("The sweep that picked it (one run per combination, %d combinations; the 12 fastest and "
                           "each path's best, then what did not run; all rows in the CSV):" % len(sweep))
            copy_md.append("")
            copy_md.append("| path | bs | qd | MB/s | CPU s/GB | p50 us | p99 us | note |")
            copy_md.append("|---|---:|---:|---:|---:|---:|---:|---|")
            seen, shown = set(), []
            for i, r in enumerate(sw):
                if i < 12 or r["path"] not in seen:
                    shown.append(r)
                seen.add(r["path"])
            for r in shown:
                copy_md.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    r["path"], r["bs"] or "-", r["qd"] or "-", fmt(num(r, "mb_s")), fmt(num(r, "cpu_s_per_gb"), 3),
                    fmt(num(r, "lat_p50_us")), fmt(num(r, "lat_p99_us")), r["note"]))
            for r in sweep:
                if r["status"] != "ok":
                    copy_md.append("| %s | %s | %s | %s | | | | %s |" % (r["path"], r["bs"] or "-", r["qd"] or "-",
                                                                       r["status"], r["note"]))
    head = ["mode", "path", "bs", "qd", "vs", "ringsync MB/s", "(min-max)", "fio MB/s", "(min-max)", "ratio",
            "paired", "runs", "verdict (±%g%%)" % tol]
    with open(txt_path, "w") as out:
        w = [max(len(str(x)) for x in col) for col in zip(head, *side)]
        for line in [head] + side:
            out.write("  ".join(str(x).ljust(n) for x, n in zip(line, w)).rstrip() + "\n")
        for l in copy_lines:
            out.write("\n" + l + "\n")
    with open(md_path, "w") as out:
        out.write("## Results\n\n")
        out.write("Medians of the runs, MB/s = 10^6 bytes/s; ratio = median ringsync / median fio; paired = median\n"
                  "of the per-round ratios (each ringsync run against the fio run on its files); runs = successful\n"
                  "ringsync/fio runs. Target: ratio within ±%g%%. `vs fio`: the fio job with the issue's parameters\n"
                  "(engine, direct, bs, iodepth, one job) and fio's default submission, one op per call;\n"
                  "`vs fio +batch`: the same job submitting in batches (`--iodepth_batch_submit=QD\n"
                  "--iodepth_batch_complete_max=QD`). ringsync submits ops under 1 MiB in batches and ops of 1 MiB\n"
                  "or more one per call, so the same requests reach the disk as with +batch below 1 MiB and plain\n"
                  "fio from 1 MiB up. Where a combination has both, %s decides the verdict (JUDGE=%s) and\n"
                  "the other one is shown as (info).\n\n"
                  % (tol, {"match": "the matching job", "batch": "the +batch job", "plain": "the plain job"}[judge],
                     judge))
        out.write("| " + " | ".join(head) + " |\n|" + "|".join(["---"] * 5 + ["---:"] * 7 + ["---"]) + "|\n")
        for s in side:
            s = list(s)
            s[-1] = "**%s**" % s[-1]
            out.write("| " + " | ".join(s) + " |\n")
        out.write("\n## Copy bound\n\n")
        if copy_md:
            for l in copy_lines:
                out.write(l + "\n\n")
            out.write("\n".join(copy_md) + "\n\n")
        else:
            out.write("Not run (COPY=0).\n\n")
        out.write("## Per-run detail (medians)\n\n")
        out.write("CPU s/GB: ringsync's own figure (process CPU in the measured time / GB); fio's = its usr+sys %\n"
                  "x job runtime / GB (fio's getrusage may miss io_uring worker threads, so fio's can read low).\n"
                  "Latency: per operation, submission to completion (fio `lat`, not `clat`). data MB: what the tool\n"
                  "counted in its measured time. disk: the device's counters (sampled every 10 ms) over the last\n"
                  "RUNTIME seconds before the tool exited, i.e. the measured part with its final sync (not\n"
                  "ringsync's layout): MB read and written, requests completed and mean request size in the\n"
                  "mode's direction (after the block layer's merging). foreign: runs with other benchmark/build\n"
                  "processes seen.\n\n")
        dh = ["combination", "tool", "MB/s", "IOPS", "CPU s/GB", "p50 us", "p99 us", "p99.9 us", "max us",
              "data MB", "disk MB read", "disk MB written", "disk requests", "KiB/request", "foreign"]
        out.write("| " + " | ".join(dh) + " |\n|" + "|".join(["---", "---"] + ["---:"] * (len(dh) - 2)) + "|\n")
        for d in detail:
            out.write("| " + " | ".join(d) + " |\n")
        out.write("\n")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    {"rs": rs_rows, "fio": fio_rows, "report": report}[sys.argv[1]](sys.argv[2:])
EOF

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
drop_caches 2>/dev/null || die "cannot write /proc/sys/vm/drop_caches"
# The device's counters are sampled every 10 ms while a tool runs (devsample.py), so that a run's
# figures can cover its last RUNTIME seconds only: the measured part, without ringsync's layout.
SAMPLER="$WORK/devsample.py"
cat >"$SAMPLER" <<'EOF'
import sys, time
if sys.argv[1] == "sample":  # sample STAT OUT: "time read_ios read_sectors write_ios write_sectors" lines
    with open(sys.argv[3], "w") as out:
        while True:
            with open(sys.argv[2]) as f:
                v = f.read().split()
            out.write("%.4f %s %s %s %s\n" % (time.time(), v[0], v[2], v[4], v[6]))
            out.flush()
            time.sleep(0.01)
else:  # window SAMPLES END SECONDS: counter deltas over [END - SECONDS, END] (SECONDS 0: everything)
    rows = [[float(x) for x in l.split()] for l in open(sys.argv[2]) if len(l.split()) == 5]
    end, secs = float(sys.argv[3]), float(sys.argv[4])
    if len(rows) < 2:
        print("0 0 0 0")
        sys.exit(0)
    last = [r for r in rows if r[0] <= end + 0.005] or rows[-1:]
    b = last[-1]
    first = [r for r in rows if r[0] <= end - secs] if secs > 0 else rows[:1]
    a = first[-1] if first else rows[0]
    print(" ".join("%d" % (y - x) for x, y in zip(a[1:], b[1:])))
EOF
# foreign: other benchmark/build processes running now (this script's own children are never
# alive between its runs; its ringsync copy lives in $WORK, not under a target/).
foreign() {
    local n
    n=$( (pgrep -f '/target/(release|debug)/|(^|/)(cargo|rustc|fio)( |$)' || true) | grep -vc -e "^$$\$" || true)
    echo "${n:-0}"
}
CMDS="$WORK/commands.tsv"
: >"$CMDS"
FAILURES=0

# rs_cmd MODE PATH BS QD RUNTIME WHERE... -> RS_CMD (WHERE: --dir D or --files D)
rs_cmd() {
    local mode=$1 path=$2 bs=$3 qd=$4 rt=$5
    shift 5
    RS_CMD=("$RS" bench "$@" --size "$SIZE" --paths "$path" --modes "$mode" --block-sizes "$bs"
        --qd "$qd" --runtime "$rt" --warmup "$WARMUP" --json -q)
}
if [[ "$FIXED_WRITES" == 1 ]]; then WRITE_BUFS=(--fixedbufs=1); else WRITE_BUFS=(--fixedbufs=0 --nonvectored=1); fi
# fio_cmd MODE PATH BS QD FILE JSON BATCH(0|1) -> FIO_CMD
fio_cmd() {
    local mode=$1 path=$2 bs=$3 qd=$4 file=$5 out=$6 batch=$7 eng
    case "$path:$mode" in
        uring-direct:read)  eng=(--ioengine=io_uring --direct=1 --fixedbufs=1 "--iodepth=$qd") ;;
        uring-direct:write) eng=(--ioengine=io_uring --direct=1 "${WRITE_BUFS[@]}" "--iodepth=$qd") ;;
        uring-fixed:read)   eng=(--ioengine=io_uring --direct=0 --fixedbufs=1 "--iodepth=$qd") ;;
        uring-fixed:write)  eng=(--ioengine=io_uring --direct=0 "${WRITE_BUFS[@]}" "--iodepth=$qd") ;;
        uring-vec:*)        eng=(--ioengine=io_uring --direct=0 --fixedbufs=0 --nonvectored=0 "--iodepth=$qd") ;;
        psync:*)            eng=(--ioengine=psync --direct=0) ;;
        *) die "internal: no fio mapping for $path:$mode" ;;
    esac
    if [[ "$batch" == 1 ]]; then eng+=("--iodepth_batch_submit=$qd" "--iodepth_batch_complete_max=$qd"); fi
    if [[ "$FIO_HUGE" == 1 ]] && huge_pool "$bs" "$qd"; then eng+=(--iomem=shmhuge); fi
    if [[ "$mode" == write ]]; then eng+=(--end_fsync=1); fi
    FIO_CMD=("$FIO_BIN" "--name=$mode" "--filename=$file" "--size=$SIZE_B" "--rw=$mode" "--bs=$bs" "${eng[@]}"
        --loops=1000000 "--runtime=${RUNTIME_MS}ms" "--ramp_time=${WARMUP_MS}ms" --invalidate=1 --fadvise_hint=0
        --lat_percentiles=1 --output-format=json "--output=$out")
}
# fio_bound_cmd SRC DST JSON -> FIO_CMD
fio_bound_cmd() {
    local mem=()
    if [[ "$FIO_HUGE" == 1 ]]; then mem=(--iomem=shmhuge); fi
    FIO_CMD=("$FIO_BIN" --ioengine=io_uring --direct=1 --fixedbufs=1 --bs=1M --iodepth=32 "${mem[@]}" "--size=$SIZE_B"
        --time_based "--runtime=${RUNTIME_MS}ms" "--ramp_time=${WARMUP_MS}ms" --invalidate=1 --fadvise_hint=0
        --lat_percentiles=1 --output-format=json "--output=$3"
        --name=read --rw=read "--filename=$1" --name=write --rw=write "--filename=$2")
}
quote() { local s="" a; for a in "$@"; do s+="$(printf '%q' "$a") "; done; echo "${s% }"; }
# note_cmd KEY TOOL CMD...: the first command line of each kind, for the report
note_cmd() {
    local key=$1 tool=$2
    shift 2
    cut -f1,2 "$CMDS" | grep -q -F -x -e "$key	$tool" || printf '%s\t%s\t%s\n' "$key" "$tool" "$(quote "$@")" >>"$CMDS"
}
# file_id FILE: inode, size and physical extents (filefrag -e), one line
file_id() {
    printf '%s %s ' "$(stat -c '%i %s' "$1")" "$(filefrag -e "$1" 2>/dev/null | awk '$1 ~ /^[0-9]+:$/ {printf "%s%s", s, $4 $5; s=","}')"
}
DEVDELTA="0 0 0 0" FOREIGN=0 RC=0
# measured WINDOW CMD...: sync and drop the caches, then run CMD with the device sampler and the
# foreign-process check around it; DEVDELTA = the device's counter deltas over the last WINDOW seconds of the run (0: all of it)
measured() {
    local window=$1 f0 f1 spid t_end
    shift
    f0=$(foreign)
    spid=""
    if [[ -n "$DEV_STAT" ]]; then
        # Start the sampler and wait for its first sample before the caches are dropped: a
        # python3 started after drop_caches reads itself from a disk the tool is already
        # saturating, and could miss the whole run (no device figures for that row).
        : >"$WORK/dev.samples"
        python3 "$SAMPLER" sample "$DEV_STAT" "$WORK/dev.samples" &
        spid=$!
        local i
        for ((i = 0; i < 500; i++)); do
            [[ -s "$WORK/dev.samples" ]] && break
            sleep 0.01
        done
    fi
    drop_caches
    RC=0
    if [[ -n "$CPUS" ]]; then taskset -c "$CPUS" "$@" || RC=$?; else "$@" || RC=$?; fi
    t_end=$EPOCHREALTIME
    if [[ -n "$spid" ]]; then
        sleep 0.02
        kill "$spid" 2>/dev/null || true
        wait "$spid" 2>/dev/null || true
        DEVDELTA=$(python3 "$SAMPLER" window "$WORK/dev.samples" "$t_end" "$window")
    fi
    f1=$(foreign)
    FOREIGN=$((f0 > f1 ? f0 : f1))
}

# run_fio TAG SECTION COMBO MODE PATH BS QD TOOL ROUND ID_FILES...: run FIO_CMD, check the files, add rows
run_fio() {
    local tag=$1 section=$2 combo=$3 mode=$4 path=$5 bs=$6 qd=$7 tool=$8 round=$9 id0="" id1="" f note out
    shift 9
    for f in "$@"; do id0+=$(file_id "$f"); done
    note_cmd "$combo" "$tool" "${FIO_CMD[@]}"
    measured "$RUNTIME" "${FIO_CMD[@]}" >"$LOG_DIR/$tag.$tool.out" 2>"$LOG_DIR/$tag.$tool.err"
    for f in "$@"; do id1+=$(file_id "$f"); done
    note=""
    if grep -q -i "laying out" "$LOG_DIR/$tag.$tool.out" "$LOG_DIR/$tag.$tool.err"; then note="fio laid the file out again"; fi
    if [[ "$id0" != "$id1" ]]; then note+="${note:+; }file changed under fio (inode/size/extents)"; fi
    out=$(python3 "$PY" fio "$CSV" "$LOG_DIR/$tag.$tool.json" "$RC" "$note" "$section" "$combo" "$mode" "$path" "$bs" \
        "$qd" "$tool" "$round" "$DEVDELTA" "$FOREIGN")
    if [[ "$out" == error* ]]; then
        FAILURES=$((FAILURES + 1))
        log "======== $combo round $round: $tool failed (exit $RC${note:+; $note}; see $LOG_DIR/$tag.$tool.*)"
    fi
    FIO_OUT=${out#error }
}

# run_rs TAG SECTION COMBO MODE PATH BS QD ROUND FILES...: run RS_CMD, check the files, add its row
run_rs() {
    local tag=$1 section=$2 combo=$3 mode=$4 path=$5 bs=$6 qd=$7 round=$8 id0="" id1="" f reused
    shift 8
    for f in "$@"; do id0+=$(file_id "$f"); done
    note_cmd "$combo" ringsync "${RS_CMD[@]}"
    measured "$RUNTIME" "${RS_CMD[@]}" >"$LOG_DIR/$tag.ringsync.json" 2>"$LOG_DIR/$tag.ringsync.err"
    for f in "$@"; do id1+=$(file_id "$f"); done
    IFS=$'\t' read -r _ RS_MB reused < <(python3 "$PY" rs "$CSV" "$LOG_DIR/$tag.ringsync.json" "$RC" "$section" "$combo" \
        "$mode" "$path" "$bs" "$qd" ringsync "$round" "$DEVDELTA" "$FOREIGN")
    if ((RC != 0)) || [[ "$RS_MB" == error || "$reused" != 2 || "$id0" != "$id1" ]]; then
        FAILURES=$((FAILURES + 1))
        log "======== $combo round $round: ringsync failed (exit $RC; files reused: ${reused:-?}/2; same files: $([[ "$id0" == "$id1" ]] && echo yes || echo no); $LOG_DIR/$tag.ringsync.err)"
    fi
}

# pair SECTION ROUND MODE PATH BS QD BATCH: fresh files, then ringsync and fio on them (the order
# alternating by round); the files are removed afterwards
pair() {
    local section=$1 round=$2 mode=$3 path=$4 bs=$5 qd=$6 batch=$7
    local combo="$mode:$path:$bs:$qd" tag dir file msg_rs msg_fio="" b step
    local jobs=(0)
    tag="$section-r$round-${combo//:/-}"
    dir="$FILES/pair"
    rm -rf "$dir"
    # Lay the files out with a throwaway run, then let the disk settle.
    PREP_CMD=("$RS" bench --files "$dir" --size "$SIZE" --paths psync --modes read --block-sizes 1M
        --runtime 0.05 --warmup 0 --json -q)
    note_cmd "layout" ringsync "${PREP_CMD[@]}"
    # Only the files matter: exit 3 (its 0.05 s measurement failed, e.g. no read finished while
    # the disk stalled) is fine when both files are there at full size.
    local prep_rc=0
    "${PREP_CMD[@]}" >"$LOG_DIR/$tag.layout.json" 2>"$LOG_DIR/$tag.layout.err" || prep_rc=$?
    if ! { ((prep_rc == 0 || prep_rc == 3)) && [[ "$(stat -c %s "$dir/src.0" "$dir/dst.0" 2>/dev/null | sort -u)" == "$SIZE_B" ]]; }; then
        FAILURES=$((FAILURES + 1))
        log "======== $combo round $round: layout failed (exit $prep_rc; $LOG_DIR/$tag.layout.err)"
        rm -rf "$dir"
        return 0
    fi
    sync
    sleep "$SETTLE"
    rs_cmd "$mode" "$path" "$bs" "$qd" "$RUNTIME" --files "$dir"
    if [[ "$batch" == 1 ]]; then
        if ((round % 2)); then jobs=(0 1); else jobs=(1 0); fi
    fi
    # odd rounds: ringsync first; even rounds: fio first
    local steps=(rs fio)
    ((round % 2)) || steps=(fio rs)
    for step in "${steps[@]}"; do
        if [[ "$step" == rs ]]; then
            run_rs "$tag" "$section" "$combo" "$mode" "$path" "$bs" "$qd" "$round" "$dir/src.0" "$dir/dst.0"
            msg_rs="ringsync $RS_MB MB/s"
        elif [[ "$section" == copy ]]; then
            fio_bound_cmd "$dir/src.0" "$dir/dst.0" "$LOG_DIR/$tag.fio.json"
            run_fio "$tag" "$section" "$combo" "$mode" "$path" "$bs" "$qd" fio "$round" "$dir/src.0" "$dir/dst.0"
            msg_fio+=", fio bound $FIO_OUT MB/s"
        else
            if [[ "$mode" == write ]]; then file="$dir/dst.0"; else file="$dir/src.0"; fi
            for b in "${jobs[@]}"; do
                if [[ "$b" == 1 ]]; then
                    fio_cmd "$mode" "$path" "$bs" "$qd" "$file" "$LOG_DIR/$tag.fio-batch.json" 1
                    run_fio "$tag" "$section" "$combo" "$mode" "$path" "$bs" "$qd" fio-batch "$round" "$file"
                    msg_fio+=", fio +batch ${FIO_OUT#*=} MB/s"
                else
                    fio_cmd "$mode" "$path" "$bs" "$qd" "$file" "$LOG_DIR/$tag.fio.json" 0
                    run_fio "$tag" "$section" "$combo" "$mode" "$path" "$bs" "$qd" fio "$round" "$file"
                    msg_fio+=", fio ${FIO_OUT#*=} MB/s"
                fi
            done
        fi
    done
    local msg="$msg_rs$msg_fio ($([[ "${steps[0]}" == rs ]] && echo "ringsync first" || echo "fio first"))"
    [[ "$FOREIGN" == 0 ]] || msg+=" (other benchmark/build processes running)"
    log "$(printf '%-30s round %d: %s' "$combo" "$round" "$msg")"
    if [[ "$KEEP" == 1 && "$round" == "$RUNS" ]]; then
        mv "$dir" "$FILES/$tag"
        return 0
    fi
    rm -rf "$dir"
}

# ---------------------------------------------------------------- 3. matched combinations
n_combo=${#COMBO_LIST[@]}
T0=$(date +%s)
log "matched combinations: $n_combo x $RUNS round(s), SIZE $SIZE, RUNTIME $RUNTIME s, WARMUP $WARMUP s, files in $FILES"
for ((r = 1; r <= RUNS; r++)); do
    for ((i = 0; i < n_combo; i++)); do
        c=${COMBO_LIST[$(((r - 1 + i) % n_combo))]}
        batch=0
        if [[ "$c" == *:batch ]]; then batch=1; c=${c%:batch}; fi
        IFS=: read -r mode path bs qd <<<"$c"
        pair pair "$r" "$mode" "$path" "$bs" "$qd" "$batch"
    done
done

# ---------------------------------------------------------------- 4. copy
if [[ "$COPY" == 1 ]]; then
    rs_cmd copy "$COPY_PATHS" "$COPY_BS" "$COPY_QD" "$COPY_SWEEP_RUNTIME" --dir "$FILES"
    note_cmd "copy sweep" ringsync "${RS_CMD[@]}"
    log "copy sweep: $(quote "${RS_CMD[@]}")"
    measured 0 "${RS_CMD[@]}" >"$LOG_DIR/sweep.ringsync.json" 2>"$LOG_DIR/sweep.ringsync.err"
    BEST=$(python3 "$PY" rs "$CSV" "$LOG_DIR/sweep.ringsync.json" "$RC" sweep - copy - - - ringsync 1 "$DEVDELTA" "$FOREIGN")
    if [[ -z "$BEST" ]] || ((RC != 0 && RC != 3)); then
        FAILURES=$((FAILURES + 1))
        log "======== copy sweep failed (exit $RC; $LOG_DIR/sweep.ringsync.err)"
    else
        read -r bpath bbs bqd bmb <<<"$BEST"
        log "copy sweep: best $bpath bs $bbs qd $bqd: $bmb MB/s; re-measuring it $RUNS time(s) next to the fio bound"
        for ((r = 1; r <= RUNS; r++)); do
            pair copy "$r" copy "$bpath" "$bbs" "$bqd" 0
        done
    fi
fi
ELAPSED=$(($(date +%s) - T0))

# ---------------------------------------------------------------- 5. report
SUMMARY_TXT="$WORK/summary.txt"
RESULTS_MD="$WORK/results.md"
TARGET_FAILS=0
python3 "$PY" report "$CSV" "$TOLERANCE" "$COPY_TARGET" "$JUDGE" "$SUMMARY_TXT" "$RESULTS_MD" "${COMBO_LIST[@]}" || TARGET_FAILS=$?
((TARGET_FAILS == 0)) || FAILURES=$((FAILURES + 1))

fail=()
((FAILURES == 0)) || fail=("**FAILED**: a combination is outside ±$TOLERANCE %, the best copy is under $COPY_TARGET % of the bound, or a run failed (see the tables).")
{
    report_head "ringsync bench vs fio" "small files, short runs, one round; not the acceptance measurement." "${fail[@]}"
    echo "$RUNS round(s); fresh files of $SIZE ($SIZE_B bytes) for every pair, $SETTLE s of rest after laying them out;"
    echo "$RUNTIME s measured after $WARMUP s warm-up; cold cache; benchmark wall time $((ELAPSED / 60)) min $((ELAPSED % 60)) s."
    echo "CPU placement: $(if [[ -n "$CPUS" ]]; then echo "every measured command ran under \`taskset -c $CPUS\`"; else echo "not pinned (the scheduler placed both tools)"; fi);"
    echo "the disk's interrupts: $(awk -v d="$DISK" 'index($0, d) || /virtio[0-9]+-req/ {printf "%s%s", s, $0; s="; "}' /proc/interrupts | tr -s ' ' | head -c 300)."
    echo
    cat "$RESULTS_MD"
    echo "## Exact commands"
    echo
    echo "The first run of each kind. \`\$TMP\` = \`$WORK\`, the run's temporary directory (\`\$TMP/ringsync\` is the"
    echo "copy of \`$RINGSYNC_BIN\`, \`\$TMP/files/pair\` the pair's files, laid out by the layout run and"
    echo "then used by both tools); \`\$LOGS\` = \`$LOG_DIR\`: every JSON and stderr of both tools."
    echo
    while IFS=$'\t' read -r key tool cmd; do
        cmd=${cmd//$LOG_DIR/\$LOGS}
        echo "- \`$key\`, $tool:"
        echo
        echo '  ```'
        echo "  ${cmd//$WORK/\$TMP}"
        echo '  ```'
    done <"$CMDS"
    echo
    echo "## Machine"
    echo
    cat "$MACHINE"
    echo
    echo "## Method"
    echo
    echo "From \`tools/bench-vs-fio.sh --help\`:"
    echo
    echo '```'
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' | sed -n '/^1\. Matched/,/^Environment/p' | sed '$d'
    echo '```'
    echo
    echo "Raw runs: \`$(basename "$CSV")\`, one row per tool run (\`$(head -n 1 "$CSV" 2>/dev/null || echo '?')\`);"
    echo "sections: pair = matched runs, sweep = the copy sweep, copy = the best copy path and the two fio jobs of the bound."
} >"$REPORT"

echo
cat "$SUMMARY_TXT"
echo
log "report: $REPORT"
log "raw CSV: $CSV"
log "logs: $LOG_DIR"
if ((FAILURES)); then
    log "======== FAILED: a target was missed or a run failed; see the report"
    exit 1
fi
