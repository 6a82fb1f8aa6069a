"""The lab: network namespaces and real services on one machine, for tests and demos."""
