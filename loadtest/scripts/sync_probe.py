#!/usr/bin/env python3
"""The disk's bare sync latency, to read the journal's figures against.

Writes one 4 KiB page and calls fdatasync, 3,000 times, 0.5 ms apart, on a
2 MiB preallocated file in DIR (default: the current directory), and prints
p50 / p90 / p99 / p99.9 in microseconds. `alone` is that loop by itself;
`two` adds a second thread syncing another file without pause, `same` one
syncing the same file (how concurrent syncs share the disk).

    python3 loadtest/scripts/sync_probe.py alone [DIR]
"""
import os
import sys
import threading
import time

N = 3000


def lat(fd, buf, off, out, n, gap):
    for i in range(n):
        t = time.perf_counter()
        os.pwrite(fd, buf, off + (i % 256) * 4096)
        os.fdatasync(fd)
        out.append(time.perf_counter() - t)
        if gap:
            time.sleep(gap)


def pct(a, p):
    a = sorted(a)
    return a[int(len(a) * p)] * 1e6


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "alone"
    if mode not in ("alone", "two", "same"):
        sys.exit("usage: sync_probe.py alone|two|same [DIR]")
    d = sys.argv[2] if len(sys.argv) > 2 else "."
    buf = b"x" * 4096
    paths = [os.path.join(d, "sync_probe_a"), os.path.join(d, "sync_probe_b")]
    fa = os.open(paths[0], os.O_RDWR | os.O_CREAT)
    os.pwrite(fa, b"\0" * (1 << 21), 0)
    os.fsync(fa)
    fb = os.open(paths[1], os.O_RDWR | os.O_CREAT)
    os.pwrite(fb, b"\0" * (1 << 21), 0)
    os.fsync(fb)
    a, b = [], []
    if mode == "alone":
        lat(fa, buf, 0, a, N, 0.0005)
    else:
        other = fb if mode == "two" else fa
        stop = False

        def bg():
            while not stop:
                os.pwrite(other, buf, 1 << 20)
                os.fdatasync(other)
                b.append(1)

        th = threading.Thread(target=bg)
        th.start()
        lat(fa, buf, 0, a, N, 0.0005)
        stop = True
        th.join()
    for p in paths:
        os.unlink(p)
    print(
        mode,
        "p50 %.0f p90 %.0f p99 %.0f p999 %.0f us; bg syncs %d"
        % (pct(a, 0.5), pct(a, 0.9), pct(a, 0.99), pct(a, 0.999), len(b)),
    )


if __name__ == "__main__":
    main()
