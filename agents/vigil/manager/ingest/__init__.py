"""Ingest: engine flow batches, statuses and events -> InfluxDB points (``component``).  It only
writes; its config section is ``manager.config.IngestConfig``."""
