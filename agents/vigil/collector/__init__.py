"""The collector: syslog listeners, parsers for third-party security logs, correlation rules.

``server`` receives syslog (UDP, TCP with octet counting or LF framing, TLS), ``parsers`` turn a
message into one normalised ``Event`` (``event``), ``correlation`` runs YAML rules over the events
and proposes decisions, and ``component`` wires all of it into the manager.
"""
