"""MQTT topic names of DESIGN.md, in one place."""
ROOT = "vigil/v1"
SHARE_GROUP = "vigil"


def engine(engine_id: str, leaf: str) -> str:
    """``leaf``: status, flows, events, ruleset, ruleset/delta, ruleset/state."""
    return f"{ROOT}/engine/{engine_id}/{leaf}"


def endpoint(endpoint_id: str, leaf: str) -> str:
    """``leaf``: status, verdict/request, events."""
    return f"{ROOT}/endpoint/{endpoint_id}/{leaf}"


VERDICTS = f"{ROOT}/verdicts"
BEHAVIOUR_EXCEPTIONS = f"{ROOT}/behaviour/exceptions"   # retained: the operator's behaviour-rule exceptions


def shared(topic: str, group: str = SHARE_GROUP) -> str:
    """An MQTT v5 shared subscription: the broker hands each message to one group member."""
    return f"$share/{group}/{topic}"


def device_of(topic: str) -> tuple[str, str, str] | None:
    """``vigil/v1/engine/e1/flows`` -> ("engine", "e1", "flows"); None when not ours."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "vigil" or parts[1] != "v1" or parts[2] not in ("engine", "endpoint"):
        return None
    return parts[2], parts[3], "/".join(parts[4:])
