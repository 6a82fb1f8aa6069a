"""Every panel query of every generated Grafana dashboard runs against a real InfluxDB that the real
pipeline filled, and the panels whose data this run produced show data.

The lab runs vigil-manager (ingest, policy, collector, verdict service) and vigil-engine (learning,
so automatic decisions are would-block) with real Mosquitto and InfluxDB; the client browses the
server and runs iperf3 through the bridge, the attacker runs nmap -sS, syslog lines (ModSecurity
SQLi burst, a CEF firewall block, an oversized frame) reach the collector over TCP and UDP, a real
vigil-endpoint (fanotify on a tmpfs of its own, block-malicious) runs an unknown and a listed-bad
file and kills a payload executed from a memfd (a behaviour rule), and an operator adds, removes
and re-adds a block.

Then each target is interpolated the way Grafana does for InfluxQL ($timeFilter, $__interval,
$__interval_ms, template variables by running the variable's own query: "All" becomes
``(v1|v2)`` with regex metacharacters escaped, as Grafana formats a multi-value regex) and sent to
InfluxDB's /query.  No query may fail; every panel not listed in EXPECTED_EMPTY (counters of
failures that a clean run does not produce) must return a non-null value.  About 25 s.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.support.endpoint_behaviour import memfd_payload_cmd
from tests.support.fanotify import mount_tmpfs, remove_tmpfs
from tests.support.waiting import wait_for
from vigil import control, dashboards
from vigil.common import InfluxConfig
from vigil.influx import InfluxError, InfluxHTTP
from vigil.lab.services import ManagedProcess, free_port, vigil_command

pytestmark = pytest.mark.lab

TIME_FILTER = "time > now() - 1h"
INTERVAL_S = 5            # what Grafana picks for a 1 h range on a ~1000 px wide panel
SQLI_SRC = "198.51.100.7"
BLOCKED_SRC = "203.0.113.5"
OPERATOR_VALUE = "10.77.0.99"
TRUE = Path("/bin/true").read_bytes()

# (dashboard uid, panel title) -> why a clean lab run leaves it empty (its query must still run)
EXPECTED_EMPTY = {
    ("vigil-traffic", "Flow batches lost or repeated (manager)"): "no batch is lost, repeated or malformed",
    ("vigil-endpoints", "Would-block (monitor)"): "the lab's agent runs block-malicious, not monitor",
    ("vigil-health", "Points dropped (since manager start)"): "InfluxDB keeps up; nothing dropped",
    ("vigil-health", "Write retries (since manager start)"): "InfluxDB answers every write",
    ("vigil-health", "Batches rejected by InfluxDB (since manager start)"): "no bad point",
    ("vigil-health", "Points dropped, retries, rejected batches"): "nothing dropped, retried or rejected",
    ("vigil-health", "Component and handler errors"): "no component fails",
}
# panels that may or may not have data in a clean run (timing-dependent counters)
MAY_BE_EMPTY = {
    ("vigil-health", "Rejected and malformed input"): "only payload_rejected/gaps, none in a clean run",
    ("vigil-decisions", "Proposals merged, expired, refused (manager)"): "merges depend on detection timing",
    ("vigil-endpoints", "Sample analysis"): "analysis of the unknown sample may not start within the run",
    ("vigil-endpoints", "Verdict requests and pushes"): "verdict_requests appears with the endpoint's ask",
}


# -- Grafana's interpolation for InfluxQL --------------------------------------------------------
_REGEX_META = re.compile(r"([\\^$*+?.()|\[\]{}/])")


def regex_escape(v: str) -> str:
    """Grafana's InfluxDB datasource escapes multi-value variable values for a /regex/."""
    return _REGEX_META.sub(r"\\\1", v)


def interpolate(query: str, variables: dict[str, list[str]]) -> str:
    q = query.replace("$timeFilter", TIME_FILTER)
    q = q.replace("$__interval_ms", str(INTERVAL_S * 1000)).replace("$__interval", f"{INTERVAL_S}s")

    def var(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise AssertionError(f"query uses ${name}, which is no variable of its dashboard: {query}")
        vals = [regex_escape(v) for v in variables[name]]
        return vals[0] if len(vals) == 1 else "(" + "|".join(vals) + ")"
    q = re.sub(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)", var, q)
    return q


def panels_of(board: dict):
    for p in board["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


def values(results: list[dict]) -> list:
    """Every value but the time column, of every row of every series."""
    return [v for res in results for series in res.get("series") or [] for row in series.get("values") or []
            for v in row[1:]]


def tag_values(results: list[dict], key: str) -> set[str]:
    return {(s.get("tags") or {}).get(key) for res in results for s in res.get("series") or []}


# -- helpers for the run ---------------------------------------------------------------------
def wait_stored(pred, timeout: float, what: str, lab):
    """wait_for, through the errors InfluxDB gives until the database appears with the first write."""
    return wait_for(pred, timeout, what, lab=lab, retry_on=(InfluxError,))


def count(db: InfluxHTTP, q: str) -> int:
    for res in db.query(q):
        for series in res.get("series") or []:
            return int(series["values"][0][1] or 0)
    return 0


def sqli_line(i: int) -> str:
    """An Apache error-log line as mod_security2 with the CRS writes it (synthetic)."""
    return (f"<131>Nov 23 10:00:0{i % 10} www apache-error: [Mon Nov 23 10:00:0{i % 10}.{i:06d} 2026] "
            f"[security2:error] [pid 10:tid 11] [client {SQLI_SRC}:{40000 + i}] [client {SQLI_SRC}] "
            f"ModSecurity: Warning. detected SQLi using libinjection. [file \"/usr/share/modsecurity-crs/"
            f"rules/REQUEST-942-APPLICATION-ATTACK-SQLI.conf\"] [line \"65\"] [id \"942100\"] "
            f"[msg \"SQL Injection Attack Detected via libinjection\"] [severity \"CRITICAL\"] "
            f"[tag \"attack-sqli\"] [hostname \"10.77.0.10\"] [uri \"/\"] [unique_id \"u{i}\"]")


def execute(path: Path) -> int | str:
    try:
        return subprocess.run([str(path)], capture_output=True, timeout=10).returncode
    except PermissionError:
        return "EPERM"


def test_every_dashboard_query_runs_against_the_real_pipeline(lab):
    t_start = time.monotonic()
    db = InfluxHTTP(InfluxConfig(url=lab.influx.url, database="vigil"))
    client, server, _attacker = lab.ip("client"), lab.ip("server"), lab.ip("attacker")
    run, mnt = mount_tmpfs("d")
    agent: ManagedProcess | None = None
    try:
        unknown, evil = mnt / "unknown", mnt / "evil"
        for path in (unknown, evil):
            path.write_bytes(TRUE + path.name.encode() + uuid.uuid4().bytes)
            path.chmod(0o755)
        bad = run / "bad.txt"
        bad.write_text(f"{hashlib.sha256(evil.read_bytes()).hexdigest()} dashboards-test\n")

        tcp, udp = free_port(), free_port()
        lab.start_manager(policy={"ladder": [60, 600]},
                          collector={"tcp": f"127.0.0.1:{tcp}", "udp": f"127.0.0.1:{udp}", "max_message_size": 4096},
                          verdicts={"known_bad": [str(bad)], "known_good": [], "clamd_socket": None})
        lab.wait_log("manager", "mqtt: connected", timeout=20)
        lab.start_engine(learning={"period": 3600},
                         enforcement={"manager_public_key": str(lab.run_dir / "state" / "manager" / "signing.pub")})
        lab.wait_log("engine", "mqtt: connected", timeout=30)
        sock = lab.run_dir / "manager.sock"

        cfg = {"endpoint_id": "lab-ep", "mqtt": lab.mosquitto.mqtt_config(), "mode": "block-malicious",
               "mounts": [str(mnt)], "address": client, "state_dir": str(run / "state-ep"),
               "control_socket": str(run / "ep.sock"), "batch_interval": 0.3, "decision_deadline": 3.0}
        (run / "endpoint.yaml").write_text(yaml.safe_dump(cfg))
        agent = ManagedProcess("endpoint", [*vigil_command("vigil-endpoint"), "-c", str(run / "endpoint.yaml")],
                               run).start()

        # traffic through the bridge: http and iperf3 from the client
        www = lab.run_dir / "www"
        www.mkdir(exist_ok=True)
        (www / "index.bin").write_bytes(os.urandom(1 << 20))
        lab.popen("server", ["python3", "-m", "http.server", "80", "--bind", server, "--directory", str(www)],
                  name="http")
        srv = lab.popen("server", ["iperf3", "-s", "-1", "-B", server], name="iperf3-server")
        for _ in range(3):
            lab.run("client", ["curl", "-sS", "--retry", "5", "--retry-connrefused", "-o", "/dev/null",
                               f"http://{server}/index.bin"])
        lab.run("client", ["iperf3", "-c", server, "-t", "2", "-J"], timeout=40)
        srv.proc.wait(10)

        # syslog: a SQLi burst (correlation waf-sqli-burst), a CEF firewall block, an oversized frame
        with socket.create_connection(("127.0.0.1", tcp)) as s:
            s.sendall("".join(sqli_line(i) + "\n" for i in range(6)).encode())
            s.sendall(b"<13>Nov 23 10:00:00 host app: " + b"x" * 5000 + b"\n")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(f"<134>CEF:0|Vigil|TestFW|1.0|100|Port blocked|8|src={BLOCKED_SRC} dst={server} "
                     f"spt=40000 dpt=22 proto=TCP act=blocked".encode(), ("127.0.0.1", udp))

        # the attacker scans the server: the engine reports would-block, the manager decides
        lab.run("attacker", ["nmap", "-sS", "-n", "-Pn", "-T4", "-p", "1-200", server], timeout=60, check=False)

        # an operator blocks, unblocks and blocks again (a second offence)
        control.call(sock, "decisions.add", scope="ip", value=OPERATOR_VALUE, duration=60, reason="dashboards test")
        control.call(sock, "decisions.delete", key=OPERATOR_VALUE)
        control.call(sock, "decisions.add", scope="ip", value=OPERATOR_VALUE, duration=60, reason="dashboards test")

        # the endpoint runs an unknown file (allowed) and a listed-bad one (denied)
        wait_for(lambda: "mqtt: connected" in agent.log_text() or not agent.alive(), 15, "the endpoint connected")
        assert agent.alive(), agent.log_text()
        assert execute(unknown) == 0
        assert execute(evil) == "EPERM"
        # and a payload executed from memory, which its behaviour rules kill
        payload_run = subprocess.run(memfd_payload_cmd("/bin/sleep", "5"), capture_output=True, timeout=30)
        assert payload_run.returncode == -9, payload_run

        # everything landed in InfluxDB
        wait_stored(lambda: count(db, "SELECT count(\"severity\") FROM engine_events WHERE \"type\" = 'scan'"), 20,
                    "the engine's scan event", lab)
        wait_stored(lambda: count(db, "SELECT count(\"value\") FROM correlation"), 20, "a correlation firing", lab)
        wait_stored(lambda: count(db, "SELECT count(\"id\") FROM decisions WHERE \"would_block\" != ''"), 20,
                    "a would-block decision", lab)
        wait_stored(lambda: count(db, "SELECT count(\"id\") FROM decisions WHERE \"offences\" > 1"), 10,
                    "the operator's second offence", lab)
        wait_stored(lambda: count(db, "SELECT sum(\"count\") FROM endpoint_executions WHERE \"action\" = 'blocked'"),
                    15, "the endpoint's blocked execution", lab)
        wait_stored(lambda: count(db, "SELECT sum(\"count\") FROM endpoint_behaviour WHERE \"action\" = 'killed'"),
                    15, "the endpoint's behaviour event", lab)
        wait_stored(lambda: count(db, "SELECT count(\"raw\") FROM security_event WHERE \"action\" = 'block'"), 10,
                    "the CEF block event", lab)
        # manager counters are cumulative: a rate needs two points (in two buckets) taken after the
        # counters above exist -- one periodic point (every 10 s) and the one a clean stop writes
        t_done = time.time_ns()
        wait_stored(lambda: count(db, f"SELECT count(\"mqtt_connects\") FROM manager_stats WHERE time > {t_done}"),
                    15, "a manager_stats point after the run", lab)
        # more of the same between the two points, so that counter increases are not all zero
        with socket.create_connection(("127.0.0.1", tcp)) as s:
            s.sendall(b"<13>Nov 23 10:00:00 host app: " + b"x" * 5000 + b"\n" + sqli_line(7).encode() + b"\n")
        control.call(sock, "decisions.delete", key=OPERATOR_VALUE)
        time.sleep(INTERVAL_S - time.time() % INTERVAL_S + 0.5)
        lab.stop("manager")
    finally:
        if agent is not None:
            agent.stop(timeout=5)
        remove_tmpfs(run)

    # -- every panel query of every dashboard -------------------------------------------------
    report: list[str] = []
    failures: list[str] = []
    n_targets = n_with_data = n_nonzero = n_panels = n_panels_with_data = n_queries = 0
    got: dict[tuple[str, str, str], list[dict]] = {}
    for _name, text in dashboards.generate().items():
        board = json.loads(text)
        uid = board["uid"]
        variables: dict[str, list[str]] = {}
        for v in board["templating"]["list"]:
            if v["type"] != "query":
                continue
            found = sorted({row[1] for res in db.query(v["query"]) for s in res.get("series") or []
                            for row in s["values"]})
            assert found, f"{uid}: variable ${v['name']} ({v['query']}) has no values"
            variables[v["name"]] = found
        for panel in panels_of(board):
            n_panels += 1
            panel_data = panel_nonzero = False
            for t in panel["targets"]:
                assert t["rawQuery"] is True and t["datasource"] == dashboards.DS
                n_targets += 1
                data = False
                # "All" (every value) as the operator first sees it, then each single value
                for sel in [variables] + [{**variables, k: [v]} for k, vs in variables.items() for v in vs[:1]]:
                    q = interpolate(t["query"], sel)
                    assert not re.search(r"\$[A-Za-z_{]", q), q
                    n_queries += 1
                    try:
                        results = db.query(q, epoch="ms")
                    except InfluxError as exc:
                        failures.append(f"{uid} / {panel['title']} / {t['refId']}: {exc}\n    {q}")
                        continue
                    if sel is variables:
                        got[(uid, panel["title"], t["refId"])] = results
                        vals = values(results)
                        data = any(v is not None for v in vals)
                        nonzero = any(v not in (None, 0, "") for v in vals)
                        n_nonzero += nonzero
                        panel_nonzero |= nonzero
                n_with_data += data
                panel_data |= data
            n_panels_with_data += panel_data
            key = (uid, panel["title"])
            state = "data " if panel_nonzero else "zeros" if panel_data else "empty"
            report.append(f"{state} {uid} / {panel['title']}")
            if not panel_data and key not in EXPECTED_EMPTY and key not in MAY_BE_EMPTY:
                failures.append(f"{uid} / {panel['title']}: no data, but this run produced its data")
    print(f"\n{n_panels} panels, {n_targets} targets, {n_queries} queries run; "
          f"{n_panels_with_data} panels ({n_with_data} targets) returned data, {n_nonzero} targets non-zero; "
          f"{time.monotonic() - t_start:.0f} s")
    print("\n".join(report))
    assert not failures, "\n".join(failures)

    # and the data is the run's: a few figures an operator would look at first
    assert values(got[("vigil-fleet", "Engines running", "A")]) == [1]
    assert values(got[("vigil-fleet", "Engines learning", "A")]) == [1]
    services = got[("vigil-traffic", "Services in the time range", "A")]
    assert {"80", "5201"} <= tag_values(services, "port"), services
    origins = tag_values(got[("vigil-decisions", "Decisions created by origin", "A")], "origin")
    assert {"operator", "correlation"} <= origins and origins & {"engine-local", "flow-anomaly"}, origins
    assert {"allowed", "blocked"} <= tag_values(got[("vigil-endpoints", "Executions by action", "A")], "action")
    sigs = values(got[("vigil-security", "Top signatures (latest 5000 events)", "A")])
    assert "SQL Injection Attack Detected via libinjection" in sigs
    assert "waf-sqli-burst" in values(got[("vigil-security", "Recent correlation firings", "A")])
    talkers = values(got[("vigil-traffic", "Top talkers (busiest source per interval)", "A")])
    assert client in talkers, talkers
    assert all(k[1] in {p["title"] for b in map(json.loads, dashboards.generate().values())
                        for p in panels_of(b) if b["uid"] == k[0]} for k in [*EXPECTED_EMPTY, *MAY_BE_EMPTY])
