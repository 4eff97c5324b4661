#!/usr/bin/env python3
"""A server histogram over a window of a run, from two `/metrics` scrapes.

The harness reports the server's own histograms over the whole run. To see
them in steady state only (for example the journal's commit time after the
writer's page cache has filled), scrape `/metrics` twice and give both
files: this prints, for each histogram, how many observations fell between
the scrapes and what share of them took longer than each bucket bound.

    curl -s http://ADDR/metrics > m1; sleep 28; curl -s http://ADDR/metrics > m2
    python3 loadtest/scripts/histogram_window.py m1 m2 \\
        ringline_journal_commit_seconds ringline_ack_latency_seconds

Bounds printed: 0.5, 1, 2 and 5 ms (the server's buckets include them).
"""
import re
import sys

BOUNDS = ["0.0005", "0.001", "0.002", "0.005"]


def buckets(path, name):
    found = {}
    pattern = re.compile(re.escape(name) + r'_bucket\{(?:[^}]*,)?le="([^"]+)"\} (\S+)')
    with open(path) as f:
        for line in f:
            m = pattern.match(line)
            if m:
                found[m.group(1)] = found.get(m.group(1), 0.0) + float(m.group(2))
    return found


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    before, after, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    for name in names:
        a, b = buckets(before, name), buckets(after, name)
        if "+Inf" not in a or "+Inf" not in b:
            sys.exit(f"{name}: no such histogram in both scrapes")
        total = b["+Inf"] - a["+Inf"]
        if total <= 0:
            print(f"{name}: no observations between the scrapes")
            continue
        over = []
        for le in BOUNDS:
            if le in a and le in b:
                share = 100.0 * (1.0 - (b[le] - a[le]) / total)
                over.append(f"over {float(le) * 1000:g} ms {share:.2f}%")
        print(f"{name}: {int(total)} observations; " + ", ".join(over))


if __name__ == "__main__":
    main()
