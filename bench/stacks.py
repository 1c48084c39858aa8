"""Summarise py-spy's collapsed stacks (``py-spy record --format raw``): where the samples fall.

    python -m bench.stacks FILE [--top 25]

For each thread, the functions with the most samples on top of the stack (self) and anywhere in
it (inclusive), as a share of that thread's samples.
"""
from __future__ import annotations

import argparse
import collections
import re
import sys

_FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:]+)(?::(?P<line>\d+))?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


def summarise(lines, top: int = 25) -> str:
    threads: dict = collections.defaultdict(lambda: (collections.Counter(), collections.Counter(), [0]))
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "all"
        body = [f for f in frames if not f.startswith(("thread", "process"))]
        if not body:
            continue
        self_, incl, total = threads[thread]
        n = int(count)
        total[0] += n
        self_[_name(body[-1])] += n
        for name in {_name(f) for f in body}:
            incl[name] += n
    out = []
    for thread, (self_, incl, total) in sorted(threads.items(), key=lambda kv: -kv[1][2][0]):
        out.append(f"== {thread}: {total[0]} samples")
        out.append("   self%  function")
        for name, n in self_.most_common(top):
            out.append(f"  {100 * n / total[0]:5.1f}  {name}")
        out.append("   incl%  function")
        for name, n in incl.most_common(top):
            out.append(f"  {100 * n / total[0]:5.1f}  {name}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.stacks")
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    with open(args.file) as f:
        print(summarise(f, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
