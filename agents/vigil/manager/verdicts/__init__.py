"""The manager's verdict service: every executable hash seen by endpoints, and what it is.

``VerdictService`` (service.py) answers endpoints' MQTT v5 verdict requests from the SQLite store
(store.py), queues unknown hashes for the analysis backends (backends.py), pushes verdict changes on
``vigil/v1/verdicts`` and proposes quarantine decisions when an endpoint runs a malicious file.
"""
