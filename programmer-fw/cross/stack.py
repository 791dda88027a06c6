#!/usr/bin/env python3
"""Worst-case stack of the core's entry points, from GCC's call graphs.

Reads the .ci files that `-fcallgraph-info=su` writes (VCG text: one node per
function with "N bytes (static|dynamic...)" and one edge per call), and
prints, for each entry point, the deepest path's stack in bytes. Calls
through the HAL (function pointers: "__indirect_call") and into libc are
leaves of 0 bytes here and listed, because their stack belongs to the port
and the C library. A recursive call graph is reported as an error: the core
must not recurse.

usage: stack.py DIR_WITH_CI_FILES ENTRY...
"""
import glob
import re
import sys

NODE = re.compile(r'node: \{ title: "([^"]+)" label: "([^"]*)"')
EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')
BYTES = re.compile(r"\\n(\d+) bytes \(([a-z,]+)\)")


def short(title):
    return title.rsplit(":", 1)[-1]


def load(folder):
    stack, calls, dynamic = {}, {}, set()
    for path in glob.glob(folder + "/*.ci"):
        with open(path) as f:
            for line in f:
                m = NODE.search(line)
                if m:
                    b = BYTES.search(m.group(2))
                    if b:
                        stack[short(m.group(1))] = int(b.group(1))
                        if b.group(2) != "static":
                            dynamic.add(short(m.group(1)))
                    continue
                m = EDGE.search(line)
                if m:
                    calls.setdefault(short(m.group(1)), set()).add(short(m.group(2)))
    return stack, calls, dynamic


def worst(fn, stack, calls, seen, memo, leaves):
    if fn in memo:
        return memo[fn]
    if fn in seen:
        raise SystemExit("recursion through " + fn)
    if fn not in stack:
        leaves.add(fn)
        return 0, [fn]
    seen.add(fn)
    best, path = 0, []
    for callee in sorted(calls.get(fn, ())):
        cost, sub = worst(callee, stack, calls, seen, memo, leaves)
        if cost > best or not path:
            best, path = cost, sub
    seen.discard(fn)
    memo[fn] = (stack[fn] + best, [fn] + path)
    return memo[fn]


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    stack, calls, dynamic = load(sys.argv[1])
    if dynamic:
        print("dynamic stack (alloca/VLA) in: " + ", ".join(sorted(dynamic)))
    leaves, memo = set(), {}
    for entry in sys.argv[2:]:
        cost, path = worst(entry, stack, calls, set(), memo, leaves)
        print("%-26s %5d bytes  (%s)" % (entry, cost, " > ".join(path)))
    print("leaves not counted (HAL ops, libc): " + ", ".join(sorted(leaves)))


if __name__ == "__main__":
    main()
