"""Identifiers that become MQTT topic levels: engine, endpoint and manager ids."""
from __future__ import annotations

import re

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID.match(value) is not None


def check_id(value: str, key: str) -> None:
    """Raise ``ValueError("<key>: ...")`` unless ``value`` is usable as one MQTT topic level."""
    if not valid_id(value):
        raise ValueError(f"{key}: must be 1-64 characters of letters, digits, '.', '_' or '-' "
                         f"(it becomes an MQTT topic level), got {value!r}")
