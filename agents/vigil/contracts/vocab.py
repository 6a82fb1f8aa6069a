"""The words the programs exchange, each list written once."""
from __future__ import annotations

# -- rule sets (manager -> engine) and decisions ------------------------------------------------
ACTIONS = ("drop", "allow")                 # what a rule-set entry does
SCOPES = ("ip", "cidr", "flow", "mac")      # what a rule-set entry matches (mac: a sender, mac|port)
FLOW_PROTOS = ("tcp", "udp", "sctp")        # protocols a flow-scoped entry may name
MAX_TEXT = 1024                             # id, origin, reason of an entry
MAX_TTL = 10 * 365 * 86400                  # seconds

# -- engines ----------------------------------------------------------------------------------------
MODES = ("learning", "enforcing")           # an engine's mode
ENGINE_STATES = ("starting", "running", "stopped", "offline")
# what an engine did about one of its own detections (engine events' ``action``; ``held``: a
# decision the engine holds because the evidence may be incomplete -- never one the manager takes)
EVENT_ACTIONS = ("none", "would-block", "block", "block-refused", "block-failed", "held")
NOT_DECIDED = ("none", "held")      # event actions the manager never turns into a decision

# -- severities, lowest first: engine events, collector events, the policy's floor ----------------
SEVERITY_RANK = {"info": 0, "low": 1, "medium": 2, "warning": 2, "high": 3, "critical": 4}
SEVERITIES = tuple(SEVERITY_RANK)

# -- endpoints and verdicts ----------------------------------------------------------------------
VERDICTS = ("benign", "malicious", "grayware", "unknown")
ENDPOINT_MODES = ("monitor", "block-malicious", "lockdown")
EXEC_ACTIONS = ("allowed", "blocked", "would-block")   # what the endpoint did with one execution
RESPONSE_STATUS = ("ok", "error")
# what the endpoint did when one of its behaviour rules matched (issue 17)
BEHAVIOUR_ACTIONS = ("blocked", "killed", "would-block", "reported")
