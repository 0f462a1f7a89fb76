#!/usr/bin/env python3
"""Deterministic dataset generator for tools/bench-copy.sh.

Usage: gen-dataset.py KIND DEST [--scale quick|full] [--seed N]

KIND is one of:
  big    one 2 GiB file of incompressible (pseudo-random) data
  huge   one 4 GiB file (memory test only)
  small  50,000 x 4 KiB files spread across 500 directories
  mixed  ~1 GiB tree, log-normal file sizes (many small, a few tens of MiB),
         ~2% symlinks, ~2% hardlinks, a few directory levels, a handful of
         user.* xattrs, varied permission bits, ~2% files owned by uid 1000
         (when run as root) and fixed past mtimes

The same (KIND, scale, seed) always produces byte-identical contents, names,
modes and mtimes.  DEST must not exist; the tree is built in DEST.tmp and
renamed into place, so an interrupted run never leaves a half-built dataset
under the final name.
"""

import argparse
import os
import random
import shutil
import sys

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

SCALES = {
    # name:   big       huge      small(files, dirs)  mixed bytes
    "full": dict(big=2 * GiB, huge=4 * GiB, small=(50_000, 500), mixed=1 * GiB),
    "quick": dict(big=64 * MiB, huge=256 * MiB, small=(500, 10), mixed=24 * MiB),
}

# Fixed epoch for generated mtimes: 2023-01-01T00:00:00Z.
BASE_MTIME = 1672531200


def write_random(path, size, rng, chunk=4 * MiB):
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(rng.randbytes(n))
            left -= n


def set_mtime(path, rng, follow=True):
    sec = BASE_MTIME + rng.randrange(0, 365 * 86400)
    ns = sec * 1_000_000_000 + rng.randrange(0, 1_000_000_000)
    os.utime(path, ns=(ns, ns), follow_symlinks=follow)


def gen_single(dest, size, rng):
    os.mkdir(dest)
    path = os.path.join(dest, "data.bin")
    write_random(path, size, rng)
    os.chmod(path, 0o644)
    set_mtime(path, rng)


def gen_small(dest, nfiles, ndirs, rng):
    os.mkdir(dest)
    per_dir = nfiles // ndirs
    extra = nfiles - per_dir * ndirs
    dirs = []
    for d in range(ndirs):
        dpath = os.path.join(dest, "d%03d" % d)
        os.mkdir(dpath)
        dirs.append(dpath)
        count = per_dir + (1 if d < extra else 0)
        for i in range(count):
            fpath = os.path.join(dpath, "f%05d.dat" % i)
            with open(fpath, "wb") as f:
                f.write(rng.randbytes(4 * KiB))
            set_mtime(fpath, rng)
    for dpath in dirs:
        set_mtime(dpath, rng)


def lognormal_size(rng, cap):
    # median ~ 8 KiB, sigma 2.2: mostly small files, a long tail up to `cap`.
    size = int(rng.lognormvariate(9.0, 2.2))
    return max(0, min(size, cap))


def gen_mixed(dest, total, rng):
    cap = 48 * MiB if total >= 256 * MiB else max(64 * KiB, total // 16)
    os.mkdir(dest)
    # Directory tree: 3 levels, fan-out 6/5/4 -> 1 + 6 + 30 + 120 dirs.
    dirs = [dest]
    frontier = [dest]
    for level, fan in enumerate((6, 5, 4)):
        nxt = []
        for parent in frontier:
            for i in range(fan):
                p = os.path.join(parent, "l%d_%02d" % (level, i))
                os.mkdir(p)
                nxt.append(p)
        dirs.extend(nxt)
        frontier = nxt

    files = []
    written = 0
    n = 0
    while written < total:
        size = lognormal_size(rng, cap)
        size = min(size, total - written) if total - written > 0 else 0
        d = rng.choice(dirs)
        path = os.path.join(d, "file_%06d.bin" % n)
        write_random(path, size, rng)
        files.append(path)
        written += size
        n += 1

    # A few deterministic zero-length files and varied permission bits.
    for i in range(3):
        path = os.path.join(rng.choice(dirs), "empty_%d" % i)
        open(path, "wb").close()
        files.append(path)
    modes = [0o644] * 16 + [0o600, 0o640, 0o755, 0o444]
    for path in files:
        os.chmod(path, rng.choice(modes))

    # ~2% of files owned by a non-root uid/gid (only possible when run as root),
    # so ownership preservation is observable.
    if os.geteuid() == 0:
        for path in rng.sample(files, max(1, len(files) * 2 // 100)):
            os.chown(path, 1000, 1000)

    # ~2% hardlinks (extra names for existing files, possibly in other dirs).
    nlinks = max(1, len(files) * 2 // 100)
    for i in range(nlinks):
        target = rng.choice(files)
        path = os.path.join(rng.choice(dirs), "hardlink_%05d" % i)
        os.link(target, path)

    # ~2% symlinks: relative and absolute-within-tree targets plus one dangling.
    nsyms = max(2, len(files) * 2 // 100)
    for i in range(nsyms):
        d = rng.choice(dirs)
        path = os.path.join(d, "symlink_%05d" % i)
        if i == 0:
            target = "does/not/exist"
        elif i % 10 == 1:
            target = os.path.relpath(rng.choice(dirs), d)  # symlink to a dir
        else:
            target = os.path.relpath(rng.choice(files), d)
        os.symlink(target, path)
        set_mtime(path, rng, follow=False)

    # A handful of user.* xattrs (only if the filesystem supports them).
    try:
        for i, path in enumerate(rng.sample(files, min(20, len(files)))):
            os.setxattr(path, "user.ringsync.bench", b"value-%d" % i)
    except OSError as e:
        print("gen-dataset: xattrs not supported here (%s); skipping" % e, file=sys.stderr)

    for path in files:
        set_mtime(path, rng)
    # Directory mtimes last, deepest first, so later creations don't bump them.
    for d in sorted(dirs, key=lambda p: p.count(os.sep), reverse=True):
        set_mtime(d, rng)

    print("gen-dataset: mixed: %d files, %d hardlinks, %d symlinks, %d dirs, %.1f MiB"
          % (len(files), nlinks, nsyms, len(dirs), written / MiB), file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["big", "huge", "small", "mixed"])
    ap.add_argument("dest")
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--seed", type=int, default=20240601)
    args = ap.parse_args()

    if os.path.lexists(args.dest):
        sys.exit("gen-dataset: %s already exists" % args.dest)
    tmp = args.dest + ".tmp"
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)

    sc = SCALES[args.scale]
    # Each kind gets its own stream so adding a kind never changes another one.
    rng = random.Random("%s:%s:%d" % (args.kind, args.scale, args.seed))
    os.umask(0o022)
    if args.kind in ("big", "huge"):
        gen_single(tmp, sc[args.kind], rng)
    elif args.kind == "small":
        gen_small(tmp, sc["small"][0], sc["small"][1], rng)
    else:
        gen_mixed(tmp, sc["mixed"], rng)
    os.sync()
    os.rename(tmp, args.dest)


if __name__ == "__main__":
    main()
