#!/usr/bin/env python3
"""Splits the light-load offer and the bare round trip into their legs.

Reads `perf script` output of a system-wide trace of recvfrom/sendto taken
during a `ringline-loadtest run --spawn-server ...` (which also starts the
bare echo server), and prints, for each path, the median and p90 of:

- offer: harness `gateway` thread sends `call.inbound` -> the server has
  read it -> the server sends the first `offer` -> the harness has read it;
- bare: harness sends a probe -> the echo server has read it -> it sends
  it back -> the harness has read it.

So the server's own part (read to first write) can be set against the
echo server's, and the two kernel-and-wake-up legs against each other.

    perf record -a -e syscalls:sys_exit_recvfrom -e syscalls:sys_enter_sendto \\
        -o legs.data -- sleep 20
    perf script -i legs.data -F comm,pid,tid,time,event,trace > legs.txt
    python3 loadtest/scripts/offer_legs.py legs.txt [INBOUND_LENS] [OFFER_MIN]

INBOUND_LENS (default 109,110) are the lengths of the harness's
`call.inbound` frames and OFFER_MIN (default 186) the least length of an
`offer` frame, both for the topology `gen-config` makes with its default
flags; other ids change them (the harness's frames show in the trace).
The harness is the process with the `gateway` thread, the server the one
that reads its `call.inbound` frames, and the echo server, of the rest,
the one that reads the most frames (it sends each back 4 bytes shorter:
the client's mask is not echoed).
"""
import re
import sys

LINE = re.compile(r"\s*(.+?)\s+(\d+)/(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)")


def field(rest, name):
    m = re.search(name + r": (0x[0-9a-f]+)", rest)
    return int(m[1], 16) if m else None


def ret(rest):
    try:
        return int(rest.split()[0], 16)
    except (ValueError, IndexError):
        return -1


def summary(name, values):
    if not values:
        print("%-36s no samples" % name)
        return
    v = sorted(values)
    print("%-36s n=%4d  p50 %6.0f us  p90 %6.0f us" % (name, len(v), v[len(v) // 2], v[int(len(v) * 0.9)]))


def main():
    args = sys.argv[1:]
    if not 1 <= len(args) <= 3:
        sys.exit("usage: offer_legs.py PERF_SCRIPT_OUTPUT [INBOUND_LENS] [OFFER_MIN]")
    try:
        inbound = {int(x) for x in (args[1] if len(args) > 1 else "109,110").split(",")}
        offer_min = int(args[2]) if len(args) > 2 else 186
    except ValueError:
        sys.exit("offer_legs.py: INBOUND_LENS is a comma-separated list of byte counts, OFFER_MIN a byte count")
    ev = []
    try:
        f = open(args[0])
    except OSError as e:
        sys.exit("offer_legs.py: cannot read %s: %s" % (args[0], e.strerror))
    with f:
        for line in f:
            m = LINE.match(line)
            if m:
                ev.append((float(m[4]) * 1e6, int(m[2]), int(m[3]), m[1].strip(), m[5].split(":")[-1], m[6]))
    ev.sort(key=lambda e: e[0])
    harness = next((e[1] for e in ev if e[3] == "gateway"), None)
    if harness is None:
        sys.exit("offer_legs.py: no `gateway` thread in the trace (record with -a during a load-test run)")

    # The server is the process that reads the first `call.inbound`; the
    # echo server, of the rest, the one that reads the most frames.
    server = None
    for i, (t, pid, tid, comm, e, rest) in enumerate(ev):
        if pid == harness and comm == "gateway" and e == "sys_enter_sendto" and field(rest, "len") in inbound:
            n = field(rest, "len")
            server = next((x[1] for x in ev[i + 1 : i + 20000] if x[1] != harness and x[4] == "sys_exit_recvfrom" and ret(x[5]) == n), None)
            if server is not None:
                break
    if server is None:
        sys.exit("offer_legs.py: no process read a call.inbound frame (check INBOUND_LENS)")
    reads = {}
    for e in ev:
        if e[1] not in (harness, server) and e[4] == "sys_exit_recvfrom" and ret(e[5]) > 6:
            reads[e[1]] = reads.get(e[1], 0) + 1
    echo = max(reads, key=reads.get) if reads else None

    offer = []
    for i, (t, pid, tid, comm, e, rest) in enumerate(ev):
        if not (pid == harness and comm == "gateway" and e == "sys_enter_sendto" and field(rest, "len") in inbound):
            continue
        n = field(rest, "len")
        got = sent = None
        stid = None
        for tt, p, td, _, ee, rr in ev[i + 1 : i + 20000]:
            if got is None and p == server and ee == "sys_exit_recvfrom" and ret(rr) == n:
                got, stid = tt, td
            elif got is not None and sent is None and td == stid and ee == "sys_enter_sendto":
                if (field(rr, "len") or 0) >= offer_min:
                    sent = tt
            elif sent is not None and p == harness and ee == "sys_exit_recvfrom" and ret(rr) >= offer_min:
                offer.append((got - t, sent - got, tt - sent, tt - t))
                break
    bare = []
    last_send = {}
    for i, (t, pid, tid, comm, e, rest) in enumerate(ev):
        if pid == harness and e == "sys_enter_sendto":
            last_send[field(rest, "len")] = t
        if echo is None or pid != echo or e != "sys_exit_recvfrom" or ret(rest) <= 6:
            continue
        n = ret(rest)
        start = last_send.get(n)
        if start is None or t - start > 5000:
            continue
        back = None
        for tt, p, _, _, ee, rr in ev[i + 1 : i + 20000]:
            if back is None and p == echo and ee == "sys_enter_sendto":
                back = tt
            elif back is not None and p == harness and ee == "sys_exit_recvfrom" and ret(rr) == n - 4:
                bare.append((t - start, back - t, tt - back, tt - start))
                break
    print("harness pid %d, server pid %d, echo pid %s" % (harness, server, echo))
    for j, name in enumerate(["harness send -> server read", "server read -> first offer sent", "offer sent -> harness read", "offer total"]):
        summary(name, [o[j] for o in offer])
    for j, name in enumerate(["harness send -> echo read", "echo read -> echo sent", "echo sent -> harness read", "bare total"]):
        summary(name, [b[j] for b in bare])


if __name__ == "__main__":
    main()
