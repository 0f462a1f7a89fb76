#!/usr/bin/env python3
"""Floor of a small-file tree copy on this machine (issue 15, goal 2): the fewest syscalls a
copy of SRC into a fresh DST can make, spread over N processes (one per core), then syncfs.

Per file: open SRC file, read it whole, open DST O_CREAT|O_EXCL with its mode, write, futimens
(mtime), close both; per directory: mkdir. No owner, xattrs, holes or hardlinks (less than
any exact copy does). Prints: copy wall time, syncfs wall time, and the children's user and
system CPU seconds (the kernel's share is the floor; Python's user time is not).

usage: floor-small.py SRC DST [NPROC]"""
import ctypes
import os
import sys
import time


def copy_part(src, dst, part, nproc):
    dirs = sorted(d for d in os.listdir(src))
    for k, d in enumerate(dirs):
        if k % nproc != part:
            continue
        s, t = os.path.join(src, d), os.path.join(dst, d)
        if not os.path.isdir(s):
            continue
        os.mkdir(t)
        for name in os.listdir(s):
            sp, tp = os.path.join(s, name), os.path.join(t, name)
            fi = os.open(sp, os.O_RDONLY | os.O_NOFOLLOW)
            st = os.fstat(fi)
            data = os.read(fi, st.st_size + 1)
            fo = os.open(tp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o7777)
            os.write(fo, data)
            os.utime(fo, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.close(fo)
            os.close(fi)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    nproc = int(sys.argv[3]) if len(sys.argv) > 3 else os.cpu_count()
    os.mkdir(dst)
    t0 = time.monotonic()
    kids = []
    for part in range(nproc):
        pid = os.fork()
        if pid == 0:
            copy_part(src, dst, part, nproc)
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        _, status = os.waitpid(pid, 0)
        assert status == 0, "a copier failed"
    t1 = time.monotonic()
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    assert libc.syncfs(fd) == 0
    os.close(fd)
    t2 = time.monotonic()
    ru = os.times()
    print(f"copy {t1 - t0:.3f} s  syncfs {t2 - t1:.3f} s  total {t2 - t0:.3f} s  "
          f"children user {ru.children_user:.3f} s  system {ru.children_system:.3f} s")


if __name__ == "__main__":
    main()
