#!/usr/bin/env bash
# Build fio from a source checkout with tools/fio-fsync-buf-index.patch, for tools/bench-vs-fio.sh.
#
#   FIO_SRC=/path/to/fio tools/build-fio.sh     prints the path of the built binary
#   FIO_BIN=$(FIO_SRC=... tools/build-fio.sh) tools/bench-vs-fio.sh
#
# Why: fio's io_uring engine leaves buf_index set on an SQE it reuses for an FSYNC after a
# READ_FIXED/WRITE_FIXED, and the kernel rejects that FSYNC with EINVAL. With --fixedbufs=1 and
# --iodepth > 1, fio's end_fsync then does nothing, so a fixed-buffer write job can only be
# compared with ringsync (which writes with WRITE_FIXED and fdatasyncs every pass) after this
# one-line fix. Found in fio 3.33, still there in 3.42 (git f5344384).
#
# The checkout is not touched: it is copied (git archive if it is a git work tree or bare repo,
# else cp -a) to BUILD_DIR, patched there and built with ./configure --disable-native && make.
#
# Environment:
#   FIO_SRC      fio source: a work tree, a bare git repository, or an unpacked release (required)
#   BUILD_DIR    where to build (default /var/tmp/ringsync-fio-build); replaced on every run
#   JOBS         make -j (default: nproc)
set -euo pipefail

TOOL=build-fio
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
tool_args "$@"

PATCH="$REPO/tools/fio-fsync-buf-index.patch"
[[ -n "${FIO_SRC:-}" ]] || die "set FIO_SRC to a fio source tree or git repository (https://github.com/axboe/fio)"
[[ -d "$FIO_SRC" ]] || die "FIO_SRC '$FIO_SRC' is not a directory"
BUILD_DIR=${BUILD_DIR:-/var/tmp/ringsync-fio-build}
JOBS=${JOBS:-$(nproc)}
for t in make gcc patch; do command -v "$t" >/dev/null || die "$t is required (apt-get install build-essential patch)"; done

rm -rf "$BUILD_DIR"
mkdir -p "$BUILD_DIR"
desc=""
if git -C "$FIO_SRC" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$FIO_SRC" archive HEAD | tar -x -C "$BUILD_DIR"
    desc="-g$(git -C "$FIO_SRC" rev-parse --short HEAD)"
elif git --git-dir="$FIO_SRC" rev-parse HEAD >/dev/null 2>&1; then
    git --git-dir="$FIO_SRC" archive HEAD | tar -x -C "$BUILD_DIR"
    desc="-g$(git --git-dir="$FIO_SRC" rev-parse --short HEAD)"
else
    cp -a "$FIO_SRC/." "$BUILD_DIR/"
fi
cd "$BUILD_DIR"
[[ -f engines/io_uring.c && -x configure ]] || die "'$FIO_SRC' does not look like fio's source (no engines/io_uring.c, configure)"
patch -p1 --forward <"$PATCH" >&2 || die "$PATCH does not apply to this fio (fixed upstream already? then use it as is)"
base=$(sed -n 's/^DEF_VER=//p' FIO-VERSION-GEN)
echo "${base:-fio}$desc-fsyncfix" >version
./configure --disable-native >configure.log 2>&1 || die "configure failed: $BUILD_DIR/configure.log"
make -j"$JOBS" fio >make.log 2>&1 || die "make failed: $BUILD_DIR/make.log"
echo "build-fio: $("$BUILD_DIR/fio" --version)" >&2
echo "$BUILD_DIR/fio"
