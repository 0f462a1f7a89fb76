#!/usr/bin/env python3
"""Compare a copied tree against its source; used by tools/bench-copy.sh.

Usage: treecmp.py SRC DST [--no-content]

Prints one line of the form
  OK|MISMATCH; entries=...; content=...; mode=...; mtime=...; owner=...;
  symlinks=...; hardlinks=...; xattrs=...
and exits 0 when every entry exists in DST with the same type, size, content
(byte-for-byte unless --no-content) and symlink target, 1 otherwise.
Metadata fidelity (mode, mtime, ownership, hardlink sharing, user xattrs) is
reported but does not make the exit status non-zero: peers legitimately differ
there, and the point is to document what each tool preserves.
"""

import os
import stat
import sys


def walk(root):
    """Yield paths relative to root (root itself excluded), without following symlinks."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            yield name if rel == "." else os.path.join(rel, name)


def same_content(a, b, chunk=1 << 20):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(chunk)
            y = fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


def xattrs(path):
    try:
        return {k: os.getxattr(path, k, follow_symlinks=False)
                for k in os.listxattr(path, follow_symlinks=False) if k.startswith("user.")}
    except OSError:
        return {}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    content = "--no-content" not in sys.argv
    if len(args) != 2:
        sys.exit(__doc__)
    src, dst = args

    missing = wrong_type = bad_content = bad_link = 0
    n = 0
    mode_ok = owner_ok = 0
    # mtime fidelity per entry type: [count, exact-ns matches, whole-second matches]
    mt = {"file": [0, 0, 0], "dir": [0, 0, 0], "symlink": [0, 0, 0]}
    nfiles = nsyms = 0
    groups = {}  # src (dev, ino) -> set of dst inodes, for multiply-linked files
    xa_total = xa_ok = 0
    for rel in walk(src):
        n += 1
        s = os.lstat(os.path.join(src, rel))
        try:
            d = os.lstat(os.path.join(dst, rel))
        except FileNotFoundError:
            missing += 1
            continue
        if stat.S_IFMT(s.st_mode) != stat.S_IFMT(d.st_mode):
            wrong_type += 1
            continue
        if stat.S_IMODE(s.st_mode) == stat.S_IMODE(d.st_mode):
            mode_ok += 1
        kind = ("symlink" if stat.S_ISLNK(s.st_mode) else
                "dir" if stat.S_ISDIR(s.st_mode) else "file")
        m = mt[kind]
        m[0] += 1
        m[1] += s.st_mtime_ns == d.st_mtime_ns
        m[2] += s.st_mtime_ns // 10**9 == d.st_mtime_ns // 10**9
        if (s.st_uid, s.st_gid) == (d.st_uid, d.st_gid):
            owner_ok += 1
        if stat.S_ISLNK(s.st_mode):
            nsyms += 1
            if os.readlink(os.path.join(src, rel)) != os.readlink(os.path.join(dst, rel)):
                bad_link += 1
        elif stat.S_ISREG(s.st_mode):
            nfiles += 1
            if s.st_size != d.st_size or (
                    content and not same_content(os.path.join(src, rel), os.path.join(dst, rel))):
                bad_content += 1
            if s.st_nlink > 1:
                groups.setdefault((s.st_dev, s.st_ino), set()).add(d.st_ino)
            sx = xattrs(os.path.join(src, rel))
            if sx:
                xa_total += 1
                if xattrs(os.path.join(dst, rel)) == sx:
                    xa_ok += 1

    extra = sum(1 for _ in walk(dst)) - (n - missing)
    hl_groups = len(groups)
    hl_kept = sum(1 for v in groups.values() if len(v) == 1)
    ok = not (missing or wrong_type or bad_content or bad_link or extra)
    cnt = n - missing - wrong_type
    # Whole-second-only matches (e.g. a tool that truncates to seconds) are flagged.
    trunc = sum(v[2] - v[1] for v in mt.values())

    def frac(k, tot):
        return "all" if k == tot else ("none" if k == 0 else "%d/%d" % (k, tot))

    parts = [
        "OK" if ok else "MISMATCH",
        "entries=%d%s%s%s" % (n, " missing=%d" % missing if missing else "",
                              " extra=%d" % extra if extra else "",
                              " wrong-type=%d" % wrong_type if wrong_type else ""),
        "content=%s" % ("not-checked" if not content else
                        ("ok" if not bad_content else "%d-differ" % bad_content)),
        "mode=%s" % frac(mode_ok, cnt),
        "mtime(ns)=%s" % ",".join("%s:%s" % (k, frac(v[1], v[0])) for k, v in mt.items() if v[0]),
        "owner=%s" % frac(owner_ok, cnt),
    ]
    if trunc:
        parts.insert(5, "mtime-truncated-to-s=%d" % trunc)
    if nsyms:
        parts.append("symlinks=%s" % ("ok" if not bad_link else "%d-differ" % bad_link))
    if hl_groups:
        parts.append("hardlinks=%s" % frac(hl_kept, hl_groups))
    if xa_total:
        parts.append("xattrs=%s" % frac(xa_ok, xa_total))
    print("; ".join(parts))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
