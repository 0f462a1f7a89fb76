#!/usr/bin/env bash
# Incremental transfers between btrfs snapshots, the way a nightly job runs them: each tool
# keeps its own target, the source subvolume changes in place (~1% of entries, tools/
# mutate-tree.py) and is snapshotted read-only before each round, and each tool brings its
# target from the previous snapshot to the new one. Rounds rotate the order of the tools;
# the report gives medians, min..max and the median of paired ratios. Run as root.
#
#   [RINGSYNC_BIN=target/release/ringsync] [ROUNDS=5] [DATASET=mixed] [FRACTION=0.01]
#   [BENCH_DIR=/var/tmp/ringsync-bench] tools/bench-incremental.sh > perf/report.md
#
# Commands per round (warm page cache; everything on one loop btrfs):
#   stream         ringsync send --from PREV SNAP | ringsync receive DST (default: durable)
#   stream-nofsync the same with receive --no-fsync, into its own DST
#   mirror-prev    ringsync mirror --prev PREV SNAP DST (default: durable)
#   btrfs          btrfs send -p PREV SNAP | btrfs receive DIR (its default: not durable)
#   rsync          rsync -aHAX --delete SNAP/ DST/ (its default: not durable)
# and, for btrfs and rsync, the `sync -f` after them timed on its own (like for like: "+sync").
# The dataset is one tools/bench-copy.sh makes (run it once first).
set -euo pipefail
TOOL=bench-incremental
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
tool_args "$@"
record_cmdline "$@" -- RINGSYNC_BIN ROUNDS DATASET FRACTION BENCH_DIR
RINGSYNC_BIN=${RINGSYNC_BIN:-$REPO/target/release/ringsync}
ROUNDS=${ROUNDS:-5}
DATASET=${DATASET:-mixed}
FRACTION=${FRACTION:-0.01}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ringsync-bench}
DATA=$BENCH_DIR/data-full/$DATASET
[[ $(id -u) == 0 ]] || die "run as root (loop mounts)"
[[ -d $DATA ]] || die "$DATA missing: run tools/bench-copy.sh once"
command -v rsync > /dev/null || die "rsync missing"
WORK=$(mktemp -d "$BENCH_DIR/inc-bin.XXXXXX")
private_binary "$WORK"
img=$BENCH_DIR/inc-btrfs.img
mnt=$BENCH_DIR/inc-btrfs
umount "$mnt" 2>/dev/null || true
rm -f "$img"
truncate -s 32G "$img"
mkfs.btrfs -q "$img"
mkdir -p "$mnt"
mount -o loop "$img" "$mnt"
trap 'umount "$mnt" 2>/dev/null; rm -f "$img"; rm -rf "$WORK"' EXIT
mut() { python3 "$TOOLS_DIR/mutate-tree.py" "$@"; }

vol=$mnt/vol
btrfs -q subvolume create "$vol"
cp -a "$DATA/." "$vol/"
mut prep "$vol" --seed 1 > /dev/null
btrfs -q subvolume snapshot -r "$vol" "$mnt/snap0"
mkdir -p "$mnt/bt"
log "initial full transfers"
"$RS" send -q "$mnt/snap0" | "$RS" receive -q "$mnt/stream"
"$RS" send -q "$mnt/snap0" | "$RS" receive -q --no-fsync "$mnt/stream-nofsync"
"$RS" mirror -q "$mnt/snap0" "$mnt/mirror-prev"
btrfs send -q "$mnt/snap0" | btrfs receive -q "$mnt/bt"
rsync -aHAX --delete "$mnt/snap0/" "$mnt/rsync/"
sync -f "$mnt"

declare -A T
CMDS=(stream stream-nofsync mirror-prev btrfs rsync)
changed=""
bt_diff=""
for r in $(seq 1 "$ROUNDS"); do
    changed+="$(mut mutate "$vol" --seed $((100 + r)) --fraction "$FRACTION")"$'\n'
    prev=$mnt/snap$((r - 1)); snap=$mnt/snap$r
    btrfs -q subvolume snapshot -r "$vol" "$snap"
    sync -f "$mnt"
    mut warm "$prev" "$snap" --data "$snap" > /dev/null
    n=${#CMDS[@]}
    for i in $(seq 0 $((n - 1))); do
        c=${CMDS[$(((i + r) % n))]}
        s=$(now)
        case $c in
            stream) "$RS" send -q --from "$prev" "$snap" | "$RS" receive -q "$mnt/stream" ;;
            stream-nofsync) "$RS" send -q --from "$prev" "$snap" | "$RS" receive -q --no-fsync "$mnt/stream-nofsync" ;;
            mirror-prev) "$RS" mirror -q --prev "$prev" "$snap" "$mnt/mirror-prev" ;;
            btrfs) btrfs send -q -p "$prev" "$snap" | btrfs receive -q "$mnt/bt" ;;
            rsync) rsync -aHAX --delete "$snap/" "$mnt/rsync/" ;;
        esac
        e=$(now)
        T[$c,$r]=$(echo "$e - $s" | bc -l)
        if [[ $c == btrfs || $c == rsync ]]; then
            s=$(now); sync -f "$mnt"; e=$(now)
            T[$c+sync,$r]=$(echo "${T[$c,$r]} + $e - $s" | bc -l)
        else
            sync -f "$mnt"
        fi
    done
    for d in stream stream-nofsync mirror-prev rsync; do
        out=$(mut check "$snap" "$mnt/$d" --ignore-root-xattr user.ringsync.mirror --keep-atimes 2>&1) \
            || die "round $r: $d is not an exact copy of $snap: $(echo "$out" | head -3)"
    done
    # btrfs receive leaves the received subvolume's root mtime at the time of the receive:
    # noted in the report, not fatal.
    out=$(mut check "$snap" "$mnt/bt/snap$r" --keep-atimes 2>&1) || bt_diff+="round $r: $out"$'\n'

done

report_head "Incremental transfers between btrfs snapshots ($DATASET, ${FRACTION} changed per round)" "fewer rounds"
echo "ringsync: $RS_DESC; $(first_line btrfs --version); $(first_line rsync --version)."
echo "$(nproc) cores, kernel $(uname -r). Every target checked exact against its snapshot after each round (tools/mutate-tree.py check)."
echo
echo "Mutations per round:"
echo
echo '```'
printf '%s' "$changed"
echo '```'
echo
if [[ -n $bt_diff ]]; then
    echo "btrfs receive's targets were not exact:"
    echo
    echo '```'
    printf '%s' "$bt_diff"
    echo '```'
    echo
fi
echo "| command | median s | min..max s | median ratio to rsync | median ratio to btrfs send -p |"
echo "|---|---:|---:|---:|---:|"
for c in stream stream-nofsync mirror-prev btrfs btrfs+sync rsync rsync+sync; do
    ts=(); rr=(); rb=()
    for r in $(seq 1 "$ROUNDS"); do
        ts+=("${T[$c,$r]}")
        rr+=("$(echo "${T[$c,$r]} / ${T[rsync,$r]}" | bc -l)")
        rb+=("$(echo "${T[$c,$r]} / ${T[btrfs,$r]}" | bc -l)")
    done
    printf '| %s | %.3f | %.3f..%.3f | %.2f | %.2f |\n' "$c" \
        "$(printf '%s\n' "${ts[@]}" | median)" \
        "$(printf '%s\n' "${ts[@]}" | sort -g | head -1)" "$(printf '%s\n' "${ts[@]}" | sort -g | tail -1)" \
        "$(printf '%s\n' "${rr[@]}" | median)" "$(printf '%s\n' "${rb[@]}" | median)"
done
