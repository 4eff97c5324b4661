#!/usr/bin/env python3
"""Where a gateway event's time goes before its `ack` is written.

Reads `perf script` output of the server's own system calls during an ack
run and splits the time from reading a gateway frame to writing the next
ack after it into four legs:

- read -> commit write: the frame is decoded, routed by its shard (offers
  written first), handed to a journal lane, and the lane's commit starts
  writing WAL frames (its first `pwrite64` on the `-wal` file);
- write -> sync: SQLite finishes the commit and the lane calls `fdatasync`;
- sync: the `fdatasync` itself (the disk);
- sync -> ack write: the lane publishes the durable position, the
  gateway's writer task wakes and writes the ack (`sendto`).

    perf record -p PID -o legs.data \\
        -e syscalls:sys_enter_recvfrom -e syscalls:sys_exit_recvfrom \\
        -e syscalls:sys_enter_sendto -e syscalls:sys_enter_pwrite64 \\
        -e syscalls:sys_enter_fdatasync -e syscalls:sys_exit_fdatasync \\
        -- sleep 10
    perf script -i legs.data -F comm,pid,tid,time,event,trace > legs.txt
    python3 loadtest/scripts/ack_legs.py legs.txt

PID is the server's (with `run --spawn-server`, `pgrep -f 'ringline serve'`
once the run has started). The gateway socket is the one that read the
most frames longer than a pong; the WAL is the file the `ringline-store-N`
threads write most; a commit is a lane's writes up to its `fdatasync`.

The trace does not say which commit carried which event, so each frame
is charged to the first commit that starts writing after it was read. A
frame whose shard had not handed it over by then went into a later
commit: its wait for that commit shows in "sync -> ack write", which is
why that leg's tail is long. The legs' sum is the server's part of the
ack latency only (the harness's figure adds both trips over loopback),
and a batched read or write counts once. The last line is every commit's
`fdatasync` during the trace: the disk under the run's load, to set
against `sync_probe.py alone` (the disk by itself).
"""
import bisect
import collections
import sys

from perf_trace import field, pct, read, ret

LEGS = ["total", "read -> commit write", "write -> sync", "sync", "sync -> ack write"]


def gateway_reads(ev):
    """(time, fd) of every read longer than a pong (6 bytes)."""
    open_fd = {}
    out = []
    for e in ev:
        if e.event == "sys_enter_recvfrom":
            open_fd[e.tid] = field(e.rest, "fd")
        elif e.event == "sys_exit_recvfrom" and e.tid in open_fd:
            fd = open_fd.pop(e.tid)
            if ret(e.rest) > 6 and fd is not None:
                out.append((e.t, fd))
    return out


def commits(ev):
    """(first WAL write, fdatasync entered, fdatasync returned) of each
    lane's commit, in order of their first write."""
    lanes = [e for e in ev if e.comm.startswith("ringline-store")]
    writes = collections.Counter(field(e.rest, "fd") for e in lanes if e.event == "sys_enter_pwrite64")
    if not writes:
        sys.exit("ack_legs.py: no pwrite64 by a ringline-store thread (record sys_enter_pwrite64, script -F comm,...)")
    wal = writes.most_common(1)[0][0]
    first, entered, out = {}, {}, []
    for e in lanes:
        if e.event == "sys_enter_pwrite64" and field(e.rest, "fd") == wal:
            first.setdefault(e.tid, e.t)
        elif e.event == "sys_enter_fdatasync":
            entered[e.tid] = e.t
        elif e.event == "sys_exit_fdatasync" and e.tid in entered and e.tid in first:
            out.append((first.pop(e.tid), entered.pop(e.tid), e.t))
    out.sort()
    return out


def legs(reads, acks, done):
    """Per gateway read: its total and its four legs, in microseconds."""
    starts = [c[0] for c in done]
    rows = []
    for t in reads:
        i = bisect.bisect_right(starts, t)
        if i == len(done):
            break
        write, enter, back = done[i]
        j = bisect.bisect_right(acks, back)
        if j == len(acks):
            break
        rows.append((acks[j] - t, write - t, enter - write, back - enter, acks[j] - back))
    return rows


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: ack_legs.py PERF_SCRIPT_OUTPUT")
    ev = read(sys.argv[1], "ack_legs.py")
    got = gateway_reads(ev)
    if not got:
        sys.exit("ack_legs.py: no recvfrom with its fd in the trace (record sys_enter_recvfrom too)")
    gateway = collections.Counter(fd for _, fd in got).most_common(1)[0][0]
    reads = [t for t, fd in got if fd == gateway]
    # A 2-byte frame is a keep-alive ping, not an ack.
    acks = [e.t for e in ev if e.event == "sys_enter_sendto" and field(e.rest, "fd") == gateway and field(e.rest, "len") > 2]
    done = commits(ev)
    rows = legs(reads, acks, done)
    if not rows:
        sys.exit("ack_legs.py: no gateway read was followed by a commit and an ack")
    seconds = (ev[-1].t - ev[0].t) / 1e6
    print(
        "gateway fd %d: %d reads, %d ack writes; %d commits (%.0f/s)" % (gateway, len(reads), len(acks), len(done), len(done) / seconds)
    )
    print("%-22s %8s %8s %8s %8s" % ("leg (us)", "p50", "p90", "p99", "mean"))
    for k, name in enumerate(LEGS):
        v = sorted(r[k] for r in rows)
        print("%-22s %8.0f %8.0f %8.0f %8.0f" % (name, pct(v, 0.5), pct(v, 0.9), pct(v, 0.99), sum(v) / len(v)))
    rows.sort()
    top = rows[-max(1, len(rows) // 100) :]
    print(
        "slowest 1%% (%d), mean: " % len(top)
        + ", ".join("%s %.0f" % (name, sum(r[k] for r in top) / len(top)) for k, name in enumerate(LEGS))
    )
    syncs = sorted(back - enter for _, enter, back in done)
    print(
        "every commit's fdatasync: p50 %.0f p90 %.0f p99 %.0f p99.9 %.0f us"
        % (pct(syncs, 0.5), pct(syncs, 0.9), pct(syncs, 0.99), pct(syncs, 0.999))
    )


if __name__ == "__main__":
    main()
