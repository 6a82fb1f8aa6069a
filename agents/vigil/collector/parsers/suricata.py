"""Suricata EVE JSON (any event_type; alert, anomaly and flow get their own fields).  Also accepts
an Elasticsearch search hit that wraps the event in ``_source`` (SELKS exports)."""
from __future__ import annotations

from ..event import INFO, LOW, Event, norm_action, proto_name, severity_from_priority, to_port
from ..syslog import iso_time
from .snort import rule_id


# The EVE event types Suricata 6-8 write (docs.suricata.io, "Eve JSON Format"); ``format`` is an
# InfluxDB tag, so any other name becomes ``suricata-other`` (the name itself stays in ``category``):
# a sender must not be able to make a new series per message.
EVENT_TYPES = frozenset((
    "alert", "anomaly", "arp", "bittorrent_dht", "dcerpc", "dhcp", "dnp3", "dns", "doh2", "drop",
    "fileinfo", "flow", "frame", "ftp", "ftp_data", "http", "http2", "ike", "ikev2", "krb5", "ldap",
    "mdns", "modbus", "mqtt", "netflow", "nfs", "pgsql", "pop3", "quic", "rdp", "rfb", "sip", "smb",
    "smtp", "snmp", "ssh", "stats", "tftp", "tls", "websocket"))


def looks_like(obj: dict) -> bool:
    return isinstance(obj.get("event_type"), str)


def unwrap(obj: dict) -> dict:
    src = obj.get("_source")
    return src if isinstance(src, dict) and "event_type" in src else obj


def parse(obj: dict, raw: str) -> Event:
    et = str(obj.get("event_type"))
    ev = Event("suricata", f"suricata-{et}" if et in EVENT_TYPES else "suricata-other", raw)
    ts = obj.get("timestamp") or obj.get("@timestamp")
    if isinstance(ts, str):
        ev.time = iso_time(ts.strip())
    host = obj.get("host")
    if isinstance(host, dict):
        host = host.get("name") or host.get("hostname")
    ev.device = str(host) if isinstance(host, (str, int)) and host != "" else None
    ev.src = _s(obj.get("src_ip"))
    ev.dst = _s(obj.get("dest_ip"))
    ev.sport = to_port(obj.get("src_port"))
    ev.dport = to_port(obj.get("dest_port"))
    ev.proto = proto_name(obj.get("proto"))
    ev.category = et
    alert = obj.get("alert")
    if et == "alert" and isinstance(alert, dict):
        ev.sig_id = rule_id(alert.get("gid"), alert.get("signature_id"))
        if isinstance(alert.get("rev"), int) and not isinstance(alert.get("rev"), bool):
            ev.extra["rev"] = alert["rev"]
        ev.sig_name = _s(alert.get("signature"))
        ev.category = _s(alert.get("category")) or "alert"
        ev.severity = severity_from_priority(alert.get("severity"))
        act = norm_action(alert.get("action"))
        ev.action = "alert" if act == "allow" else act or "alert"
    elif et == "anomaly" and isinstance(obj.get("anomaly"), dict):
        an = obj["anomaly"]
        ev.sig_name = _s(an.get("event"))
        ev.category = "anomaly-" + str(an.get("type") or "unknown")
        ev.severity = LOW
    elif et == "flow" and isinstance(obj.get("flow"), dict):
        fl = obj["flow"]
        ev.action = _s(fl.get("action")) or None
        ev.extra["flow_state"] = fl.get("state")
        ev.extra["flow_reason"] = fl.get("reason")
        ev.severity = INFO
    elif et == "drop":                  # IPS mode: a packet dropped (Suricata docs, "Eve JSON format")
        ev.action = "block"
        ev.severity = LOW
    else:
        ev.severity = INFO
    if isinstance(obj.get("app_proto"), str):
        ev.extra["app_proto"] = obj["app_proto"]
    return ev


def _s(v) -> str | None:
    return None if v is None or v == "" else str(v)
