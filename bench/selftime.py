"""Top functions by self (and inclusive) time from a py-spy ``--format raw`` dump.

    python -m bench.selftime PROFILE.raw [TOP] [--inclusive N] [--thread-filter TEXT]

Each raw line is ``frame;frame;...;leaf COUNT`` (collapsed stacks, root first).
"""

from __future__ import annotations

import argparse
from collections import Counter


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("raw")
    ap.add_argument("top", type=int, nargs="?", default=15)
    ap.add_argument("--inclusive", type=int, default=0, help="also list N by inclusive time")
    args = ap.parse_args(argv)
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(args.raw) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            self_t[frames[-1]] += n
            for f in set(frames):
                incl[f] += n
    print(f"{total} samples")
    print("| # | self % | function (file:line) |\n|---|---|---|")
    for i, (f, n) in enumerate(self_t.most_common(args.top), 1):
        print(f"| {i} | {100 * n / total:.1f} | `{f}` |")
    if args.inclusive:
        print("\n| inclusive % | function |\n|---|---|")
        for f, n in incl.most_common(args.inclusive):
            print(f"| {100 * n / total:.1f} | `{f}` |")


if __name__ == "__main__":
    main()
