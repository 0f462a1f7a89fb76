#!/usr/bin/env python3
"""Turn the raw CSVs written by tools/bench-copy.sh into markdown tables.

Usage:
  summarize.py --csv RUNS.csv [--sync-csv SYNC.csv] [--verify VERIFY.tsv]
               [--tools "ringsync ringsync-nofsync cp rsync xcp fcp"]
               [--fio-read MBPS --fio-write MBPS --big-bytes N]

RUNS.csv:   tool,dataset,cache,round,seconds   (seconds may be FAILED)
SYNC.csv:   tool,dataset,cache,round,sync_seconds  (the untimed `sync` that
            followed each run; used only for the informational cmd+sync column)
VERIFY.tsv: tool<TAB>dataset<TAB>treecmp summary line

Ratios are median(ringsync variant) / median(fastest peer), where the peers
are cp, rsync, xcp and fcp and a peer with any FAILED run is not eligible.
"""

import argparse
import csv
import statistics
from collections import defaultdict

RINGSYNC = ["ringsync", "ringsync-nofsync"]
PEERS = ["cp", "rsync", "xcp", "fcp"]
LABEL = {
    "ringsync": "ringsync (default `--fsync end`)",
    "ringsync-nofsync": "ringsync `--fsync none`",
    "cp": "cp -a",
    "rsync": "rsync -aHAX",
    "xcp": "xcp -r -o",
    "fcp": "fcp",
    "floor": "python, fewest syscalls + syncfs (tools/floor-small.py; interpreter-bound: not a floor)",
}
TARGET = 0.7


def fmt(x):
    return "-" if x is None else "%.3f" % x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--sync-csv")
    ap.add_argument("--verify")
    ap.add_argument("--tools", default=" ".join(RINGSYNC + PEERS))
    ap.add_argument("--fio-read", type=float)
    ap.add_argument("--fio-write", type=float)
    ap.add_argument("--big-bytes", type=int)
    a = ap.parse_args()

    tools = a.tools.split()
    ok = defaultdict(list)       # (tool, ds, cache) -> [seconds]
    failed = defaultdict(int)
    total = defaultdict(int)
    order = []                   # (ds, cache) in first-seen order
    with open(a.csv) as f:
        for row in csv.DictReader(f):
            key = (row["tool"], row["dataset"], row["cache"])
            if (row["dataset"], row["cache"]) not in order:
                order.append((row["dataset"], row["cache"]))
            total[key] += 1
            if row["seconds"] == "FAILED":
                failed[key] += 1
            else:
                ok[key].append(float(row["seconds"]))

    with_sync = defaultdict(list)
    if a.sync_csv:
        sync_by_run = {}
        with open(a.sync_csv) as f:
            for row in csv.DictReader(f):
                sync_by_run[(row["tool"], row["dataset"], row["cache"], row["round"])] = \
                    float(row["sync_seconds"])
        with open(a.csv) as f:
            for row in csv.DictReader(f):
                k = (row["tool"], row["dataset"], row["cache"], row["round"])
                if row["seconds"] != "FAILED" and k in sync_by_run:
                    with_sync[k[:3]].append(float(row["seconds"]) + sync_by_run[k])

    verify = {}
    if a.verify:
        with open(a.verify) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 3:
                    verify[(parts[0], parts[1])] = parts[2]

    def med(key):
        return statistics.median(ok[key]) if ok[key] and not failed[key] else None

    summary = []
    print("## Timings (wall-clock seconds of the copy command only)\n")
    for ds, cache in order:
        print("### %s, %s cache\n" % (ds, cache))
        peer_meds = {t: med((t, ds, cache)) for t in PEERS if t in tools}
        eligible = {t: m for t, m in peer_meds.items() if m is not None}
        best = min(eligible, key=eligible.get) if eligible else None
        print("| tool | median | min | max | runs | median cmd+sync | vs fastest peer | <= %.1f | copy check |"
              % TARGET)
        print("|---|---:|---:|---:|---:|---:|---:|:-:|---|")
        for t in tools:
            key = (t, ds, cache)
            if not total[key]:
                continue
            v = verify.get((t, ds), "-")
            check = v.split(";")[0] if v != "-" else "-"
            runs = "%d" % total[key] if not failed[key] else "%d (%d FAILED)" % (total[key], failed[key])
            ws = statistics.median(with_sync[key]) if with_sync[key] and not failed[key] else None
            if failed[key] == total[key]:
                print("| %s | FAILED | FAILED | FAILED | %s | - | - | - | %s |" % (LABEL.get(t, t), runs, check))
                ratio = None
            else:
                xs = ok[key]
                m = statistics.median(xs)
                ratio = None
                rtxt, mark = "-", "-"
                if (t in RINGSYNC or t == "floor") and best is not None:
                    if failed[key]:
                        rtxt, mark = "FAILED", "no"
                    else:
                        ratio = m / eligible[best]
                        rtxt = "%.2f" % ratio
                        mark = "yes" if ratio <= TARGET else "no"
                elif t == best:
                    rtxt = "(fastest peer)"
                mtxt = fmt(m) if not failed[key] else "FAILED"
                print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |"
                      % (LABEL.get(t, t), mtxt, fmt(min(xs)), fmt(max(xs)), runs, fmt(ws), rtxt, mark, check))
            if t in RINGSYNC:
                summary.append((ds, cache, t, ratio, best, failed[key] > 0))
        if best is None:
            print("\nNo peer completed every run; no ratio computed.")
        print()

    if any(t in tools for t in RINGSYNC):
        print("## Ratio summary (median ringsync / median fastest peer; target <= %.1f)\n" % TARGET)
        print("| dataset | cache | variant | fastest peer | ratio | <= %.1f |" % TARGET)
        print("|---|---|---|---|---:|:-:|")
        for ds, cache, t, ratio, best, anyfail in summary:
            r = "FAILED" if anyfail else ("-" if ratio is None else "%.2f" % ratio)
            mark = "-" if ratio is None and not anyfail else ("yes" if ratio is not None and ratio <= TARGET else "no")
            print("| %s | %s | %s | %s | %s | %s |" % (ds, cache, LABEL.get(t, t), best or "-", r, mark))
        print()

    if a.fio_read and a.fio_write:
        bound = min(a.fio_read, a.fio_write)
        print("## Copy bound (fio, concurrent sequential read + write, O_DIRECT)\n")
        print("| fio job | MB/s |")
        print("|---|---:|")
        print("| seq read | %.1f |" % a.fio_read)
        print("| seq write | %.1f |" % a.fio_write)
        print("| **copy bound = min(read, write)** | **%.1f** |" % bound)
        print()
        if a.big_bytes:
            rows = []
            for cache in ("warm", "cold"):
                for t in RINGSYNC:
                    m = med((t, "big", cache))
                    if total[(t, "big", cache)]:
                        rows.append((t, cache, m))
            if rows:
                print("ringsync on `big` (%.2f GiB, %d bytes; MB = 10^6 bytes):\n"
                      % (a.big_bytes / 2**30, a.big_bytes))
                print("| variant | cache | median s | MB/s | % of copy bound |")
                print("|---|---|---:|---:|---:|")
                for t, cache, m in rows:
                    if m is None:
                        print("| %s | %s | FAILED | - | - |" % (LABEL[t], cache))
                    else:
                        mbps = a.big_bytes / m / 1e6
                        print("| %s | %s | %.3f | %.1f | %.0f%% |" % (LABEL[t], cache, m, mbps, 100 * mbps / bound))
                print()

    if verify:
        print("## Copy check (tools/treecmp.py, first run of each tool on each dataset)\n")
        print("Content/type/symlink-target mismatches make a check fail; metadata columns only"
              " document what each tool preserves.\n")
        print("| tool | dataset | result |")
        print("|---|---|---|")
        ds_order = []
        for ds, _ in order:
            if ds not in ds_order:
                ds_order.append(ds)

        def vkey(kv):
            (t, ds), _ = kv
            return (ds_order.index(ds) if ds in ds_order else 99, tools.index(t) if t in tools else 99)

        for (t, ds), line in sorted(verify.items(), key=vkey):
            print("| %s | %s | %s |" % (LABEL.get(t, t), ds, line))
        print()


if __name__ == "__main__":
    main()
