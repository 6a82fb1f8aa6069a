"""The management host: ingest, policy, rule sets, collector, verdict service."""
