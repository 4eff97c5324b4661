#!/usr/bin/env python3
"""How long the server holds a gateway frame before its first reply goes out.

Reads `perf script` output of the server's recvfrom/sendto tracepoints
(and, optionally, cpu-clock samples) and pairs each frame received on the
gateway's socket with the first message the same thread then sends on
another socket (for a `call.inbound`, the first `offer`). Nothing is
added to the server: the tracepoints are the kernel's, so this measures the
server's own part of the offer latency without the probe effects of
uprobes (which trap on every hit and, on a VM, add 2-30 us each).

    perf record -e syscalls:sys_enter_recvfrom -e syscalls:sys_exit_recvfrom \\
        -e syscalls:sys_enter_sendto -p PID -o path.data -- sleep 25
    perf script -i path.data -F tid,time,event,trace > path.txt
    python3 loadtest/scripts/server_path.py path.txt

It prints one row per (gateway frame length, reply length) seen at least
MIN times: recv-to-send p50 / p90 / p99 in microseconds, and how many of
them made any other system call in between. The gateway socket is the one
that received the most frames longer than a pong (6 bytes).

To see every system call, not only recvfrom and sendto, add
`-e raw_syscalls:sys_enter`; to see whether the thread left the CPU inside
the window, add `-e sched:sched_switch`. A switch-out of the handling
thread counts as off-CPU until that thread's next event; the rows then
also give how many windows had one and the off-CPU time's p50 and max.

With `--profile LEN`, cpu-clock samples taken with the tracepoints
(`-e cpu-clock -F 50000`, after raising kernel.perf_event_max_sample_rate)
are counted by function, but only those on the handling thread between a
gateway frame of LEN bytes and its reply. Sampling that fast slows the
server several-fold, so read the shares, not the times. Start the server
with `huge_code_pages = false` under `[server]` for it: otherwise most of
its code runs from an anonymous mapping that `perf` cannot symbolize
(docs/operations.md).
"""
import collections
import re
import sys

from perf_trace import field, pct, read, ret

MIN = 20


def frames(ev):
    """(index, tid, time, fd, length) of every completed recvfrom."""
    open_fd = {}
    out = []
    for i, e in enumerate(ev):
        if e.event == "sys_enter_recvfrom":
            open_fd[e.tid] = field(e.rest, "fd")
        elif e.event == "sys_exit_recvfrom" and e.tid in open_fd:
            fd = open_fd.pop(e.tid)
            n = ret(e.rest)
            if n > 0 and fd is not None:
                out.append((i, e.tid, e.t, fd, n))
    return out


# recvfrom and sendto: seen through their own tracepoints already.
NAMED = {"44", "45"}
SWITCH_PREV = re.compile(r"prev_pid=(\d+)")


def other_syscall(e):
    """Whether `e` enters a system call the named tracepoints do not show."""
    if e.event == "sys_enter":
        m = re.search(r"NR (\d+)", e.rest)
        return m is None or m[1] not in NAMED
    return e.event.startswith("sys_enter_")


def replies(ev, got, gateway):
    """Per gateway frame: (length, reply length, microseconds, other
    syscalls, start, end index, microseconds off the CPU, switches)."""
    out = []
    for i, tid, t, fd, n in got:
        if fd != gateway:
            continue
        other = 0
        off, left, switches = 0.0, None, 0
        for k in range(i + 1, min(len(ev), i + 5000)):
            e = ev[k]
            if e.event == "sched_switch":
                m = SWITCH_PREV.search(e.rest)
                if m and int(m[1]) == tid and left is None:
                    left, switches = e.t, switches + 1
                continue
            if e.tid != tid:
                continue
            if left is not None:
                off, left = off + (e.t - left), None
            if not e.event.startswith("sys_"):
                continue
            # A 2-byte frame is a keep-alive ping, not a reply.
            if e.event == "sys_enter_sendto" and field(e.rest, "fd") not in (gateway, None) and field(e.rest, "len") > 2:
                out.append((n, field(e.rest, "len"), e.t - t, other, i, k, off, switches))
                break
            if e.event == "sys_exit_recvfrom":
                break
            other += other_syscall(e)
    return out


def main():
    args = sys.argv[1:]
    profile = None
    if "--profile" in args:
        j = args.index("--profile")
        try:
            profile = int(args[j + 1])
        except (IndexError, ValueError):
            sys.exit("server_path.py: --profile takes a gateway frame length in bytes")
        del args[j : j + 2]
    if len(args) != 1:
        sys.exit("usage: server_path.py [--profile LEN] PERF_SCRIPT_OUTPUT")
    ev = read(args[0], "server_path.py")
    got = frames(ev)
    sizes = collections.Counter(fd for _, _, _, fd, n in got if n > 6)
    if not sizes:
        sys.exit("server_path.py: no recvfrom with its fd in the trace (record sys_enter_recvfrom too)")
    gateway = sizes.most_common(1)[0][0]
    rows = replies(ev, got, gateway)
    print("gateway socket fd %d: %d frames, %d answered by a send on another socket" % (gateway, sizes[gateway], len(rows)))
    by = collections.defaultdict(list)
    for n, reply, us, other, _, _, off, switches in rows:
        by[(n, reply)].append((us, other, off, switches))
    sched = any(e.event == "sched_switch" for e in ev)
    print(
        "frame B  reply B   count    p50 us    p90 us    p99 us  with other syscalls"
        + ("  with a switch  off-CPU p50/max us" if sched else "")
    )
    for (n, reply), v in sorted(by.items()):
        if len(v) < MIN:
            continue
        us = sorted(x[0] for x in v)
        line = "%7d  %7d  %6d  %8.0f  %8.0f  %8.0f  %19d" % (
            n,
            reply,
            len(v),
            pct(us, 0.5),
            pct(us, 0.9),
            pct(us, 0.99),
            sum(1 for x in v if x[1]),
        )
        if sched:
            off = sorted(x[2] for x in v)
            line += "  %13d  %8.0f / %.0f" % (sum(1 for x in v if x[3]), pct(off, 0.5), off[-1])
        print(line)
    if profile is None:
        return
    counts = collections.Counter()
    for n, _, _, _, i, k, _, _ in rows:
        if n != profile:
            continue
        tid = ev[i].tid
        for e in ev[i:k]:
            if e.tid == tid and e.event == "cpu-clock":
                parts = e.rest.split(None, 1)
                counts[re.sub(r"<.*?>", "<>", parts[1] if len(parts) > 1 else parts[0])[:100]] += 1
    total = sum(counts.values())
    if not total:
        sys.exit("server_path.py: no cpu-clock samples inside those windows (record -e cpu-clock, script -F ...,ip,sym)")
    print("\ncpu-clock samples between a %d-byte gateway frame and its reply: %d" % (profile, total))
    for sym, c in counts.most_common(40):
        print("%5d %5.1f%%  %s" % (c, 100.0 * c / total, sym))


if __name__ == "__main__":
    main()
