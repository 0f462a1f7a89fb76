# Shared by the tools/*.sh scripts. Source it right after `set -euo pipefail`:
#
#   TOOL=bench-copy
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   tool_args "$@"                      # --help, or no arguments at all
#   record_cmdline "$@" -- QUICK RUNS   # CMDLINE: the user-set variables and the command
#
# Every script is configured through environment variables and takes no arguments; its
# --help is its header comment (line 2 up to `set -euo pipefail`).

[[ -n "${TOOL:-}" ]] || { echo "tools/lib.sh: set TOOL before sourcing it" >&2; exit 1; }

die() { echo "$TOOL: ERROR: $*" >&2; exit 1; }
log() { echo "$TOOL: $*" >&2; }

# The repository this script belongs to.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_DIR="$REPO/tools"

# tool_args "$@": print the header comment for -h/--help, refuse any other argument.
tool_args() {
    case "${1:-}" in
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        "") ;;
        *) die "unknown argument '$1' (configuration is via environment variables; see --help)" ;;
    esac
}

# record_cmdline ARGS... -- VARS...: CMDLINE = "V1=... V2=... script ARGS..." with the VARS the
# user set (before the script applies its defaults), shell-quoted, for the report.
record_cmdline() {
    local args=() a v
    while (($#)) && [[ "$1" != -- ]]; do args+=("$1"); shift; done
    (($#)) && shift
    CMDLINE=""
    for v in "$@"; do
        if [[ -n "${!v+x}" ]]; then CMDLINE+="$v=$(printf '%q' "${!v}") "; fi
    done
    CMDLINE+="$(printf '%q' "$0")"
    for a in "${args[@]}"; do CMDLINE+=" $(printf '%q' "$a")"; done
}

# Timing helpers shared by the benches: drop the page cache (after a sync); the median of the
# numbers on stdin; the time now in seconds; read every file below DIR into the page cache.
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s.%N; }
warm() { find "$1" -type f -exec cat {} + > /dev/null 2>&1 || true; }

# first_line CMD...: the first non-empty line CMD prints (stdout or stderr), e.g. a version.
first_line() { "$@" 2>&1 | sed -n '/./{p;q}' || true; }

# private_binary DIR: copy RINGSYNC_BIN to DIR/ringsync, so that a rebuild while the script
# runs cannot change what is measured. Sets RS (the copy) and RS_DESC (version, git revision,
# whether src/ or Cargo.* had uncommitted changes, the binary's sha256 prefix and build time).
private_binary() {
    local sha rev dirty=""
    RS="$1/ringsync"
    cp "$RINGSYNC_BIN" "$RS"
    sha=$(sha256sum "$RS" | cut -c1-16)
    rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no commit")
    if [[ -n "$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
        dirty=", uncommitted changes under src/ or Cargo.*"
    fi
    RS_DESC="$(first_line "$RS" --version) (git $rev$dirty; binary sha256 $sha…, built $(date -r "$RINGSYNC_BIN" '+%Y-%m-%d %H:%M'))"
}

# report_head TITLE QUICK_TEXT [FAIL_LINE...]: a report's opening: "# TITLE, <date>", the QUICK
# banner when QUICK=1, the failure banner (one quoted line per FAIL_LINE; none: no banner) and
# the command block (CMDLINE from record_cmdline).
report_head() {
    local title=$1 quick=$2 line
    shift 2
    echo "# $title, $(date '+%Y-%m-%d %H:%M %Z')"
    echo
    if [[ "${QUICK:-0}" == 1 ]]; then
        echo "> **QUICK smoke mode**: $quick"
        echo
    fi
    if (($#)); then
        for line in "$@"; do echo "> $line"; done
        echo
    fi
    echo "Command:"
    echo
    echo '```'
    echo "$CMDLINE"
    echo '```'
    echo
}

# new_report NAME: REPORT=OUT_DIR/NAME-<date>-<time>.md, with -2, -3... appended while that report
# or its per-run log directory (BENCH_DIR/logs/SCALE-<report name>) already exists.
new_report() {
    local stamp n=1
    stamp=$(date +%Y%m%d-%H%M)
    REPORT="$OUT_DIR/$1-$stamp.md"
    while [[ -e "$REPORT" || -e "$BENCH_DIR/logs/${SCALE:-}-$(basename "${REPORT%.md}")" ]]; do
        n=$((n + 1)); REPORT="$OUT_DIR/$1-$stamp-$n.md"
    done
}
