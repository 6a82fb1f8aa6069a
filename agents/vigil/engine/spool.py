"""The engine's spool is the core's ``vigil.spool`` (shared with the simulated fleet of
``vigil.lab.simfleet``, which may not import the engine); kept here so the engine's imports stay."""
from ..spool import Spool, SpoolPublisher

__all__ = ["Spool", "SpoolPublisher"]
