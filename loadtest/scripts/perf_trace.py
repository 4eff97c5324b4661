"""Reading `perf script` output of syscall tracepoints, for the scripts
beside this one (`server_path.py`, `offer_legs.py`)."""
import re
import sys
from collections import namedtuple

# `[comm pid/]tid time: event: rest`: with `-F comm,pid,tid,...` the first
# two are there, with `-F tid,...` only the thread id.
LINE = re.compile(r"\s*(?:(.+?)\s+(\d+)/)?(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)")

# `t` in microseconds; `event` without its `syscalls:` or `probe:` prefix.
Event = namedtuple("Event", "t pid tid comm event rest")


def read(path, prog):
    """Every event in the file, by time; exits with a message if it cannot be read."""
    try:
        f = open(path)
    except OSError as e:
        sys.exit("%s: cannot read %s: %s" % (prog, path, e.strerror))
    ev = []
    with f:
        for line in f:
            m = LINE.match(line)
            if m:
                pid = int(m[2]) if m[2] else None
                comm = m[1].strip() if m[1] else ""
                ev.append(Event(float(m[4]) * 1e6, pid, int(m[3]), comm, m[5].split(":")[-1], m[6]))
    ev.sort(key=lambda e: e.t)
    return ev


def field(rest, name):
    """A `name: 0x...` argument of a sys_enter tracepoint, or None."""
    m = re.search(name + r": (0x[0-9a-f]+)", rest)
    return int(m[1], 16) if m else None


def ret(rest):
    """A sys_exit tracepoint's return value (-1 if unreadable)."""
    try:
        return int(rest.split()[0], 16)
    except (ValueError, IndexError):
        return -1


def pct(ordered, p):
    """The p-quantile of an ascending list."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]
