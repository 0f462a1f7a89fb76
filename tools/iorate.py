#!/usr/bin/env python3
"""Sample a process's I/O counters (/proc/PID/io) at a fixed interval and analyse the rate.

Usage:
  iorate.py sample PID OUT.csv [--interval 0.01] [--meta META.json]
  iorate.py run OUT.csv [--interval 0.01] [--meta META.json] -- CMD [ARG...]
  iorate.py analyse OUT.csv --limit RATE [--window 0.1] [--metric write_bytes]
                    [--avg-tol 5] [--max-window 1.5] [--edge 64K] [--json]

sample   samples the running process PID until it exits. /proc/PID/io is kept open, so the
         numbers always belong to that process (a reaped PID gives ESRCH, never a new process
         that reused the number), and its exit is seen at once through a pidfd. The final
         counters are read if the process is still a zombie then (if its parent reaps it first,
         the last sample is at most one interval old).
run      starts CMD itself (stdin, stdout and stderr inherited), samples it the same way and, as
         its parent, reads the exact final counters from the zombie before reaping it
         (waitid WNOWAIT). Exits with CMD's exit status (128+N for signal N). Time 0 is just
         before the fork.
analyse  reads such a CSV and prints the average rate and the 100 ms window statistics of one
         counter against a limit; exit status 1 if a target is missed (average not within
         ±AVG_TOL % of the limit, or a window above MAX_WINDOW x the limit), 2 on bad input.

RATE and --limit: bytes per second, optional K/M/G/T suffix in powers of 1024 (50M =
52,428,800 B/s).

CSV columns: t (seconds since time 0, time.monotonic, midpoint of the read), then the
/proc/PID/io fields read_bytes, write_bytes, rchar, wchar, syscr, syscw,
cancelled_write_bytes. /proc/PID/io (the tgid file) is the whole process: the live threads
(io_uring's iou-wrk / iou-sqp workers are threads of the process) plus every thread that
already exited. --meta writes a JSON with pid, command, interval, sample count, wall time and
exit status.

What the counters mean (Linux; checked on 6.18 with tools/bwlimit-check.sh's notes):
  rchar/wchar      bytes passed to read/write-family syscalls (read, pread, readv, write,
                   sendfile, splice, copy_file_range); io_uring reads/writes don't add to them
  read_bytes       bytes of block-layer reads this process submitted (submit_bio): page-cache
                   misses incl. readahead and metadata; 0 for data already cached
  write_bytes      bytes of page-cache pages this process dirtied (counted when the page turns
                   dirty, not when it reaches the disk), plus O_DIRECT writes at submission;
                   buffered writes through io_uring and copy_file_range's in-kernel copy count
  cancelled_write_bytes  (kernel: dirty pages this process truncated before writeback; unused here)

Analysis (analyse):
  first byte  midpoint between the last sample with the counter at most EDGE (64 KiB) above its
              initial value and the next one; last byte: midpoint between the last sample more
              than EDGE below the final value and the next one (EDGE keeps a few metadata pages
              dirtied before the data starts or after it ends from stretching the span)
  average     bytes between those two samples / (last byte - first byte)
  windows     from every sample i to the first sample j with t_j >= t_i + WINDOW:
              (c_j - c_i) / (t_j - t_i); past the last sample the counter stays at its final
              value (the process is gone), so a window running off the end is
              (c_end - c_i) / WINDOW. max: over every window that ends after the first byte;
              p50/p99 (linear interpolation): over the windows starting from the last
              sample before the first byte to the last sample before the last byte.
"""

import argparse
import bisect
import csv
import json
import math
import os
import re
import select
import subprocess
import sys
import time

FIELDS = ["read_bytes", "write_bytes", "rchar", "wchar", "syscr", "syscw", "cancelled_write_bytes"]
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_rate(s):
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?(?:/s)?\s*", s, re.I)
    if not m:
        raise argparse.ArgumentTypeError("not a rate: %r (bytes per second, K/M/G/T suffix)" % s)
    v = float(m.group(1)) * UNITS[m.group(2).upper()]
    if v <= 0:
        raise argparse.ArgumentTypeError("rate must be positive")
    return v


def read_io(fd):
    """One parse of /proc/PID/io through an open fd; None once the process is reaped."""
    try:
        data = os.pread(fd, 4096, 0)
    except ProcessLookupError:
        return None
    except OSError as e:  # ESRCH shows up as ProcessLookupError; anything else is real
        if e.errno in (3,):
            return None
        raise
    vals = {}
    for line in data.decode().splitlines():
        k, _, v = line.partition(":")
        vals[k.strip()] = int(v)
    if not vals:
        return None
    return vals


class Sampler:
    def __init__(self, pid, interval, t0):
        self.pid = pid
        self.interval = interval
        self.t0 = t0
        self.rows = []
        self.fd = os.open("/proc/%d/io" % pid, os.O_RDONLY)
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            self.pidfd = None

    def sample(self):
        a = time.monotonic()
        v = read_io(self.fd)
        b = time.monotonic()
        if v is None:
            return False
        self.rows.append([(a + b) / 2 - self.t0] + [v.get(f, 0) for f in FIELDS])
        return True

    def loop(self, exited_check=None):
        """Sample until the process has exited (then once more, for the final counters)."""
        k = 0
        while True:
            if not self.sample():
                return
            if self.pidfd is None and exited_check is None and not os.path.exists("/proc/%d" % self.pid):
                return
            k += 1
            nxt = self.t0 + k * self.interval
            now = time.monotonic()
            if nxt <= now:  # fell behind (busy CPU): skip the missed slots, keep the grid
                k = math.floor((now - self.t0) / self.interval) + 1
                nxt = self.t0 + k * self.interval
            if self.pidfd is not None:
                r, _, _ = select.select([self.pidfd], [], [], max(0.0, nxt - time.monotonic()))
                if r:
                    self.sample()  # final counters (zombie), if still there
                    return
            else:
                time.sleep(max(0.0, nxt - time.monotonic()))
                if exited_check is not None and exited_check():
                    self.sample()
                    return

    def close(self):
        os.close(self.fd)
        if self.pidfd is not None:
            os.close(self.pidfd)

    def write_csv(self, path):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t"] + FIELDS)
            for r in self.rows:
                w.writerow(["%.6f" % r[0]] + r[1:])


def write_meta(path, meta):
    if path:
        with open(path, "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")


def cmd_sample(args):
    t0 = time.monotonic()
    try:
        s = Sampler(args.pid, args.interval, t0)
    except FileNotFoundError:
        sys.exit("iorate: no process %d" % args.pid)
    s.loop()
    s.close()
    s.write_csv(args.out)
    wall = s.rows[-1][0] if s.rows else 0.0
    write_meta(args.meta, dict(pid=args.pid, mode="sample", interval=args.interval,
                               samples=len(s.rows), wall_s=round(wall, 6), exit_status=None))
    return 0


def cmd_run(args):
    cmd = args.cmd
    if not cmd:
        sys.exit("iorate: run: no command given")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd)
    try:
        s = Sampler(p.pid, args.interval, t0)
    except FileNotFoundError:  # can't happen before we reap it, but be explicit
        p.wait()
        sys.exit("iorate: child vanished")

    def exited():
        try:
            return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    # As the parent, nobody else reaps the child: when the pidfd says it exited, the zombie is
    # still there and the final sample is exact.
    s.loop(exited_check=exited)
    rc = p.wait()
    t_end = time.monotonic() - t0
    s.close()
    s.write_csv(args.out)
    status = rc if rc >= 0 else 128 - rc
    write_meta(args.meta, dict(pid=p.pid, mode="run", command=cmd, interval=args.interval,
                               samples=len(s.rows), wall_s=round(t_end, 6), exit_status=status))
    return status


def load(path):
    rows = []
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        for d in r:
            rows.append(d)
    if len(rows) < 2:
        raise ValueError("%s: fewer than 2 samples" % path)
    return rows


def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    x = (len(sorted_vals) - 1) * q
    lo = math.floor(x)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (x - lo)


def analyse(rows, metric, limit, window, edge=64 << 10):
    t = [float(r["t"]) for r in rows]
    c = [int(r[metric]) for r in rows]
    n = len(t)
    gaps = sorted(t[i + 1] - t[i] for i in range(n - 1))
    res = dict(metric=metric, limit=limit, window=window, samples=n, wall_s=t[-1],
               interval_median_s=percentile(gaps, 0.5), interval_p99_s=percentile(gaps, 0.99),
               interval_max_s=gaps[-1] if gaps else None)
    base, final = c[0], c[-1]
    total = final - base
    res["total_bytes"] = total
    if total <= 0:
        res.update(avg_rate=None, avg_err_pct=None, max_window_rate=None, max_window_x=None,
                   p99_window_x=None, p50_window_x=None, pass_avg=False, pass_max=False)
        return res
    # A few metadata pages dirtied before the data starts or after it ends (target directory
    # created, directory times set at the end) must not stretch the span: the edges are where
    # the counter first gets more than EDGE above its initial value and first gets within
    # EDGE of its final value.
    e = min(edge, total // 4)
    f = next(i for i in range(n) if c[i] - base > e)  # first sample with data
    l = next(i for i in range(n) if final - c[i] <= e)  # first sample at (about) the final value
    l = max(l, f)
    t_first = (t[f - 1] + t[f]) / 2
    t_last = (t[l - 1] + t[l]) / 2
    span = t_last - t_first
    moved = c[l] - c[f - 1]
    if span <= 0:  # everything within one sampling interval: no rate to speak of
        res.update(avg_rate=None, avg_err_pct=None, max_window_rate=None, max_window_x=None,
                   p99_window_x=None, p50_window_x=None, pass_avg=False, pass_max=False)
        return res
    avg = moved / span
    res.update(edge_bytes=e, bytes_before_first=c[f - 1] - base, bytes_after_last=final - c[l],
               first_byte_s=t_first, last_byte_s=t_last, span_s=span, avg_rate=avg,
               avg_err_pct=(avg / limit - 1) * 100,
               # bounds from the sample times themselves (no midpoints): outer <= avg <= inner
               avg_rate_outer=moved / (t[l] - t[f - 1]),
               avg_rate_inner=(c[l - 1] - c[f]) / (t[l - 1] - t[f]) if l - 1 > f else None,
               avg_rate_wall=total / t[-1])

    def win(i):
        j = bisect.bisect_left(t, t[i] + window, lo=i + 1)
        if j < n:
            return (c[j] - c[i]) / (t[j] - t[i]), t[j] - t[i]
        return (final - c[i]) / window, window

    allw = []  # (rate, start index, length)
    for i in range(n):
        if t[i] >= t_last:
            break
        r, d = win(i)
        j_end = t[i] + d
        if j_end > t[f - 1]:  # window ends after the first byte
            allw.append((r, i, d))
    active = sorted(r for r, i, d in allw if f - 1 <= i < l)
    best = max(allw)
    lens = sorted(d for r, i, d in allw if f - 1 <= i < l)
    res.update(max_window_rate=best[0], max_window_x=best[0] / limit,
               max_window_at_s=t[best[1]], max_window_from_first_byte_s=t[best[1]] - t_first,
               max_window_len_s=best[2],
               p99_window_x=percentile(active, 0.99) / limit,
               p50_window_x=percentile(active, 0.5) / limit,
               # min: only windows inside [first byte, last byte]
               min_window_x=min([r for r, i, d in allw if t[i] >= t_first and t[i] + d <= t_last]
                                or [active[0]]) / limit,
               windows=len(active), window_len_max_s=lens[-1])
    # largest increase between two consecutive samples (a burst), in bytes and in ms of limit
    k = max(range(1, n), key=lambda i: c[i] - c[i - 1])
    res.update(max_step_bytes=c[k] - c[k - 1], max_step_at_s=t[k], max_step_ms_of_limit=1e3 * (c[k] - c[k - 1]) / limit)
    # the window from the last sample before the first byte (start burst or slow start)
    res["first_window_x"] = win(f - 1)[0] / limit
    # per-second bins from the first byte: bytes in [t_first + k, t_first + k + 1) / limit
    bins = []
    k = 0
    while t_first + k + 0.5 <= t_last:  # a last bin under 0.5 s is left out
        a, b = t_first + k, min(t_first + k + 1, t_last)
        bins.append(round((interp(t, c, b) - interp(t, c, a)) / (b - a) / limit, 3))
        k += 1
    res["per_second_x"] = bins
    return res


def interp(t, c, x):
    """Counter value at time x, linear between samples."""
    if x <= t[0]:
        return c[0]
    if x >= t[-1]:
        return c[-1]
    j = bisect.bisect_left(t, x)
    i = j - 1
    return c[i] + (c[j] - c[i]) * (x - t[i]) / (t[j] - t[i])


def fmt_rate(b):
    return "-" if b is None else "%.2f MiB/s" % (b / (1 << 20))


def cmd_analyse(args):
    try:
        rows = load(args.csv)
    except (OSError, ValueError) as e:
        print("iorate: %s" % e, file=sys.stderr)
        return 2
    if args.metric not in rows[0]:
        print("iorate: no column %r in %s" % (args.metric, args.csv), file=sys.stderr)
        return 2
    res = analyse(rows, args.metric, args.limit, args.window, args.edge)
    others = {}
    for m in FIELDS[:4]:
        if m != args.metric and m in rows[0]:
            o = analyse(rows, m, args.limit, args.window, args.edge)
            others[m] = {k: o.get(k) for k in ("total_bytes", "avg_rate", "avg_err_pct", "max_window_x", "p99_window_x",
                                               "max_step_bytes")}
    res["other_counters"] = others
    ok_avg = res["avg_rate"] is not None and abs(res["avg_err_pct"]) <= args.avg_tol
    ok_max = res["max_window_x"] is not None and res["max_window_x"] <= args.max_window
    res.update(pass_avg=ok_avg, pass_max=ok_max, avg_tol_pct=args.avg_tol, max_window_target_x=args.max_window)
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
    else:
        print("%s: %d samples over %.3f s (interval median %.1f ms, p99 %.1f ms, max %.1f ms)" % (
            args.csv, res["samples"], res["wall_s"], 1e3 * res["interval_median_s"],
            1e3 * res["interval_p99_s"], 1e3 * res["interval_max_s"]))
        print("limit %s (%.0f B/s); counter %s: %d bytes" % (fmt_rate(args.limit), args.limit, args.metric, res["total_bytes"]))
        if res["avg_rate"] is None:
            print("no %s increase: nothing to analyse" % args.metric)
        else:
            print("first byte %.3f s, last byte %.3f s, span %.3f s (%d bytes before the first byte, %d after the last, "
                  "edge %d)" % (res["first_byte_s"], res["last_byte_s"], res["span_s"], res["bytes_before_first"],
                                res["bytes_after_last"], res["edge_bytes"]))
            print("average %s = %+.2f%% vs limit (target ±%g%%): %s" % (
                fmt_rate(res["avg_rate"]), res["avg_err_pct"], args.avg_tol, "PASS" if ok_avg else "FAIL"))
            print("%g ms windows: max %.3fx at %.3f s (%.3f s after the first byte, %.1f ms long), "
                  "p99 %.3fx, median %.3fx, min %.3fx; target max <= %gx: %s" % (
                      1e3 * args.window, res["max_window_x"], res["max_window_at_s"],
                      res["max_window_from_first_byte_s"], 1e3 * res["max_window_len_s"],
                      res["p99_window_x"], res["p50_window_x"], res["min_window_x"], args.max_window,
                      "PASS" if ok_max else "FAIL"))
            print("largest step between two samples: %d bytes (%.1f ms of limit) at %.3f s" % (
                res["max_step_bytes"], res["max_step_ms_of_limit"], res["max_step_at_s"]))
            print("per second from the first byte (x limit): %s" % " ".join("%.2f" % b for b in res["per_second_x"]))
            for m, o in others.items():
                if o["avg_rate"] is None:
                    print("  %-11s total %d" % (m, o["total_bytes"]))
                else:
                    print("  %-11s total %d, average %s (%+.2f%%), max window %.3fx, p99 %.3fx" % (
                        m, o["total_bytes"], fmt_rate(o["avg_rate"]), o["avg_err_pct"], o["max_window_x"], o["p99_window_x"]))
    return 0 if ok_avg and ok_max else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd_name", required=True)
    p = sub.add_parser("sample", help="sample a running PID until it exits")
    p.add_argument("pid", type=int)
    p.add_argument("out")
    p.add_argument("--interval", type=float, default=0.01, help="seconds between samples (default 0.01)")
    p.add_argument("--meta", help="also write a JSON summary (pid, samples, wall time)")
    p = sub.add_parser("run", help="start CMD and sample it until it exits; exits with its status")
    p.add_argument("out")
    p.add_argument("--interval", type=float, default=0.01, help="seconds between samples (default 0.01)")
    p.add_argument("--meta", help="also write a JSON summary (pid, command, samples, wall time, exit status)")
    p.add_argument("cmd", nargs="*", metavar="-- CMD [ARG...]", help="the command (after --)")
    p = sub.add_parser("analyse", aliases=["analyze"], help="average and window rates of a sample CSV")
    p.add_argument("csv")
    p.add_argument("--limit", type=parse_rate, required=True, help="bytes/s, K/M/G suffix = powers of 1024")
    p.add_argument("--window", type=float, default=0.1, help="window length in seconds (default 0.1)")
    p.add_argument("--metric", default="write_bytes", choices=FIELDS[:4], help="counter to judge (default write_bytes)")
    p.add_argument("--avg-tol", type=float, default=5.0, help="allowed average error, %% (default 5)")
    p.add_argument("--max-window", type=float, default=1.5, help="allowed max window, x limit (default 1.5)")
    p.add_argument("--edge", type=parse_rate, default=64 << 10,
                   help="bytes ignored at the start and the end when finding the first and last byte "
                        "(metadata pages; default 64K)")
    p.add_argument("--json", action="store_true", help="print the analysis as JSON")
    argv = sys.argv[1:]
    cmd = None
    if argv and argv[0] == "run" and "--" in argv:  # everything after -- is the command
        k = argv.index("--")
        argv, cmd = argv[:k], argv[k + 1:]
    args = ap.parse_args(argv)
    if cmd is not None:
        args.cmd = cmd
    if getattr(args, "interval", 1) <= 0:
        ap.error("--interval must be positive")
    if args.cmd_name == "sample":
        return cmd_sample(args)
    if args.cmd_name == "run":
        return cmd_run(args)
    return cmd_analyse(args)


if __name__ == "__main__":
    sys.exit(main())
