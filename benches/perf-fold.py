#!/usr/bin/env python3
"""Folds `perf script` output into one line per distinct stack, root first:
`frame;frame;...;leaf COUNT` (the format of inferno-collapse-perf, which
benches/perf-breakdown.py and inferno-flamegraph read), for machines without
inferno:

    perf script -i perf.data | benches/perf-fold.py > out.folded
"""
import re
import sys
from collections import Counter

# A frame line: "\t    7f0123456789 symbol+0x1f (/path/to/dso)".
FRAME = re.compile(r"^\s+[0-9a-f]+\s+(.*?)(?:\+0x[0-9a-f]+)?\s+\(([^)]*)\)\s*$")


def main():
    stacks = Counter()
    frames = []
    comm = None
    for line in sys.stdin:
        if not line.strip():
            if comm is not None:
                stacks[";".join([comm] + frames[::-1])] += 1
            frames, comm = [], None
            continue
        if comm is None and not line[0].isspace():
            comm = line.split()[0]
            continue
        m = FRAME.match(line)
        if m:
            sym = m.group(1)
            if sym == "[unknown]":
                sym = "[" + m.group(2).rsplit("/", 1)[-1] + "]"
            frames.append(sym)
    if comm is not None:
        stacks[";".join([comm] + frames[::-1])] += 1
    for stack, n in stacks.items():
        print(f"{stack} {n}")


if __name__ == "__main__":
    main()
