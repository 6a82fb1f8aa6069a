"""vigil-endpoint-console: what the local agent is doing (mode, connection, caches, recent decisions).

Talks to the agent's control socket (``--socket``, default ``/run/vigil/endpoint.sock``).
Exit codes: 0 ok, 1 the agent reported an error, 3 the agent is unreachable.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..control import ControlError, call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vigil-endpoint-console", description=__doc__.splitlines()[0])
    p.add_argument("--socket", default=os.environ.get("VIGIL_ENDPOINT_SOCKET", "/run/vigil/endpoint.sock"))
    p.add_argument("-n", "--recent", type=int, default=15, help="how many recent decisions to show")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    try:
        st = call(args.socket, "endpoint.status", timeout=5)
        recent = call(args.socket, "endpoint.recent", timeout=5, limit=args.recent)
    except ControlError as exc:
        print(f"vigil-endpoint-console: {exc}", file=sys.stderr)
        return 3 if exc.code == "unreachable" else 1
    if args.json:
        print(json.dumps({"status": st, "recent": recent}, indent=2, sort_keys=True))
        return 0
    d = st.get("decider") or {}
    c = d.get("counters") or {}
    print(f"endpoint {st['endpoint']} on {st['host']}  mode: {st['mode']}  "
          f"manager link: {'connected' if st['mqtt_connected'] else 'DISCONNECTED'}  address: {st.get('address') or '-'}")
    print(f"watching {', '.join(st['mounts'])}  deadline {st['decision_deadline'] * 1000:.0f} ms  "
          f"decider pid {st.get('decider_pid')}  rss agent {st.get('rss_kb', 0) // 1024} MB / "
          f"decider {d.get('rss_kb', 0) // 1024} MB")
    if "error" in d:
        print(f"decider: {d['error']}")
    else:
        print(f"cache: {d.get('verdict_cache', 0)} verdicts {d.get('verdict_cache_by_verdict', {})}, "
              f"{d.get('identity_cache', 0)} file identities; hits {d.get('cache_hits', 0)}, "
              f"misses {d.get('cache_misses', 0)}, pending {d.get('pending', 0)}")
        print(f"decisions: allowed {c.get('decisions_allowed', 0)}, blocked {c.get('decisions_blocked', 0)}, "
              f"would-block {c.get('decisions_would-block', 0)}; timeouts {c.get('timeouts', 0)}, "
              f"offline {c.get('offline_answers', 0)}, dropped reports {c.get('dropped_ev', 0)}")
    if recent:
        print(f"\n{'TIME':8}  {'ACTION':11}  {'VERDICT':9}  {'SOURCE':24}  {'LAT':>7}  PATH")
        for e in recent:
            t = time.strftime("%H:%M:%S", time.localtime(e.get("ts", 0) / 1000))
            print(f"{t:8}  {e.get('action', ''):11}  {e.get('verdict', ''):9}  {str(e.get('source', ''))[:24]:24}  "
                  f"{e.get('latency_us', 0) / 1000:6.2f}ms  {e.get('path', '')}  [{e.get('sha256', '')[:12]}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
