#!/usr/bin/env python3
"""Tree helpers for tools/bench-mirror.sh: deterministic ~1% mutations, an
atime-neutral warm-up walk and a strict tree comparison.

Usage:
  mutate-tree.py mutate ROOT --seed S [--fraction 0.01]
  mutate-tree.py prep ROOT --seed S [--fraction 0.01]
  mutate-tree.py warm ROOT... [--data ROOT]...
  mutate-tree.py check SRC DST [--ignore-root-xattr NAME] [--no-content] [--keep-atimes]

mutate  changes ~FRACTION of ROOT's entries (root excluded; at least one of each
        kind), a mix of: rewrite part of a file (same size), append, truncate,
        delete a file, new files (dataset-like log-normal sizes), chmod, touch
        (new mtime, same bytes), rename a file (same or another directory),
        set/change a user.* xattr, new small directory with 2-5 files, delete a
        small directory made by an earlier mutation or by `prep`.  The same
        seed on the same tree makes the same changes.  Modified files get an
        explicit mtime at least one second past the old one, so size+mtime
        (seconds) quick checks always see them.  Prints one summary line
        `mutate: seed=... entries=N changed=C (P%) rewrite=.. ... bytes_written=B`.
prep    adds the pool of small directories that the first mutation's "delete
        a small directory" draws from (run once, before the targets are synced).
warm    stats every entry (and lists its xattrs) under each ROOT, and with
        --data ROOT also reads that tree's file contents, without changing any
        atime (O_NOATIME; run as root or owner).
check   strict comparison: every entry and the root itself must match in type,
        mode, owner, mtime (ns), size, content (unless --no-content), symlink
        target, device number, hardlink structure and the full xattr set
        (--ignore-root-xattr NAME skips one xattr on DST's root only).  atime is
        not compared.  File and directory reads are atime-neutral, but readlink
        bumps a symlink's atime (relatime), so with --keep-atimes symlink
        targets are compared by length only: use that between timed runs, so
        checking doesn't give ringsync (which preserves atimes) extra work.
        Prints `OK ...` or `MISMATCH ...` (exit 1).

Everything but `mutate`/`prep` is read-only.
"""

import argparse
import errno
import os
import random
import shutil
import stat
import sys
import time

KiB = 1024
MiB = 1024 * KiB

NOATIME = getattr(os, "O_NOATIME", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Share of the change budget per kind (entries).  newdir/deldir entries are a
# directory plus its files (~4 entries each).
WEIGHTS = [
    ("rewrite", 0.20), ("append", 0.10), ("truncate", 0.05), ("delete", 0.10),
    ("newfile", 0.15), ("chmod", 0.08), ("touch", 0.08), ("rename", 0.10),
    ("xattr", 0.04), ("newdir", 0.05), ("deldir", 0.05),
]
KINDS = [k for k, _ in WEIGHTS]
SMALLDIR_PREFIXES = ("mutdir_", "pooldir_")
FILE_MODES = [0o644, 0o600, 0o640, 0o755, 0o444]
DIR_MODES = [0o755, 0o750, 0o700, 0o775]


def open_dir(path, dir_fd=None):
    """Open a directory for reading without updating its atime when we may."""
    try:
        return os.open(path, DIR_FLAGS | NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(path, DIR_FLAGS, dir_fd=dir_fd)


def open_file(path):
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | NOATIME)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def walk(root, with_links=False):
    """Yield (rel, stat, link_target) for root ('.') and every entry below it,
    depth-first with names sorted bytewise, without touching atimes of
    directories.  link_target is read only when with_links (readlink updates
    the symlink's atime under relatime, once)."""
    st = os.lstat(root)
    yield ".", st, None
    if not stat.S_ISDIR(st.st_mode):
        return
    stack = [b"."]
    broot = os.fsencode(root)
    while stack:
        rel = stack.pop()
        fd = open_dir(broot if rel == b"." else os.path.join(broot, rel))
        try:
            with os.scandir(fd) as it:
                names = sorted(os.fsencode(e.name) for e in it)
            subdirs = []
            for name in names:
                r = name if rel == b"." else rel + b"/" + name
                s = os.stat(name, dir_fd=fd, follow_symlinks=False)
                target = None
                if with_links and stat.S_ISLNK(s.st_mode):
                    target = os.readlink(name, dir_fd=fd)
                yield os.fsdecode(r), s, target
                if stat.S_ISDIR(s.st_mode):
                    subdirs.append(r)
        finally:
            os.close(fd)
        # Visit subdirectories in sorted order (stack: push in reverse).
        stack.extend(reversed(subdirs))


def lognormal_size(rng, cap, mu=9.0, sigma=2.2):
    # Same distribution as tools/gen-dataset.py (median ~8 KiB).
    return max(0, min(int(rng.lognormvariate(mu, sigma)), cap))


def write_random(path, size, rng):
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(4 * MiB, left)
            f.write(rng.randbytes(n))
            left -= n
    return size


def bump_mtime(path, old_ns, rng):
    """Set mtime to >= max(now, old + 1 s), in a different second than old."""
    sec = max(int(time.time()), old_ns // 10**9 + 1)
    ns = sec * 10**9 + rng.randrange(10**9)
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns, ns), follow_symlinks=False)


class Tree:
    def __init__(self, root):
        self.root = root
        self.files = []      # regular files (every name of a hardlink group)
        self.dirs = []       # directories, root excluded
        self.smalldirs = []  # our own small leaf directories
        self.entries = 0
        self.bytes = 0
        children = {}
        for rel, st, _ in walk(root):
            if rel == ".":
                continue
            self.entries += 1
            parent = os.path.dirname(rel)
            children.setdefault(parent, []).append((rel, st))
            if stat.S_ISREG(st.st_mode):
                self.files.append((rel, st))
                self.bytes += st.st_size
            elif stat.S_ISDIR(st.st_mode):
                self.dirs.append(rel)
        for d in self.dirs:
            kids = children.get(d, [])
            if (os.path.basename(d).startswith(SMALLDIR_PREFIXES)
                    and not any(stat.S_ISDIR(s.st_mode) for _, s in kids)):
                self.smalldirs.append((d, len(kids)))
        # Same cap rule as gen-dataset.py's mixed tree.
        self.cap = 48 * MiB if self.bytes >= 256 * MiB else max(64 * KiB, self.bytes // 16)

    def path(self, rel):
        return os.path.join(self.root, rel)


def budget(entries, fraction):
    n = max(1, round(entries * fraction))
    counts = {}
    for kind, w in WEIGHTS:
        if kind in ("newdir", "deldir"):
            counts[kind] = max(1, round(n * w / 4))  # ~4 entries per small dir
        else:
            counts[kind] = max(1, round(n * w))
    return n, counts


def make_smalldir(tree, parent, name, rng):
    d = os.path.join(parent, name) if parent else name
    os.mkdir(tree.path(d))
    nfiles = rng.randint(2, 5)
    written = 0
    for i in range(nfiles):
        written += write_random(tree.path(os.path.join(d, "f%d.bin" % i)),
                                lognormal_size(rng, min(tree.cap, 1 * MiB)), rng)
    return 1 + nfiles, written


def cmd_prep(args):
    tree = Tree(args.root)
    rng = random.Random("prep:%s" % args.seed)
    _, counts = budget(tree.entries, args.fraction)
    parents = [""] + tree.dirs
    made = entries = 0
    for i in range(counts["deldir"] + 1):
        name = "pooldir_%03d" % i
        parent = rng.choice(parents)
        if os.path.lexists(tree.path(os.path.join(parent, name))):
            continue
        e, _ = make_smalldir(tree, parent, name, rng)
        made += 1
        entries += e
    print("prep: %d small dirs (%d entries) added to %s" % (made, entries, args.root))


def cmd_mutate(args):
    tree = Tree(args.root)
    rng = random.Random("mutate:%s" % args.seed)
    n, want = budget(tree.entries, args.fraction)
    done = {k: 0 for k in KINDS}
    changed = {k: 0 for k in KINDS}   # entries changed per kind
    written = 0
    tag = "%08x" % (random.Random("tag:%s" % args.seed).getrandbits(32))

    # Small directories to delete first; their contents are off limits below.
    gone = set()
    pool = sorted(tree.smalldirs)
    for d, kids in rng.sample(pool, min(want["deldir"], len(pool))):
        shutil.rmtree(tree.path(d))
        gone.add(d)
        done["deldir"] += 1
        changed["deldir"] += 1 + kids

    def alive(rel):
        return not any(rel.startswith(g + "/") for g in gone)

    files = [(r, s) for r, s in tree.files if alive(r)]
    dirs = [d for d in tree.dirs if d not in gone and alive(d)]
    used = set()

    def pick(pred=lambda s: True):
        cands = [(r, s) for r, s in files if r not in used and pred(s)]
        if not cands:
            return None
        r, s = rng.choice(cands)
        used.add(r)
        return r, s

    # Each kind picks its own distinct files, in a fixed order.
    for _ in range(want["rewrite"]):
        t = pick(lambda s: s.st_size > 0)
        if t is None:
            break
        r, s = t
        off = rng.randrange(s.st_size)
        ln = max(1, min(s.st_size - off, lognormal_size(rng, 1 * MiB, 9.0, 1.5)))
        fd = os.open(tree.path(r), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.pwrite(fd, rng.randbytes(ln), off)
        finally:
            os.close(fd)
        bump_mtime(tree.path(r), s.st_mtime_ns, rng)
        written += ln
        done["rewrite"] += 1
        changed["rewrite"] += 1
    for _ in range(want["append"]):
        t = pick()
        if t is None:
            break
        r, s = t
        ln = max(1, lognormal_size(rng, 1 * MiB, 7.0, 1.5))
        with open(tree.path(r), "ab") as f:
            f.write(rng.randbytes(ln))
        bump_mtime(tree.path(r), s.st_mtime_ns, rng)
        written += ln
        done["append"] += 1
        changed["append"] += 1
    for _ in range(want["truncate"]):
        t = pick(lambda s: s.st_size > 0)
        if t is None:
            break
        r, s = t
        os.truncate(tree.path(r), rng.randrange(s.st_size))
        bump_mtime(tree.path(r), s.st_mtime_ns, rng)
        done["truncate"] += 1
        changed["truncate"] += 1
    for _ in range(want["chmod"]):
        t = pick()
        if t is None:
            break
        r, s = t
        cur = stat.S_IMODE(s.st_mode)
        os.chmod(tree.path(r), rng.choice([m for m in FILE_MODES if m != cur]))
        done["chmod"] += 1
        changed["chmod"] += 1
    if dirs:
        # One directory chmod per mutation as well (counted under chmod).
        d = rng.choice(dirs)
        cur = stat.S_IMODE(os.lstat(tree.path(d)).st_mode)
        os.chmod(tree.path(d), rng.choice([m for m in DIR_MODES if m != cur]))
        done["chmod"] += 1
        changed["chmod"] += 1
    for _ in range(want["touch"]):
        t = pick()
        if t is None:
            break
        r, s = t
        bump_mtime(tree.path(r), s.st_mtime_ns, rng)
        done["touch"] += 1
        changed["touch"] += 1
    for i in range(want["xattr"]):
        t = pick()
        if t is None:
            break
        r, _ = t
        try:
            os.setxattr(tree.path(r), "user.ringsync.bench", b"mut-%s-%d" % (tag.encode(), i),
                        follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            break
        done["xattr"] += 1
        changed["xattr"] += 1
    for i in range(want["rename"]):
        t = pick()
        if t is None:
            break
        r, _ = t
        parent = os.path.dirname(r) if rng.random() < 0.5 or not dirs else rng.choice([""] + dirs)
        new = os.path.join(parent, "ren_%s_%d_%s" % (tag, i, os.path.basename(r)))
        os.rename(tree.path(r), tree.path(new))
        done["rename"] += 1
        changed["rename"] += 1
    for _ in range(want["delete"]):
        t = pick()
        if t is None:
            break
        os.unlink(tree.path(t[0]))
        done["delete"] += 1
        changed["delete"] += 1
    parents = [""] + dirs
    for i in range(want["newfile"]):
        rel = os.path.join(rng.choice(parents), "new_%s_%d.bin" % (tag, i))
        written += write_random(tree.path(rel), lognormal_size(rng, tree.cap), rng)
        os.chmod(tree.path(rel), rng.choice(FILE_MODES))
        done["newfile"] += 1
        changed["newfile"] += 1
    for i in range(want["newdir"]):
        e, w = make_smalldir(tree, rng.choice(parents), "mutdir_%s_%d" % (tag, i), rng)
        written += w
        done["newdir"] += 1
        changed["newdir"] += e

    total = sum(changed.values())
    kinds = " ".join(
        "%s=%d" % (k, done[k]) + ("(%d entries)" % changed[k] if changed[k] != done[k] else "")
        for k in KINDS)
    print("mutate: seed=%s entries=%d changed=%d (%.2f%%, target %d) %s bytes_written=%d"
          % (args.seed, tree.entries, total, 100.0 * total / max(1, tree.entries), n, kinds,
             written))


def cmd_warm(args):
    n = 0
    data = 0
    data_roots = set(args.data)
    for root in list(args.roots) + [r for r in args.data if r not in args.roots]:
        for rel, st, _ in walk(root):
            n += 1
            p = os.path.join(root, rel)
            try:
                os.listxattr(p, follow_symlinks=False)
            except OSError:
                pass
            if root in data_roots and stat.S_ISREG(st.st_mode) and st.st_size:
                fd = open_file(p)
                try:
                    while True:
                        b = os.read(fd, 1 * MiB)
                        if not b:
                            break
                        data += len(b)
                finally:
                    os.close(fd)
    print("warm: %d entries, %.1f MiB read" % (n, data / MiB))


def xattr_map(path):
    try:
        return {k: os.getxattr(path, k, follow_symlinks=False)
                for k in os.listxattr(path, follow_symlinks=False)}
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise


def same_bytes(a, b):
    fa, fb = open_file(a), open_file(b)
    try:
        while True:
            x = os.read(fa, 1 * MiB)
            y = os.read(fb, 1 * MiB)
            if x != y:
                return False
            if not x:
                return True
    finally:
        os.close(fa)
        os.close(fb)


def cmd_check(args):
    links = not args.keep_atimes
    src = {rel: (st, t) for rel, st, t in walk(args.src, with_links=links)}
    dst = {rel: (st, t) for rel, st, t in walk(args.dst, with_links=links)}
    problems = []

    def bad(rel, what):
        problems.append("%s: %s" % (rel, what))

    for rel in sorted(set(dst) - set(src)):
        bad(rel, "extra in DST")
    s2d, d2s = {}, {}
    content_done = {}
    for rel in sorted(src):
        s, starget = src[rel]
        if rel not in dst:
            bad(rel, "missing in DST")
            continue
        d, dtarget = dst[rel]
        if stat.S_IFMT(s.st_mode) != stat.S_IFMT(d.st_mode):
            bad(rel, "type %o != %o" % (stat.S_IFMT(s.st_mode), stat.S_IFMT(d.st_mode)))
            continue
        if stat.S_IMODE(s.st_mode) != stat.S_IMODE(d.st_mode) and not stat.S_ISLNK(s.st_mode):
            bad(rel, "mode %o != %o" % (stat.S_IMODE(s.st_mode), stat.S_IMODE(d.st_mode)))
        if (s.st_uid, s.st_gid) != (d.st_uid, d.st_gid):
            bad(rel, "owner %d:%d != %d:%d" % (s.st_uid, s.st_gid, d.st_uid, d.st_gid))
        if s.st_mtime_ns != d.st_mtime_ns:
            bad(rel, "mtime %d != %d" % (s.st_mtime_ns, d.st_mtime_ns))
        if stat.S_ISLNK(s.st_mode):
            if s.st_size != d.st_size or starget != dtarget:
                bad(rel, "symlink target %r != %r (length %d != %d)"
                    % (starget, dtarget, s.st_size, d.st_size))
        elif stat.S_ISREG(s.st_mode):
            if s.st_size != d.st_size:
                bad(rel, "size %d != %d" % (s.st_size, d.st_size))
            elif not args.no_content:
                key = (s.st_ino, d.st_ino)
                if key not in content_done:
                    content_done[key] = same_bytes(os.path.join(args.src, rel),
                                                   os.path.join(args.dst, rel))
                if not content_done[key]:
                    bad(rel, "content differs")
            if s.st_nlink != d.st_nlink:
                bad(rel, "nlink %d != %d" % (s.st_nlink, d.st_nlink))
            s2d.setdefault(s.st_ino, set()).add(d.st_ino)
            d2s.setdefault(d.st_ino, set()).add(s.st_ino)
        elif stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode):
            if s.st_rdev != d.st_rdev:
                bad(rel, "rdev %x != %x" % (s.st_rdev, d.st_rdev))
        sx = xattr_map(os.path.join(args.src, rel))
        dx = xattr_map(os.path.join(args.dst, rel))
        if rel == "." and args.ignore_root_xattr:
            sx.pop(args.ignore_root_xattr, None)
            dx.pop(args.ignore_root_xattr, None)
        if sx != dx:
            keys = sorted(set(sx) ^ set(dx) | {k for k in set(sx) & set(dx) if sx[k] != dx[k]})
            bad(rel, "xattrs differ (%s)" % ", ".join(keys))
    split = sum(1 for v in s2d.values() if len(v) > 1)
    merged = sum(1 for v in d2s.values() if len(v) > 1)
    if split or merged:
        problems.append("hardlinks: %d source groups split, %d DST inodes merge source inodes"
                        % (split, merged))
    nfiles = sum(1 for s, _ in src.values() if stat.S_ISREG(s.st_mode))
    groups = len(s2d)
    summary = "entries=%d files=%d inodes=%d content=%s symlink-targets=%s" % (
        len(src) - 1, nfiles, groups, "not-checked" if args.no_content else "checked",
        "length-only" if args.keep_atimes else "checked")
    if problems:
        print("MISMATCH %s; %d difference(s): %s%s" % (
            summary, len(problems), "; ".join(problems[:10]),
            " ..." if len(problems) > 10 else ""))
        sys.exit(1)
    print("OK %s" % summary)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("mutate", "prep"):
        p = sub.add_parser(name)
        p.add_argument("root")
        p.add_argument("--seed", required=True)
        p.add_argument("--fraction", type=float, default=0.01)
    p = sub.add_parser("warm")
    p.add_argument("roots", nargs="*")
    p.add_argument("--data", action="append", default=[], metavar="ROOT")
    p = sub.add_parser("check")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--ignore-root-xattr", metavar="NAME")
    p.add_argument("--no-content", action="store_true")
    p.add_argument("--keep-atimes", action="store_true")
    args = ap.parse_args()
    os.umask(0o022)
    {"mutate": cmd_mutate, "prep": cmd_prep, "warm": cmd_warm, "check": cmd_check}[args.cmd](args)


if __name__ == "__main__":
    main()
