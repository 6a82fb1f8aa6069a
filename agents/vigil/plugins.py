"""Build a daemon's optional parts from a registry of (config section, "module:factory")."""
from __future__ import annotations

import importlib
from typing import Any


def build(registry: list[tuple[str, str]], cfg: Any, ctx: Any) -> list[Any]:
    """One part per section that is present and not ``enabled: false``; each factory takes
    (section config, context).  Imports are lazy, so a daemon loads only the parts it runs."""
    parts = []
    for section, target in registry:
        sub = getattr(cfg, section, None)
        if sub is None or not getattr(sub, "enabled", True):
            continue
        module, _, factory = target.partition(":")
        parts.append(getattr(importlib.import_module(module), factory)(sub, ctx))
    return parts
