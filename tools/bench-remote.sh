#!/usr/bin/env bash
# Remote mirror over ssh against rsync over ssh (issue 14's performance rows), through a private
# sshd on 127.0.0.1 that this script starts (its own host and client keys; root login by key).
# Every round runs each command once (order rotating), each into a fresh destination; the report
# gives medians, min..max and the median of paired ratios to rsync. Run as root.
#
#   [RINGSYNC_BIN=target/release/ringsync] [ROUNDS=5] [DATASETS=mixed] [SCENARIOS="initial change nochange"]
#   [BENCH_DIR=/var/tmp/ringsync-bench] [SSH_OPTS="-c aes128-gcm@openssh.com"] tools/bench-remote.sh > perf/report.md
#
# Scenarios:
#   initial   initial sync of each dataset in DATASETS (below)
#   change    cron-style: a working copy of `mixed` is SRC; each tool keeps its own target
#             (synced once, untimed); every round changes ~1% of SRC's entries in place
#             (tools/mutate-tree.py), then times `ringsync mirror` and `rsync -aHAX --delete`
#             (order alternating), each into its own target. Then one more change, untimed,
#             for wire bytes: ringsync's through a counting -e wrapper, rsync's from --stats;
#             and the changed file bytes (an independent content-based oracle, below).
#   nochange  the same with `small` (50,000 x 4 KiB) and nothing changed between rounds.
#   slow      (not by default) initial sync of a compressible tree (a copy of
#             /usr/lib/python3.*, kept as $BENCH_DIR/data-full/text) through a link each tool
#             limits to SLOW_RATE (default 10 MiB/s) with its own --bwlimit: ringsync with and
#             without -z, rsync with and without -z (its default compression).
#
# Commands (initial sync of a warm source into a fresh directory on the same disk):
#   ringsync        ringsync mirror -e SSH SRC root@127.0.0.1:DST      (default: durable)
#   ringsync-nofsync  the same with --fsync none                       (like rsync: no sync)
#   rsync           rsync -aHAX --delete -e SSH SRC/ root@127.0.0.1:DST (rsync's way)
#   rsync+sync      the same, then sync -f DST                          (like for like)
# Also: the ssh channel's ceiling (`cat` of 1 GiB through ssh into /dev/null), and the cipher.
set -euo pipefail
TOOL=bench-remote
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
tool_args "$@"
record_cmdline "$@" -- RINGSYNC_BIN ROUNDS DATASETS SCENARIOS BENCH_DIR SSH_OPTS
RINGSYNC_BIN=${RINGSYNC_BIN:-$REPO/target/release/ringsync}
ROUNDS=${ROUNDS:-5}
DATASETS=${DATASETS:-mixed}
SCENARIOS=${SCENARIOS:-initial change nochange}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ringsync-bench}
DATA=$BENCH_DIR/data-full
OUT=$BENCH_DIR/remote-dst
[[ $(id -u) == 0 ]] || die "run as root (sshd, drop_caches)"
command -v rsync >/dev/null || die "rsync missing (apt-get install rsync)"
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
[[ -x $SSHD ]] || die "sshd missing (apt-get install openssh-server)"
for ds in $DATASETS mixed small; do [[ -d $DATA/$ds ]] || die "$DATA/$ds missing: run tools/bench-copy.sh once"; done
WORK=$(mktemp -d "$BENCH_DIR/remote-bin.XXXXXX")
private_binary "$WORK"

# The private sshd.
port=$((20000 + RANDOM % 30000))
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client_key"
mkdir -p /run/sshd "$WORK/auth"
cp "$WORK/client_key.pub" "$WORK/auth/root"
cat > "$WORK/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $WORK/host_key
PidFile $WORK/sshd.pid
AuthorizedKeysFile $WORK/auth/%u
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
LogLevel ERROR
EOF
"$SSHD" -D -e -f "$WORK/sshd_config" 2> "$WORK/sshd.log" &
sshd_pid=$!
trap 'kill $sshd_pid 2>/dev/null; wait $sshd_pid 2>/dev/null; rm -rf "$WORK" "$OUT" "$BENCH_DIR/remote-cron"' EXIT
SSH="ssh -F /dev/null -p $port -i $WORK/client_key -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR ${SSH_OPTS:-}"
for _ in $(seq 1 50); do $SSH root@127.0.0.1 true 2>/dev/null && break; sleep 0.1; done
$SSH root@127.0.0.1 true || die "the private sshd did not come up: $(cat "$WORK/sshd.log")"
cipher=$($SSH -G root@127.0.0.1 | awk '$1 == "ciphers" {print $2}' | cut -d, -f1)


run_cmd() {
    local name=$1 src=$2 dst=$3 s e
    s=$(now)
    case $name in
        ringsync) "$RS" mirror -q -e "$SSH" --remote-bin "$RS" "$src" "root@127.0.0.1:$dst" ;;
        ringsync-nofsync) "$RS" mirror -q --fsync none -e "$SSH" --remote-bin "$RS" "$src" "root@127.0.0.1:$dst" ;;
        rsync) rsync -aHAX --delete -e "$SSH" "$src/" "root@127.0.0.1:$dst" ;;
        rsync+sync) rsync -aHAX --delete -e "$SSH" "$src/" "root@127.0.0.1:$dst"; sync -f "$dst" ;;
        *) die "unknown command $name" ;;
    esac
    e=$(now)
    echo "$e - $s" | bc -l
}

report_head "ringsync mirror over ssh against rsync over ssh" "fewer rounds"
echo "Binary: $RS_DESC. $(nproc) CPUs, $(uname -r), $(findmnt -no FSTYPE --target "$BENCH_DIR") on $(findmnt -no SOURCE --target "$BENCH_DIR"); $ROUNDS rounds, order rotating, warm source; ssh to 127.0.0.1, cipher $cipher ($(ssh -V 2>&1)); rsync $(rsync --version | head -1 | awk '{print $3}')."

# The channel's ceiling: 1 GiB of zeros through ssh.
tc=()
for _ in 1 2 3; do
    s=$(now); head -c 1G /dev/zero | $SSH root@127.0.0.1 'cat > /dev/null'; e=$(now)
    tc+=("$(echo "$e - $s" | bc -l)")
done
mt=$(printf '%s\n' "${tc[@]}" | median)
echo
echo "ssh ceiling: 1 GiB through \`ssh cat > /dev/null\` median $(printf %.2f "$mt") s ($(echo "1073741824 / $mt / 1000000" | bc) MB/s)."
# The floor of any run: one ssh connection that runs nothing.
tf=()
for _ in 1 2 3 4 5; do s=$(now); $SSH root@127.0.0.1 true; e=$(now); tf+=("$(echo "$e - $s" | bc -l)"); done
SSH_FLOOR=$(printf '%s\n' "${tf[@]}" | median)
echo
echo "ssh floor: \`ssh root@127.0.0.1 true\` median $(printf %.3f "$SSH_FLOOR") s (every run of either tool pays it)."

cmds=(ringsync ringsync-nofsync rsync rsync+sync)
for ds in $DATASETS; do
    [[ " $SCENARIOS " == *" initial "* ]] || break
    src=$DATA/$ds
    echo
    echo "## $ds ($(du -sh --apparent-size "$src" | cut -f1), $(find "$src" | wc -l) entries): initial sync into a fresh directory"
    rm -rf "$OUT"; mkdir -p "$OUT"; drop; warm "$src"
    declare -A times=()
    n=${#cmds[@]}
    for r in $(seq 1 "$ROUNDS"); do
        for i in $(seq 0 $((n - 1))); do
            c=${cmds[$(((i + r) % n))]}
            sync
            times[$c]+="$(run_cmd "$c" "$src" "$OUT/$c-$r") "
        done
    done
    echo
    echo "| command | median s | min..max s | median of paired ratios to rsync |"
    echo "|---|---:|---|---:|"
    bt=(${times[rsync]})
    for c in "${cmds[@]}"; do
        t=(${times[$c]}) ratios=()
        for i in "${!t[@]}"; do ratios+=("$(echo "${t[$i]} / ${bt[$i]}" | bc -l)"); done
        printf '| %s | %.2f | %.2f..%.2f | %.2f |\n' "$c" \
            "$(printf '%s\n' "${t[@]}" | median)" \
            "$(printf '%s\n' "${t[@]}" | sort -g | head -1)" "$(printf '%s\n' "${t[@]}" | sort -g | tail -1)" \
            "$(printf '%s\n' "${ratios[@]}" | median)"
    done
    unset times
    rm -rf "$OUT"; drop
done

# ---- cron-style scenarios: each tool its own target, SRC changed in place between rounds.
MUT="$(dirname "${BASH_SOURCE[0]}")/mutate-tree.py"
cat > "$WORK/count-rsh" <<EOF
#!/bin/bash
set -o pipefail
tee -a "$WORK/wire.in" | $SSH "\$@"
EOF
chmod +x "$WORK/count-rsh"

rs_mirror() { "$RS" mirror -q -e "${2:-$SSH}" --remote-bin "$RS" "$SRC" "root@127.0.0.1:$1"; }
rsync_mirror() { rsync -aHAX --delete "$@" -e "$SSH" "$SRC/" "root@127.0.0.1:$RSYNC_DST"; }

# The file bytes a mirror must carry (an oracle independent of ringsync, by content): every
# regular file of SRC whose path DST lacks or whose content differs there, unless its content
# is that of a DST file SRC no longer has (a moved file); same size and mtime are trusted (the
# quick check both tools make). Then the number of changed entries (`ringsync diff DST SRC`;
# a move counts as two).
changed_bytes() {
    local n
    n=$("$RS" diff --json "$RS_DST" "$SRC" | wc -l)
    python3 - "$SRC" "$RS_DST" "$n" <<'PY'
import collections, hashlib, os, stat, sys
src, dst, n = sys.argv[1], sys.argv[2], sys.argv[3]
def files(root):
    out = {}
    for d, _, names in os.walk(root):
        for f in names:
            p = os.path.join(d, f)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(p, root)] = st
    return out
def digest(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.digest()
S, D = files(src), files(dst)
gone_sizes = {st.st_size for p, st in D.items() if p not in S}
pool = collections.Counter(digest(os.path.join(dst, p)) for p, st in D.items()
                           if p not in S and any(st.st_size == s.st_size for q, s in S.items() if q not in D))
total = 0
for p, st in S.items():
    d = D.get(p)
    if d is not None:
        if d.st_size == st.st_size and (d.st_mtime_ns == st.st_mtime_ns or
                                        digest(os.path.join(src, p)) == digest(os.path.join(dst, p))):
            continue
    elif st.st_size in gone_sizes:
        h = digest(os.path.join(src, p))
        if pool[h] > 0:
            pool[h] -= 1
            continue
    total += st.st_size
print(total, n)
PY
}

cron_scenario() {
    local scen=$1 ds=$2 t0 t1 r
    CRON=$BENCH_DIR/remote-cron
    rm -rf "$CRON"; mkdir -p "$CRON"
    SRC=$CRON/src RS_DST=$CRON/rs RSYNC_DST=$CRON/rsync
    cp -a "$DATA/$ds" "$SRC"
    [[ $scen == change ]] && python3 "$MUT" prep "$SRC" --seed 1 >/dev/null
    rs_mirror "$RS_DST"; rsync_mirror
    sync; drop; sleep 2
    python3 "$MUT" warm "$SRC" "$RS_DST" "$RSYNC_DST" --data "$SRC" >/dev/null
    # One untimed round each (page cache and memory warm up).
    rs_mirror "$RS_DST"; rsync_mirror
    local rt=() st=()
    for r in $(seq 1 "$ROUNDS"); do
        if [[ $scen == change ]]; then
            python3 "$MUT" mutate "$SRC" --seed "$((100 + r))" --fraction 0.01 >/dev/null
            sync; sleep 1
        fi
        # `sync` (untimed) between the two: on one machine ringsync's syncfs of DST's
        # filesystem would otherwise also write out what rsync left dirty just before (on
        # two machines each receiver's filesystem holds only its own writes).
        if ((r % 2)); then
            t0=$(now); rs_mirror "$RS_DST"; t1=$(now); rt+=("$(echo "$t1 - $t0" | bc -l)")
            sync
            t0=$(now); rsync_mirror; t1=$(now); st+=("$(echo "$t1 - $t0" | bc -l)")
        else
            t0=$(now); rsync_mirror; t1=$(now); st+=("$(echo "$t1 - $t0" | bc -l)")
            sync
            t0=$(now); rs_mirror "$RS_DST"; t1=$(now); rt+=("$(echo "$t1 - $t0" | bc -l)")
        fi
    done
    local ratios=()
    for i in "${!rt[@]}"; do ratios+=("$(echo "${rt[$i]} / ${st[$i]}" | bc -l)"); done
    echo
    if [[ $scen == change ]]; then
        echo "## $ds, ~1% of the entries changed in place before each round (cron-style: each tool its own target)"
    else
        echo "## $ds ($(find "$SRC" | wc -l) entries), nothing changed (cron-style: each tool its own target)"
    fi
    echo
    echo "| command | median s | min..max s | median of paired ratios to rsync |"
    echo "|---|---:|---|---:|"
    printf '| ringsync mirror | %.3f | %.3f..%.3f | %.2f |\n' "$(printf '%s\n' "${rt[@]}" | median)" \
        "$(printf '%s\n' "${rt[@]}" | sort -g | head -1)" "$(printf '%s\n' "${rt[@]}" | sort -g | tail -1)" \
        "$(printf '%s\n' "${ratios[@]}" | median)"
    printf '| rsync -aHAX --delete | %.3f | %.3f..%.3f | 1 |\n' "$(printf '%s\n' "${st[@]}" | median)" \
        "$(printf '%s\n' "${st[@]}" | sort -g | head -1)" "$(printf '%s\n' "${st[@]}" | sort -g | tail -1)"
    echo
    echo "Rounds (ringsync / rsync, s): $(for i in "${!rt[@]}"; do printf '%.3f/%.3f ' "${rt[$i]}" "${st[$i]}"; done)"
    echo
    echo "Without the ssh floor ($(printf %.3f "$SSH_FLOOR") s): ringsync $(echo "$(printf '%s\n' "${rt[@]}" | median) - $SSH_FLOOR" | bc -l | xargs printf %.3f) s, rsync $(echo "$(printf '%s\n' "${st[@]}" | median) - $SSH_FLOOR" | bc -l | xargs printf %.3f) s; the floor alone is $(echo "$SSH_FLOOR / $(printf '%s\n' "${st[@]}" | median)" | bc -l | xargs printf %.2f)x rsync's time."
    # Wire bytes of one more round (untimed).
    if [[ $scen == change ]]; then
        python3 "$MUT" mutate "$SRC" --seed 999 --fraction 0.01 >/dev/null
        sync; sleep 1
    fi
    local cb cn wire rsw
    read -r cb cn < <(changed_bytes)
    rm -f "$WORK/wire.in"
    rs_mirror "$RS_DST" "$WORK/count-rsh"
    wire=$(stat -c %s "$WORK/wire.in" 2>/dev/null || echo 0)
    rsw=$(rsync_mirror --stats | awk '/^Total bytes sent:/ {gsub(",", "", $4); print $4}')
    echo
    echo "Wire bytes of one more round: ringsync sent $wire bytes to the remote end for $cb changed file bytes in $cn changed entries (goal: at most 1.1 x $cb + 200 x $cn = $(echo "1.1 * $cb + 200 * $cn" | bc -l | cut -d. -f1)); rsync sent $rsw bytes (--stats)."
    rm -rf "$CRON"; drop
}
for scen in change nochange; do
    [[ " $SCENARIOS " == *" $scen "* ]] || continue
    if [[ $scen == change ]]; then cron_scenario change mixed; else cron_scenario nochange small; fi
done

# ---- slow link: compression.
if [[ " $SCENARIOS " == *" slow "* ]]; then
    TEXT=$DATA/text
    if [[ ! -d $TEXT ]]; then
        py=$(ls -d /usr/lib/python3.[0-9]* 2>/dev/null | head -1)
        [[ -n $py ]] || die "no /usr/lib/python3.* to copy as the compressible tree"
        cp -a "$py" "$TEXT"
    fi
    SLOW_RATE=${SLOW_RATE:-10485760}
    warm "$TEXT"
    slow_cmds=(ringsync ringsync-z rsync rsync-z)
    declare -A st=() sw=()
    for r in $(seq 1 "$ROUNDS"); do
        for i in 0 1 2 3; do
            c=${slow_cmds[$(((i + r) % 4))]}
            d=$OUT/slow-$c-$r
            rm -rf "$d"; mkdir -p "$OUT"; sync
            # Bytes to the remote end: ringsync's through the counting -e wrapper, rsync's
            # from --stats (rsync waits for its -e child, which waits for tee: no wrapper).
            rm -f "$WORK/wire.in"
            s=$(now)
            case $c in
                ringsync) "$RS" mirror -q --bwlimit "$SLOW_RATE" -e "$WORK/count-rsh" --remote-bin "$RS" "$TEXT" "root@127.0.0.1:$d" ;;
                ringsync-z) "$RS" mirror -q -z --bwlimit "$SLOW_RATE" -e "$WORK/count-rsh" --remote-bin "$RS" "$TEXT" "root@127.0.0.1:$d" ;;
                rsync) rsync -aHAX --delete --stats --bwlimit=$((SLOW_RATE / 1024)) -e "$SSH" "$TEXT/" "root@127.0.0.1:$d" > "$WORK/stats" ;;
                rsync-z) rsync -aHAXz --delete --stats --bwlimit=$((SLOW_RATE / 1024)) -e "$SSH" "$TEXT/" "root@127.0.0.1:$d" > "$WORK/stats" ;;
            esac
            e=$(now)
            st[$c]+="$(echo "$e - $s" | bc -l) "
            case $c in
                ringsync*) sw[$c]+="$(stat -c %s "$WORK/wire.in") " ;;
                *) sw[$c]+="$(awk '/^Total bytes sent:/ {gsub(",", "", $4); print $4}' "$WORK/stats") " ;;
            esac
        done
    done
    echo
    echo "## text ($(du -sh --apparent-size "$TEXT" | cut -f1), $(find "$TEXT" | wc -l) entries): initial sync through a link limited to $((SLOW_RATE / 1048576)) MiB/s (each tool's --bwlimit)"
    echo
    echo "| command | median s | min..max s | bytes to the remote end (median) |"
    echo "|---|---:|---|---:|"
    for c in "${slow_cmds[@]}"; do
        t=(${st[$c]}) w=(${sw[$c]})
        printf '| %s | %.2f | %.2f..%.2f | %s |\n' "$c" "$(printf '%s\n' "${t[@]}" | median)" \
            "$(printf '%s\n' "${t[@]}" | sort -g | head -1)" "$(printf '%s\n' "${t[@]}" | sort -g | tail -1)" \
            "$(printf '%s\n' "${w[@]}" | median | cut -d. -f1)"
    done
    rm -rf "$OUT"
fi
