"""Sum a py-spy collapsed profile: ``python -m bench.profile_top bench/results/profile-heartbeat.txt``.

Prints the frames with the most samples on top of the stack (self) and anywhere in it (inclusive).
"""

from __future__ import annotations

import collections
import sys


def top(path: str, n_self: int = 25, n_incl: int = 40) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack or not count.isdigit():  # not a sample line
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    out = [f"samples: {total}", "--- self"]
    out += [f"{c / total * 100:5.1f}% {fr}" for fr, c in own.most_common(n_self)]
    out += ["--- inclusive"]
    out += [f"{c / total * 100:5.1f}% {fr}" for fr, c in incl.most_common(n_incl)]
    return "\n".join(out)


if __name__ == "__main__":
    print(top(sys.argv[1], *(int(a) for a in sys.argv[2:4])))
