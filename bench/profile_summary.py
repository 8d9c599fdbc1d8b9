"""Where the time goes, from a py-spy raw profile (`--format raw`, as `--profile` writes them).

    .venv/bin/python bench/profile_summary.py PROFILE.txt [--thread vigil-worker] [--top 25]

Prints, per thread, its share of all samples; then, for the chosen thread, the functions
with the largest inclusive share of that thread's samples (a function counted once per
sample however deep it recurses), and the share of samples in which the thread waited
(py-spy `--idle` samples end in a wait: select, sleep, a lock or a condition).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# Leaf frames in which a thread is waiting rather than running (with --idle, py-spy samples them).
WAITS = ("select (", "sleep (", "wait (", "Event.wait", "Condition.wait", "_wait_for_tstate_lock",
         "poll (", "acquire (", "recv (", "accept (")
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<where>[^()]*)\)$")


def parse(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread name, frames outermost first, samples) per line of a raw profile."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        out.append((thread, frames[1:], int(count)))
    return out


def short(frame: str) -> str:
    """`func (path/file.py:line)` -> `func (file.py)`: lines differ, functions do not."""
    m = _FRAME.match(frame)
    if m is None:
        return frame
    where = m["where"].rsplit(":", 1)[0]
    return f"{m['func']} ({'/'.join(where.split('/')[-2:])})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--thread", default="vigil-worker", help="thread name (prefix) to break down")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    rows = parse(args.profile)
    total = sum(n for _, _, n in rows)
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    threads: Counter[str] = Counter()
    for thread, _, n in rows:
        threads[thread] += n
    print(f"{total} samples")
    for thread, n in threads.most_common():
        print(f"  {100 * n / total:5.1f}%  {thread}")
    mine = [(f, n) for t, f, n in rows if t.startswith(args.thread)]
    n_mine = sum(n for _, n in mine)
    if not n_mine:
        print(f"no samples of a thread named {args.thread}*", file=sys.stderr)
        return 1
    waiting = sum(n for f, n in mine if f and any(w in f[-1] for w in WAITS))
    inclusive: Counter[str] = Counter()
    for frames, n in mine:
        for name in {short(f) for f in frames}:
            inclusive[name] += n
    print(f"\n{args.thread}: {n_mine} samples, waiting in {100 * waiting / n_mine:.1f}%; inclusive share:")
    for name, n in inclusive.most_common(args.top):
        print(f"  {100 * n / n_mine:5.1f}%  {name}")
    # The innermost Python frame, with its line: a C call (select, a syscall) shows as its caller's line.
    leaves: Counter[str] = Counter()
    for frames, n in mine:
        if frames:
            leaves[frames[-1]] += n
    print(f"\n{args.thread}: innermost Python frames:")
    for name, n in leaves.most_common(args.top // 2):
        print(f"  {100 * n / n_mine:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
