#!/usr/bin/env python3
"""Every cross-folder #include runs downward: programs -> libraries -> libnusec.

Reads the C sources of the top-level folders (not tests/, bench/ or build
trees), resolves each `#include "x.h"` to the folder that holds x.h, and
counts the includes that cross folders. It fails (exit 1) when a program
folder includes another program's header, or a library includes a
program's, or libnusec includes another library's: what two programs share
belongs in a library folder of its own (ARCHITECTURE.md, "Components").

usage: include_layers.py [SOURCE_DIR]
"""
import collections
import os
import re
import sys

# Layer of each folder: a folder may include only from a lower layer.
LAYERS = {
    'proto': 0,
    'libnusec': 1,
    'libledger': 2,
    'libstation': 2,
    'broker': 3,
    'cloud-agent': 3,
    'station-agent': 3,
    'programmer-fw': 3,
    'cli': 3,
}
INCLUDE = re.compile(r'\s*#\s*include\s+"([^"]+)"')


def sources(root):
    for top in LAYERS:
        for d, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if f.endswith(('.c', '.h')):
                    yield os.path.relpath(os.path.join(d, f), root)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else '.'
    files = sorted(sources(root))
    known = set(files)
    by_name = collections.defaultdict(list)
    for f in files:
        by_name[os.path.basename(f)].append(f)
    top = lambda p: p.split(os.sep)[0]
    counts = collections.Counter()
    wrong = []
    for f in files:
        with open(os.path.join(root, f), errors='replace') as fh:
            for line in fh:
                m = INCLUDE.match(line)
                if not m:
                    continue
                inc = m.group(1)
                here = os.path.normpath(os.path.join(os.path.dirname(f), inc))
                if here in known:
                    target = here
                else:
                    cands = by_name.get(os.path.basename(inc), [])
                    if not cands:
                        continue  # generated (protobuf-c, embedded assets) or system
                    same = [c for c in cands if top(c) == top(f)]
                    target = (same or cands)[0]
                a, b = top(f), top(target)
                if a == b:
                    continue
                counts[(a, b)] += 1
                if LAYERS[b] >= LAYERS[a]:
                    wrong.append('%s includes %s' % (f, target))
    for (a, b), n in sorted(counts.items()):
        print('%5d  %s -> %s' % (n, a, b))
    print('cross-folder includes: %d, against the layers: %d' % (sum(counts.values()), len(wrong)))
    for w in wrong:
        print('  ' + w)
    return 1 if wrong else 0


if __name__ == '__main__':
    sys.exit(main())
