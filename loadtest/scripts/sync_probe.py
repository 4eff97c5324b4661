#!/usr/bin/env python3
"""The disk's bare sync latency, to read the journal's figures against.

Writes one 4 KiB page and calls fdatasync, 3,000 times, 0.5 ms apart, on a
2 MiB preallocated file in DIR (default: the current directory), and prints
p50 / p90 / p99 / p99.9 in microseconds. `alone` is that loop by itself;
`two` adds a second thread syncing another file without pause, `same` one
syncing the same file (how concurrent syncs share the disk).

`stalls` runs the `alone` loop for SECONDS (default 60) instead of 3,000
syncs, at about the journal's commit rate under the 1,000 events/s ack test,
and lists every sync over 25 ms with its offset: the device's own stalls,
with no server running, to read an ack run's slow commits against.

    python3 loadtest/scripts/sync_probe.py alone [DIR]
    python3 loadtest/scripts/sync_probe.py stalls [DIR] [SECONDS]
"""
import os
import sys
import threading
import time

N = 3000


def lat(fd, buf, off, out, n, gap, secs=None, at=None):
    """n syncs, or as many as fit in secs; `at` gets each one's start offset."""
    t0 = time.perf_counter()
    i = 0
    while (i < n) if secs is None else (time.perf_counter() - t0 < secs):
        t = time.perf_counter()
        os.pwrite(fd, buf, off + (i % 256) * 4096)
        os.fdatasync(fd)
        out.append(time.perf_counter() - t)
        if at is not None:
            at.append(t - t0)
        i += 1
        if gap:
            time.sleep(gap)


def stalls(fd, buf, secs):
    took, at = [], []
    lat(fd, buf, 0, took, 0, 0.0005, secs, at)
    slow = ["%.1f s: %.1f ms" % (t, x * 1e3) for t, x in zip(at, took) if x > 0.025]
    print(
        "stalls %d syncs in %.0f s: p50 %.0f p99 %.0f p999 %.0f us, max %.1f ms; over 5 ms %d, over 25 ms %d%s"
        % (
            len(took),
            secs,
            pct(took, 0.5),
            pct(took, 0.99),
            pct(took, 0.999),
            max(took) * 1e3,
            sum(1 for x in took if x > 0.005),
            len(slow),
            (" (" + ", ".join(slow) + ")") if slow else "",
        )
    )


def pct(a, p):
    a = sorted(a)
    return a[int(len(a) * p)] * 1e6


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "alone"
    if mode not in ("alone", "two", "same", "stalls"):
        sys.exit("usage: sync_probe.py alone|two|same [DIR] | stalls [DIR] [SECONDS]")
    d = sys.argv[2] if len(sys.argv) > 2 else "."
    secs = 60.0
    if mode == "stalls" and len(sys.argv) > 3:
        try:
            secs = float(sys.argv[3])
        except ValueError:
            secs = 0.0
        if not secs > 0:
            sys.exit("sync_probe.py stalls: SECONDS must be a positive number, got %r" % sys.argv[3])
    buf = b"x" * 4096
    paths = [os.path.join(d, "sync_probe_a"), os.path.join(d, "sync_probe_b")]
    fa = os.open(paths[0], os.O_RDWR | os.O_CREAT)
    os.pwrite(fa, b"\0" * (1 << 21), 0)
    os.fsync(fa)
    fb = os.open(paths[1], os.O_RDWR | os.O_CREAT)
    os.pwrite(fb, b"\0" * (1 << 21), 0)
    os.fsync(fb)
    a, b = [], []
    if mode == "stalls":
        stalls(fa, buf, secs)
        for p in paths:
            os.unlink(p)
        return
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
