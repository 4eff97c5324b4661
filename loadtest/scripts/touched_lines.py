#!/usr/bin/env python3
"""How many distinct cache lines (code and data) the server touches between
reading a gateway frame and writing its first reply.

At light load every line the server touches after ~10 ms of idleness is a
slow fetch on the benchmark VM (`ringline-loadtest cold-memory`), so the
number of distinct 64-byte lines on the offer's path is what its latency
pays for. Timing that path on the VM moves by 5-10% from run to run; this
count does not, so a change to the path can be judged by it first.

Run the server under valgrind's lackey, which logs every instruction and
data access, with system calls in the same log (code on 2 MiB pages off:
valgrind cannot follow the move):

    valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes \\
        --log-file=trace.log ringline serve --config lt.toml --data DIR
    ringline-loadtest run --target ADDR --config lt.toml ... --rate 1
    python3 loadtest/scripts/touched_lines.py trace.log [--dump N]

`lt.toml` is a `ringline-loadtest gen-config` file with
`huge_code_pages = false` under `[server]`. A window starts when a
`recvfrom` returns data and ends at the next `sendto`/`write`, on any
thread (valgrind runs one thread at a time). The gateway's socket is the
one with the most windows. The script prints the median count of two kinds
of window: a `call.inbound` to its `offer` (an agent socket, over 150
bytes), and any other gateway event to an agent message.

With `--dump N` it also writes window N's lines (address, accesses) to
trace.log.winN.code and .data, and lists every window, for `addr2line`.
"""
import collections
import re
import statistics
import sys

SENDS = ('sys_sendto', 'sys_write', 'sys_writev', 'sys_sendmsg')
RECVS = ('sys_recvfrom', 'sys_read')
PRE = re.compile(r'SYSCALL\[\d+,(\d+)\]\(\s*\d+\)\s+(\w+)\s*\(([^)]*)\)(.*)')
POST = re.compile(r'SYSCALL\[\d+,(\d+)\]\(\s*\d+\) \.\.\. \[async\] --> Success\(0x([0-9a-f]+)\)')
DONE = re.compile(r'Success\(0x([0-9a-f]+)\)')


def windows(path):
    """Yields (recv fd, recv bytes, send name, send fd, send bytes, code lines, data lines)."""
    win = None
    pending = {}

    def close(name, args):
        fd = args[0].strip()
        size = args[2].strip() if name == 'sys_sendto' and len(args) > 2 else '?'
        return (win['fd'], win['len'], name, fd, size, win['code'], win['data'])

    with open(path, errors='replace') as f:
        for line in f:
            c = line[:1]
            if c in ('I', ' '):
                if win is None:
                    continue
                parts = line.split()
                if len(parts) < 2:
                    continue
                try:
                    addr = int(parts[1].split(',')[0], 16)
                except ValueError:
                    continue
                if parts[0] == 'I':
                    win['code'][addr >> 6] += 1
                elif parts[0] in ('L', 'S', 'M'):
                    win['data'][addr >> 6] += 1
                continue
            if 'SYSCALL[' not in line:
                continue
            post = POST.search(line)
            if post:
                call = pending.pop(post.group(1), None)
                if call and call[0] in RECVS and win is None and int(post.group(2), 16) > 0:
                    win = new_window(call[1], int(post.group(2), 16))
                continue
            pre = PRE.search(line)
            if not pre:
                continue
            tid, name, args, rest = pre.groups()
            args = args.split(',')
            if '[async]' in rest:
                pending[tid] = (name, args[0].strip())
                if name in SENDS and win is not None:
                    yield close(name, args)
                    win = None
                continue
            done = DONE.search(rest)
            if name in RECVS and win is None and done and int(done.group(1), 16) > 0:
                win = new_window(args[0].strip(), int(done.group(1), 16))
            elif name in SENDS and win is not None:
                yield close(name, args)
                win = None


def new_window(fd, length):
    return {'fd': fd, 'len': length, 'code': collections.Counter(), 'data': collections.Counter()}


def main():
    path = sys.argv[1]
    dump = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == '--dump' else None
    rows = list(windows(path))
    if not rows:
        sys.exit('no windows: was the log written with --trace-mem=yes --trace-syscalls=yes?')
    gateway = collections.Counter(r[0] for r in rows).most_common(1)[0][0]
    if dump is not None:
        for i, r in enumerate(rows):
            print(i, 'recv fd', r[0], r[1], 'bytes ->', r[2], 'fd', r[3], r[4], 'bytes:',
                  len(r[5]), 'code lines', len(r[6]), 'data lines')
        code, data = rows[dump][5], rows[dump][6]
        for suffix, lines in (('code', code), ('data', data)):
            with open(f'{path}.win{dump}.{suffix}', 'w') as out:
                for line, n in sorted(lines.items()):
                    out.write(f'{line << 6:x} {n}\n')

    def summary(label, sel):
        if not sel:
            print(f'{label}: none')
            return
        code = [len(r[5]) for r in sel]
        data = [len(r[6]) for r in sel]
        total = [a + b for a, b in zip(code, data)]
        print(f'{label}: {len(sel)} windows, median lines: code {statistics.median(code):g}, '
              f'data {statistics.median(data):g}, total {statistics.median(total):g}')

    def sent(r):
        return r[2] == 'sys_sendto' and r[4].isdigit()

    on_gateway = [r for r in rows if r[0] == gateway and sent(r) and r[3] != gateway]
    summary('call.inbound -> offer', [r for r in on_gateway if int(r[4]) > 150])
    summary('other gateway event -> agent message', [r for r in on_gateway if int(r[4]) <= 150])


if __name__ == '__main__':
    main()
