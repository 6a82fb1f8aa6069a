"""Fixtures of the lab tier beside the global ``lab``."""
from __future__ import annotations

import pytest

from tests.support.engine_lab import Events


@pytest.fixture
def events(lab):
    ev = Events(lab.mosquitto.port)
    try:
        yield ev
    finally:
        ev.close()

