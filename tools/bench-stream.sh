#!/usr/bin/env bash
# send | receive against copy, tar and btrfs send | receive (issue 13's performance goals).
# Every round runs each command once (order rotating), each into a fresh destination; the
# report gives medians, min..max, and the median of the paired ratios to `ringsync copy`.
# Run as root (drop_caches, loop mounts).
#
#   [RINGSYNC_BIN=target/release/ringsync] [ROUNDS=5] [DATASETS="mixed big"]
#   [BENCH_DIR=/var/tmp/ringsync-bench] [PARTS="disk btrfs"] [OTHER_BIN=path]
#   tools/bench-stream.sh > perf/report.md
#
# Commands per dataset (warm source, page cache holding it):
#   copy         ringsync copy SRC DST                       (default: durable at exit)
#   pipe         ringsync send SRC | ringsync receive DST    (default: durable at each checkpoint)
#   pipe-nofsync ringsync send SRC | ringsync receive --no-fsync DST
#   tar+sync     tar -C SRC -cf - . | tar -C DST -xpf - ; sync -f DST   (durable, like for like)
#   tar          tar -C SRC -cf - . | tar -C DST -xpf -                 (tar's default)
#   pipe-other   as pipe, with OTHER_BIN (only when given): another build of ringsync in the
#                same rounds, for an A/B of a change
#   dd-cache, dd+fsync, dd-direct: the dataset's bytes written as one file with dd (page cache
#                only; then fsync; O_DIRECT): the write floors the copies cannot beat
# Then, cold (caches dropped before each): send SRC > /dev/null against `cat` of every file
# (the read bound). With btrfs in PARTS, on a loop btrfs (a sparse 64 GiB image) holding a read-only snapshot of the
# dataset: btrfs send | btrfs receive against ringsync send | ringsync receive (both with and
# without a final sync). The loop device does direct I/O to its image (losetup --direct-io=on).
# The datasets are the ones tools/bench-copy.sh makes (run it once first). Destinations are
# removed after each block and caches dropped, so ext4's slow reuse of freshly freed inodes
# (recently_deleted) does not land inside a timed run.
set -euo pipefail
TOOL=bench-stream
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
tool_args "$@"
record_cmdline "$@" -- RINGSYNC_BIN ROUNDS DATASETS BENCH_DIR PARTS OTHER_BIN
RINGSYNC_BIN=${RINGSYNC_BIN:-$REPO/target/release/ringsync}
ROUNDS=${ROUNDS:-5}
DATASETS=${DATASETS:-mixed big}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ringsync-bench}
PARTS=${PARTS:-disk btrfs}
DATA=$BENCH_DIR/data-full
OUT=$BENCH_DIR/stream-dst
WORK=$(mktemp -d "$BENCH_DIR/stream-bin.XXXXXX")
private_binary "$WORK"
OTHER=()
if [[ -n ${OTHER_BIN:-} ]]; then
    cp "$OTHER_BIN" "$WORK/ringsync-other"
    OTHER=(pipe-other)
fi
[[ $(id -u) == 0 ]] || die "run as root (drop_caches, loop mounts)"
for ds in $DATASETS; do [[ -d $DATA/$ds ]] || die "$DATA/$ds missing: run tools/bench-copy.sh once"; done

# run_cmd NAME SRC DST: one timed command; prints seconds.
run_cmd() {
    local name=$1 src=$2 dst=$3 s e
    s=$(now)
    case $name in
        copy) "$RS" copy -q "$src" "$dst" ;;
        pipe) "$RS" send -q "$src" | "$RS" receive -q "$dst" ;;
        pipe-nofsync) "$RS" send -q "$src" | "$RS" receive -q --no-fsync "$dst" ;;
        pipe-other) "$WORK/ringsync-other" send -q "$src" | "$WORK/ringsync-other" receive -q "$dst" ;;
        tar+sync) mkdir "$dst"; tar -C "$src" -cf - . | tar -C "$dst" -xpf -; sync -f "$dst" ;;
        tar) mkdir "$dst"; tar -C "$src" -cf - . | tar -C "$dst" -xpf - ;;
        btrfs) mkdir "$dst"; btrfs send -q "$src" | btrfs receive -q "$dst" ;;
        btrfs+sync) mkdir "$dst"; btrfs send -q "$src" | btrfs receive -q "$dst"; sync -f "$dst" ;;
        # Write floors: the dataset's bytes as one file of zeros, 4 MiB writes (DD_COUNT of them).
        dd-cache) mkdir "$dst"; dd if=/dev/zero of="$dst/f" bs=4M count="$DD_COUNT" status=none ;;
        dd+fsync) mkdir "$dst"; dd if=/dev/zero of="$dst/f" bs=4M count="$DD_COUNT" conv=fsync status=none ;;
        dd-direct) mkdir "$dst"; dd if=/dev/zero of="$dst/f" bs=4M count="$DD_COUNT" oflag=direct status=none ;;
        *) die "unknown command $name" ;;
    esac
    e=$(now)
    echo "$e - $s" | bc -l
}

# clean DIR: remove it, deleting the (read-only) subvolumes btrfs receive made in it first.
clean() {
    local d
    if [[ -d $1 && $(findmnt -no FSTYPE --target "$1") == btrfs ]]; then
        for d in "$1"/*/*; do
            [[ -d $d && $(stat -c %i "$d") == 256 ]] && btrfs -q subvolume delete "$d"
        done
    fi
    rm -rf "$1"
}

# block TITLE SRC OUTDIR BASE CMDS...: ROUNDS rounds of every command, order rotating; a table
# row per command with median, min..max and the median paired ratio to BASE.
block() {
    local title=$1 src=$2 out=$3 base=$4
    shift 4
    local cmds=("$@") n=${#@} r i k c
    declare -A times=()
    clean "$out"; mkdir -p "$out"; drop; warm "$src"
    for r in $(seq 1 "$ROUNDS"); do
        for i in $(seq 0 $((n - 1))); do
            k=$(( (i + r) % n )); c=${cmds[$k]}
            sync
            times[$c]+="$(run_cmd "$c" "$src" "$out/$c-$r") "
        done
        # Keep every destination to the end of the block unless that would fill the disk
        # (the 2 GiB file: 5 rounds of 8 commands is 84 GB); few entries then, so no slow
        # inode reuse to fear.
        if (( $(du -sb --apparent-size "$src" | cut -f1) * n * (r + 1) > $(df -B1 --output=avail "$out" | tail -1) * 8 / 10 )); then
            clean "$out"; drop; mkdir -p "$out"; warm "$src"
        fi
    done
    echo
    echo "### $title"
    echo
    echo "| command | median s | min..max s | median of paired ratios to $base |"
    echo "|---|---:|---|---:|"
    local bt=(${times[$base]})
    for c in "${cmds[@]}"; do
        local t=(${times[$c]}) ratios=()
        for i in "${!t[@]}"; do ratios+=("$(echo "${t[$i]} / ${bt[$i]}" | bc -l)"); done
        printf '| %s | %.2f | %.2f..%.2f | %.2f |\n' "$c" \
            "$(printf '%s\n' "${t[@]}" | median)" \
            "$(printf '%s\n' "${t[@]}" | sort -g | head -1)" "$(printf '%s\n' "${t[@]}" | sort -g | tail -1)" \
            "$(printf '%s\n' "${ratios[@]}" | median)"
    done
    clean "$out"; drop
}

report_head "send | receive against copy, tar and btrfs send | receive" "fewer rounds"
echo "Binary: $RS_DESC. $(nproc) CPUs, $(uname -r), $(findmnt -no FSTYPE --target "$BENCH_DIR") on $(findmnt -no SOURCE --target "$BENCH_DIR"); $ROUNDS rounds, order rotating, warm source."
for ds in $DATASETS; do
    [[ " $PARTS " == *" disk "* ]] || break
    src=$DATA/$ds
    echo
    echo "## $ds ($(du -sh --apparent-size "$src" | cut -f1), $(find "$src" | wc -l) entries)"
    DD_COUNT=$(( ($(du -sb --apparent-size "$src" | cut -f1) + (4 << 20) - 1) / (4 << 20) ))
    block "$ds: warm source, fresh destination on the same disk" "$src" "$OUT" copy \
        copy pipe "${OTHER[@]}" pipe-nofsync tar+sync tar dd-cache dd+fsync dd-direct
    # Cold reads: send to /dev/null against cat of every file.
    ts=(); tc=()
    for r in $(seq 1 "$ROUNDS"); do
        drop; s=$(now); "$RS" send -q "$src" > /dev/null; e=$(now); ts+=("$(echo "$e - $s" | bc -l)")
        drop; s=$(now); find "$src" -type f -exec cat {} + > /dev/null; e=$(now); tc+=("$(echo "$e - $s" | bc -l)")
    done
    bytes=$(du -sb --apparent-size "$src" | cut -f1)
    ms=$(printf '%s\n' "${ts[@]}" | median); mc=$(printf '%s\n' "${tc[@]}" | median)
    echo
    echo "Cold read: \`send > /dev/null\` median $(printf %.2f "$ms") s ($(echo "$bytes / $ms / 1000000" | bc) MB/s), \`cat\` of every file median $(printf %.2f "$mc") s ($(echo "$bytes / $mc / 1000000" | bc) MB/s): send at $(echo "100 * $mc / $ms" | bc)% of the read bound."
done

if [[ " $PARTS " == *" btrfs "* ]]; then
    img=$BENCH_DIR/stream-btrfs.img; mnt=$BENCH_DIR/stream-btrfs
    umount "$mnt" 2>/dev/null || true
    rm -f "$img"; truncate -s 64G "$img"; mkfs.btrfs -q "$img" > /dev/null; mkdir -p "$mnt"
    # Direct I/O to the image: the loop device then behaves like a disk, without a second page
    # cache (the image file's on ext4) copying and writing back everything both tools write.
    loopdev=$(losetup -f --show --direct-io=on "$img")
    mount "$loopdev" "$mnt"
    trap 'umount "$mnt" 2>/dev/null; losetup -d "$loopdev" 2>/dev/null; rm -f "$img"; rm -rf "$WORK"' EXIT
    for ds in $DATASETS; do
        btrfs -q subvolume create "$mnt/$ds-sub"
        "$RS" copy -q "$DATA/$ds" "$mnt/$ds-sub"
        btrfs -q subvolume snapshot -r "$mnt/$ds-sub" "$mnt/$ds-snap"
        echo
        echo "## $ds on a loop btrfs (source: a read-only snapshot; destination on the same btrfs)"
        DD_COUNT=$(( ($(du -sb --apparent-size "$DATA/$ds" | cut -f1) + (4 << 20) - 1) / (4 << 20) ))
        block "$ds: btrfs send | btrfs receive against ringsync" "$mnt/$ds-snap" "$mnt/out" pipe \
            pipe "${OTHER[@]}" pipe-nofsync btrfs btrfs+sync dd-cache dd+fsync dd-direct
    done
else
    rm -rf "$WORK"
fi
