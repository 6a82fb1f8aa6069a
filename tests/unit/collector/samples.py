"""Shared helpers: read a sample file into records and turn an Event into comparable fields."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from vigil.collector.framing import records
from vigil.collector.parsers import parse

# Formats without a year (Snort, BSD syslog) take the year nearest to this reference time.
REF = 1700000000.0  # 2023-11-14T22:13:20Z
EXPECTATIONS = Path(__file__).parent / "expectations"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def observed(ev) -> dict | None:
    if ev is None:
        return None
    out = {k: v for k, v in ev.summary().items() if v is not None}
    if "time" in out:
        out["time"] = iso(out["time"])
    return out


def sample_records(path: Path):
    text = path.read_bytes().decode("utf-8", errors="replace")
    for first, count, rec in records(text):
        yield first, count, rec, parse(rec, ref=REF)


def sample_files(samples_dir: Path) -> list[Path]:
    return sorted(p for p in samples_dir.glob("*/*") if p.is_file())


def expectation_path(samples_dir: Path, sample: Path) -> Path:
    rel = sample.relative_to(samples_dir)
    return EXPECTATIONS / rel.parent / (rel.name + ".yaml")
