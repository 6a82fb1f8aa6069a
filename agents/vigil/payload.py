"""The MQTT payload envelope; defined in ``vigil.contracts.envelope`` (kept under this name for the
many modules that encode and decode through it)."""
from .contracts.envelope import MAJOR, PayloadError, decode, encode, now_ms

__all__ = ["MAJOR", "PayloadError", "decode", "encode", "now_ms"]
