"""Parser cost on pathological input: the worst case per parser at 64 KB, next to ``str.split``.

For every parser's seed message (``vigil.collector.pathological``) every family -- a token the
parsers look for (spaces, ``=``, quotes, ``[client ``, ``key:"``, ...) repeated at a point the parser
reaches, followed by the rest of the message, by nothing, or by a tail that changes the parser --
is parsed at 64 KB (the default ``max_message_size``) through the collector's ``parse()``.  The
slowest families are timed again (best of 9) at 16, 32 and 64 KB.  Printed per parser: the worst
family, its time, ``str.split`` of the same message (the baseline, same run), the ratio, the
32 KB -> 64 KB time ratio, and the growth per doubling measured over two doublings (16 -> 64 KB,
square root of the ratio).  Linear cost gives about 2 on both, quadratic about 4 on both; on a
shared machine noise lifts one estimate at a time, so the goal takes the smaller of the two.
Goal: <= 20 ms each and growth <= 2.5 (2 plus noise) for each parser's slowest families.

    .venv/bin/python bench/collector_hostile.py [--size 65536] [--top 5]
"""
from __future__ import annotations

import argparse
import os
import time

from vigil.collector.parsers import parse
from vigil.collector.pathological import SEEDS, families, family

GOAL_S = 0.020
GOAL_RATIO = 2.5


def once(fn, arg) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


def best(fn, arg, n: int = 9) -> float:
    return min(once(fn, arg) for _ in range(n))


def run_parse(msg: str) -> None:
    parse(msg, ref=1700000000.0)


def run_split(msg: str) -> None:
    msg.split(" ")


def describe(cut: int, tok: str, tail: str | None) -> str:
    t = "rest" if tail is None else repr(tail) if tail else "none"
    return f"{tok!r}* at {cut}, tail {t}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=65536)
    ap.add_argument("--top", type=int, default=5, help="families re-timed per parser")
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})   # one core
    except (AttributeError, OSError):
        pass
    big, half, quarter = args.size, args.size // 2, args.size // 4
    print(f"collector parsers on pathological input: worst family per parser at {big // 1024} KB "
          f"(best of 9), str.split of the same message as baseline")
    print(f"{'parser':20} {'families':>8} {'worst ms':>9} {'split ms':>9} {'ratio':>7} "
          f"{'32->64':>7} {'per x2':>7}  goal  worst family")
    total_fam = 0
    all_met = True
    for fmt, seed in SEEDS.items():
        fams = list(families(fmt))
        total_fam += len(fams)
        first = sorted(((once(run_parse, family(seed, c, tok, tail, big)), (c, tok, tail))
                        for c, tok, tail in fams), key=lambda x: -x[0])[:args.top]
        rows = []
        for _t, key in first:
            m64 = family(seed, *key, big)
            t64 = best(run_parse, m64)
            t32 = best(run_parse, family(seed, *key, half))
            t16 = best(run_parse, family(seed, *key, quarter))
            rows.append((t64, t64 / max(t32, 1e-9), (t64 / max(t16, 1e-9)) ** 0.5, best(run_split, m64), key))
        rows.sort(key=lambda r: -r[0])
        t64, r32, per2, split, key = rows[0]
        worst_growth = max(min(r[1], r[2]) for r in rows)
        met = t64 <= GOAL_S and worst_growth <= GOAL_RATIO
        all_met &= met
        print(f"{fmt:20} {len(fams):8} {t64 * 1000:9.2f} {split * 1000:9.3f} {t64 / split:7.0f} "
              f"{r32:7.2f} {per2:7.2f}  {'met' if met else 'MISSED'}  {describe(*key)}")
    print(f"{total_fam} families; goal <= {GOAL_S * 1000:.0f} ms at {big // 1024} KB and growth per doubling "
          f"<= {GOAL_RATIO} (the smaller of the two estimates, worst of each parser's {args.top} slowest "
          f"families): {'met' if all_met else 'MISSED'}")


if __name__ == "__main__":
    main()
