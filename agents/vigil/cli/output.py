"""Output for people (aligned tables) and for scripts (--json)."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any, Sequence


def emit(args, data: Any, columns: Sequence[tuple[str, str]] | None = None) -> None:
    """Print ``data`` as JSON when ``--json`` was given, else as a table of ``columns``."""
    if getattr(args, "json", False) or columns is None:
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
        return
    rows = data if isinstance(data, list) else [data]
    table(rows, columns)


def table(rows: list[dict], columns: Sequence[tuple[str, str]]) -> None:
    """``columns``: (header, key) pairs; a dotted key reaches into nested dicts."""
    cells = [[h for h, _ in columns]]
    for r in rows:
        cells.append([_fmt(_get(r, k)) for _, k in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if not rows:
        print("(none)")


def _get(row: dict, key: str) -> Any:
    cur: Any = row
    for part in key.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def ts(ms: int | float | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
