"""Sum a ``BENCH_PROFILE=perf`` recording by service, then by library and function.

``python -m bench.perf_top bench/results/perf-pipeline-ours.data [--top 25] [--role helm-runner]``

Samples are mapped to the roles written beside the recording (``perf-<name>.roles.json``); a process
not named there (a Postgres backend, the baseline's child) is attributed to its nearest named ancestor
when it still runs, else shown by pid. ``--role`` lists the hottest functions (leaf frames) of one role,
and ``--inclusive`` the functions with the most samples anywhere on their stacks.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
from pathlib import Path


def samples(data: Path) -> list[tuple[int, list[tuple[str, str]]]]:
    """(pid, stack of (symbol, dso), leaf first) per sample."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,ip,sym,dso"], capture_output=True,
                         text=True, check=True).stdout
    result: list[tuple[int, list[tuple[str, str]]]] = []
    pid, stack = None, []
    for line in out.splitlines():
        if not line.strip():
            if pid is not None:
                result.append((pid, stack))
            pid, stack = None, []
        elif pid is None:
            pid = int(line.split("/")[0].split()[0])
        else:
            parts = line.split(None, 1)
            rest = parts[1] if len(parts) > 1 else ""
            sym, _, dso = rest.rpartition(" (")
            stack.append((sym.split("+0x")[0] or "?", dso.rstrip(")").rsplit("/", 1)[-1]))
    if pid is not None:
        result.append((pid, stack))
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--role")
    ap.add_argument("--inclusive", action="store_true")
    args = ap.parse_args()
    roles_file = args.data.with_name(args.data.name.removesuffix(".data") + ".roles.json")
    roles = {pid: name for name, pid in json.loads(roles_file.read_text()).items()} if roles_file.exists() else {}
    recs = samples(args.data)

    def role(pid: int) -> str:
        if pid in roles:
            return roles[pid]
        if pid == 0:
            return "idle"
        try:  # a child of a named process (Postgres backends) while it still exists
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid in roles:
                return roles[ppid]
        except (OSError, ValueError, IndexError):
            pass
        return f"pid {pid}"

    by_role: collections.Counter[str] = collections.Counter()
    by_dso: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for pid, stack in recs:
        r = role(pid)
        if r.startswith("pid ") and stack and stack[0][1] == "postgres":
            r = "postgres"
        by_role[r] += 1
        by_dso[r][stack[0][1] if stack else "?"] += 1
    total = sum(by_role.values()) or 1
    busy = total - by_role.get("idle", 0)
    print(f"{total} samples, {busy} busy")
    for r, c in by_role.most_common():
        dsos = ", ".join(f"{d} {n / c:.0%}" for d, n in by_dso[r].most_common(4))
        print(f"{c / busy:7.1%}  {r:<14} {dsos}")
    if args.role:
        funcs: collections.Counter[str] = collections.Counter()
        n = 0
        for pid, stack in recs:
            r = role(pid)
            if r != args.role or not stack:
                continue
            n += 1
            if args.inclusive:
                for sym in {f"{s} [{d}]" for s, d in stack}:
                    funcs[sym] += 1
            else:
                funcs[f"{stack[0][0]} [{stack[0][1]}]"] += 1
        print(f"\n{args.role}: {n} samples")
        for f, c in funcs.most_common(args.top):
            print(f"{c / max(n, 1):7.1%}  {f}")


if __name__ == "__main__":
    main()
