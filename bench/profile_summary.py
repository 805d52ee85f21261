"""Summarise a py-spy ``--format raw`` profile: the functions where the time goes.

    python -m bench.profile_summary profile.txt [--top 30] [--filter exporter]

Prints, for each function, its *self* share (samples where it is the innermost frame) and its
*total* share (samples where it is anywhere on the stack).
"""

from __future__ import annotations

import argparse
import collections
import re


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--filter", default="", help="only functions whose frame contains this")
    args = parser.parse_args(argv)
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    with open(args.path) as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = [re.sub(r":\d+\)", ")", f) for f in stack.split(";")]
            samples += count
            own[frames[-1]] += count
            for frame in set(frames):
                total[frame] += count
    print(f"{samples} samples")
    print("self%   total%  function")
    shown = 0
    for frame, count in total.most_common():
        if args.filter and args.filter not in frame:
            continue
        print(f"{own[frame] / samples:6.1%}  {count / samples:6.1%}  {frame[:150]}")
        shown += 1
        if shown >= args.top:
            break
    print("\nby self time:")
    for frame, count in own.most_common(args.top):
        print(f"{count / samples:6.1%}  {frame[:150]}")


if __name__ == "__main__":
    main()
