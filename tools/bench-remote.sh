#!/usr/bin/env bash
# Remote mirror over ssh against rsync over ssh (issue 14's performance rows), through a private
# sshd on 127.0.0.1 that this script starts (its own host and client keys; root login by key).
# Every round runs each command once (order rotating), each into a fresh destination; the report
# gives medians, min..max and the median of paired ratios to rsync. Run as root.
#
#   [RINGSYNC_BIN=target/release/ringsync] [ROUNDS=5] [DATASETS=mixed]
#   [BENCH_DIR=/var/tmp/ringsync-bench] [SSH_OPTS="-c aes128-gcm@openssh.com"] tools/bench-remote.sh > perf/report.md
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
record_cmdline "$@" -- RINGSYNC_BIN ROUNDS DATASETS BENCH_DIR SSH_OPTS
RINGSYNC_BIN=${RINGSYNC_BIN:-$REPO/target/release/ringsync}
ROUNDS=${ROUNDS:-5}
DATASETS=${DATASETS:-mixed}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ringsync-bench}
DATA=$BENCH_DIR/data-full
OUT=$BENCH_DIR/remote-dst
[[ $(id -u) == 0 ]] || die "run as root (sshd, drop_caches)"
command -v rsync >/dev/null || die "rsync missing (apt-get install rsync)"
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
[[ -x $SSHD ]] || die "sshd missing (apt-get install openssh-server)"
for ds in $DATASETS; do [[ -d $DATA/$ds ]] || die "$DATA/$ds missing: run tools/bench-copy.sh once"; done
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
trap 'kill $sshd_pid 2>/dev/null; wait $sshd_pid 2>/dev/null; rm -rf "$WORK" "$OUT"' EXIT
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

cmds=(ringsync ringsync-nofsync rsync rsync+sync)
for ds in $DATASETS; do
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
