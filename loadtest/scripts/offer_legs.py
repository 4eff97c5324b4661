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
import sys

from perf_trace import field, pct, read, ret


def summary(name, values):
    if not values:
        print("%-36s no samples" % name)
        return
    v = sorted(values)
    print("%-36s n=%4d  p50 %6.0f us  p90 %6.0f us" % (name, len(v), pct(v, 0.5), pct(v, 0.9)))


def main():
    args = sys.argv[1:]
    if not 1 <= len(args) <= 3:
        sys.exit("usage: offer_legs.py PERF_SCRIPT_OUTPUT [INBOUND_LENS] [OFFER_MIN]")
    try:
        inbound = {int(x) for x in (args[1] if len(args) > 1 else "109,110").split(",")}
        offer_min = int(args[2]) if len(args) > 2 else 186
    except ValueError:
        sys.exit("offer_legs.py: INBOUND_LENS is a comma-separated list of byte counts, OFFER_MIN a byte count")
    ev = read(args[0], "offer_legs.py")
    harness = next((e.pid for e in ev if e.comm == "gateway"), None)
    if harness is None:
        sys.exit("offer_legs.py: no `gateway` thread in the trace (record with -a during a load-test run)")

    def is_inbound(e):
        return e.pid == harness and e.comm == "gateway" and e.event == "sys_enter_sendto" and field(e.rest, "len") in inbound

    # The server is the process that reads the first `call.inbound`; the
    # echo server, of the rest, the one that reads the most frames.
    server = None
    for i, e in enumerate(ev):
        if is_inbound(e):
            n = field(e.rest, "len")
            server = next((x.pid for x in ev[i + 1 : i + 20000] if x.pid != harness and x.event == "sys_exit_recvfrom" and ret(x.rest) == n), None)
            if server is not None:
                break
    if server is None:
        sys.exit("offer_legs.py: no process read a call.inbound frame (check INBOUND_LENS)")
    reads = {}
    for e in ev:
        if e.pid not in (harness, server) and e.event == "sys_exit_recvfrom" and ret(e.rest) > 6:
            reads[e.pid] = reads.get(e.pid, 0) + 1
    echo = max(reads, key=reads.get) if reads else None

    offer = []
    for i, e in enumerate(ev):
        if not is_inbound(e):
            continue
        t, n = e.t, field(e.rest, "len")
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
