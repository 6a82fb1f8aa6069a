"""The endpoint's decision path without the kernel: mode table, caches, fanotify parsing, and the
decider's loop driven with real file descriptors and a fake fanotify group."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import struct

import pytest

from vigil.config import ConfigError, loads
from vigil.endpoint import fanotify as fan
from vigil.endpoint.config import EndpointConfig
from vigil.endpoint.decide import IdentityCache, VerdictCache, decide
from vigil.endpoint.decider import Decider

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("mode,verdict,allow,action", [
    ("monitor", "malicious", True, "would-block"),
    ("monitor", "unknown", True, "allowed"),
    ("monitor", "benign", True, "allowed"),
    ("block-malicious", "malicious", False, "blocked"),
    ("block-malicious", "unknown", True, "allowed"),
    ("block-malicious", "grayware", True, "allowed"),
    ("lockdown", "unknown", False, "blocked"),
    ("lockdown", "grayware", False, "blocked"),
    ("lockdown", "benign", True, "allowed"),
    ("lockdown", "malicious", False, "blocked"),
])
def test_mode_table(mode, verdict, allow, action):
    assert decide(mode, verdict) == (allow, action)


def test_verdict_cache_expires_and_is_bounded():
    now = [100.0]
    c = VerdictCache(16, clock=lambda: now[0])
    c.put("a" * 64, "benign", "list:x", 10)
    assert c.get("a" * 64) == ("benign", "list:x")
    now[0] += 11
    assert c.get("a" * 64) is None and c.expired == 1
    for i in range(40):
        c.put(f"{i:064x}", "unknown", "", 100)
    assert len(c) == 16 and c.get(f"{39:064x}") is not None and c.get(f"{0:064x}") is None


def test_identity_cache_lru():
    c = IdentityCache(16)
    for i in range(20):
        c.put((1, i, 0, 0, 0), str(i))
    assert len(c) == 16 and c.get((1, 0, 0, 0, 0)) is None and c.get((1, 19, 0, 0, 0)) == "19"


def test_parse_fanotify_events():
    meta = struct.Struct("=IBBHQii")
    buf = meta.pack(24, 3, 0, 24, fan.FAN_OPEN_EXEC_PERM, 7, 1234) + meta.pack(24, 3, 0, 24, fan.FAN_OPEN_PERM, 8, 99)
    evs = fan.parse(buf)
    assert [(e.mask, e.fd, e.pid) for e in evs] == [(fan.FAN_OPEN_EXEC_PERM, 7, 1234), (fan.FAN_OPEN_PERM, 8, 99)]
    with pytest.raises(ValueError):
        fan.parse(meta.pack(24, 2, 0, 24, 0, 1, 1))


def test_config_validation():
    cfg = loads("endpoint_id: ep1\nmode: lockdown\nmounts: [/srv]\n", EndpointConfig)
    assert cfg.mode == "lockdown"
    with pytest.raises(ConfigError, match="mode"):
        loads("mode: paranoid\n", EndpointConfig)
    with pytest.raises(ConfigError, match="decision_deadline"):
        loads("decision_deadline: 60\n", EndpointConfig)
    with pytest.raises(ConfigError, match="mounts"):
        loads("mounts: [relative/path]\n", EndpointConfig)
    assert str(cfg.state_dir) in cfg.excluded()


class FakeGroup:
    fd = -1

    def __init__(self):
        self.answers: list[tuple[int, bool]] = []

    def respond(self, fd: int, allow: bool) -> None:
        self.answers.append((fd, allow))


@pytest.fixture
def rig(tmp_path):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    cfg = {"mode": "block-malicious", "decision_deadline": 0.2, "max_hash_bytes": 1 << 20, "cache_entries": 64,
           "excluded": [str(tmp_path / "excluded")]}
    group = FakeGroup()
    d = Decider(cfg, theirs, group)
    d.own_pids = {-5}
    yield d, group, ours, tmp_path
    ours.close()
    theirs.close()


def _file(path, data: bytes) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY), hashlib.sha256(data).hexdigest()


def _msgs(sock) -> list[dict]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(json.loads(sock.recv(65536)))
        except BlockingIOError:
            return out


def test_miss_asks_then_answer_resolves_and_caches(rig):
    d, group, agent, tmp = rig
    fd, sha = _file(tmp / "prog", b"\x7fELF program")
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd, 4242))
    assert group.answers == []          # waiting for the manager, with a deadline
    ask = _msgs(agent)
    assert ask[0]["t"] == "ask" and ask[0]["sha256"] == sha
    agent.send(json.dumps({"t": "verdict", "sha256": sha, "verdict": "malicious", "source": "yara:X",
                           "ttl": 60}).encode())
    d.on_messages()
    assert group.answers == [(fd, False)]
    ev = _msgs(agent)[0]
    assert ev["action"] == "blocked" and ev["source"] == "yara:X" and ev["pid"] == 4242
    # the same file again: identity and verdict from the caches, no new ask, answered at once
    fd2 = os.open(tmp / "prog", os.O_RDONLY)
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd2, 4243))
    assert group.answers[-1] == (fd2, False)
    assert [m["t"] for m in _msgs(agent)] == ["ev"]
    assert d.c["hashed"] == 1


def test_deadline_applies_mode_default_and_counts(rig):
    d, group, agent, tmp = rig
    d.mode = "lockdown"
    fd, _ = _file(tmp / "slow", b"unknown program")
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd, 1))
    d.expire(float("inf"))
    assert group.answers == [(fd, False)] and d.c["timeouts"] == 1
    d.mode = "block-malicious"
    fd, _ = _file(tmp / "slow2", b"another unknown")
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd, 1))
    d.expire(float("inf"))
    assert group.answers[-1] == (fd, True) and d.c["timeouts"] == 2


def test_offline_answer_and_push(rig):
    d, group, agent, tmp = rig
    d.mode = "lockdown"
    fd, sha = _file(tmp / "p", b"x")
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd, 1))
    agent.send(json.dumps({"t": "verdict", "sha256": sha, "error": "offline"}).encode())
    d.on_messages()
    assert group.answers == [(fd, False)] and d.c["offline_answers"] == 1
    # a pushed verdict fills the cache: the next exec is answered without asking
    agent.send(json.dumps({"t": "push", "verdicts": [{"sha256": sha, "verdict": "benign", "ttl": 60}]}).encode())
    agent.send(b"garbage")
    d.on_messages()
    assert d.c["bad_messages"] == 1
    _msgs(agent)
    for pid in (1, 2, 3):
        fd2 = os.open(tmp / "p", os.O_RDONLY)
        d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd2, pid))
        assert group.answers[-1] == (fd2, True)
    # allowed execs answered from the cache are summed per file and reported once per interval
    assert _msgs(agent) == [] and d.summary
    d.flush_summary()
    (summary,) = _msgs(agent)
    assert summary["t"] == "evs"
    (ev,) = summary["events"]
    assert (ev["count"], ev["pid"], ev["action"], ev["sha256"]) == (3, 3, "allowed", sha)


def test_excluded_own_and_plain_opens_are_allowed_without_hashing(rig):
    d, group, agent, tmp = rig
    fd, _ = _file(tmp / "excluded" / "tool", b"ours")
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd, 1))
    fd2, _ = _file(tmp / "data", b"plain file")
    d.on_event(fan.Event(fan.FAN_OPEN_PERM, fd2, os.getpid()))   # opened by pytest, not by ld.so
    fd3, _ = _file(tmp / "x", b"x")
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd3, -5))      # the agent itself
    assert group.answers == [(fd, True), (fd2, True), (fd3, True)]
    assert d.c["hashed"] == 0 and d.c["excluded"] == 1 and d.c["own"] == 1
    assert _msgs(agent) == []


def test_changed_file_is_rehashed(rig):
    d, group, agent, tmp = rig
    fd, sha1 = _file(tmp / "p", b"version 1")
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd, 1))
    d.expire(float("inf"))
    fd, sha2 = _file(tmp / "p", b"version 2, longer")
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd, 1))
    asks = [m["sha256"] for m in _msgs(agent) if m["t"] == "ask"]
    assert asks == [sha1, sha2]


class IgnoringGroup(FakeGroup):
    def __init__(self):
        super().__init__()
        self.ignores: list[int] = []
        self.flushes = 0

    def ignore(self, fd: int, mask: int) -> None:
        self.ignores.append(fd)

    def flush_ignores(self) -> None:
        self.flushes += 1


def test_kernel_cache_marks_benign_and_flushes_on_change(tmp_path):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    group = IgnoringGroup()
    d = Decider({"mode": "block-malicious", "decision_deadline": 0.2, "max_hash_bytes": 1 << 20,
                 "cache_entries": 64, "excluded": [], "kernel_cache": True}, theirs, group)
    d.own_pids = {-5}
    good_fd, good = _file(tmp_path / "good", b"good program")
    unk_fd, unk = _file(tmp_path / "unknown", b"unknown program")
    d.verdicts.put(good, "benign", "list:good.txt", 600)
    d.verdicts.put(unk, "unknown", "", 600)
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, good_fd, 1))
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, unk_fd, 1))
    assert group.ignores == [good_fd] and d.ignored == 1        # only benign files are left to the kernel
    ours.send(json.dumps({"t": "push", "verdicts": [{"sha256": "1" * 64, "verdict": "benign"}]}).encode())
    d.on_messages()
    assert group.flushes == 0                                   # benign news changes nothing
    ours.send(json.dumps({"t": "push", "verdicts": [{"sha256": unk, "verdict": "malicious"}]}).encode())
    d.on_messages()
    assert group.flushes == 0                                   # nor news about a file the kernel still asks about
    ours.send(json.dumps({"t": "push", "verdicts": [{"sha256": good, "verdict": "malicious"}]}).encode())
    d.on_messages()
    assert group.flushes == 1 and d.ignored == 0 and d.c["ignore_flushes_verdict"] == 1
    fd, _ = _file(tmp_path / "good", b"good program")
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd, 1))
    assert group.answers[-1] == (fd, False) and group.ignores == [good_fd]
    d.verdicts.put(good, "benign", "operator", 600)      # cleared again: marked again
    fd, _ = _file(tmp_path / "good", b"good program")
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd, 1))
    assert group.answers[-1] == (fd, True) and group.ignores == [good_fd, fd] and d.ignored == 1
    ours.send(json.dumps({"t": "mode", "mode": "lockdown"}).encode())
    d.on_messages()                                          # a mode change flushes every mark
    assert group.flushes == 2 and d.ignored == 0 and d.c["ignore_flushes_mode"] == 1
    ours.close()
    theirs.close()


def test_cached_allowed_exec_takes_the_short_path_and_is_still_reported(rig):
    """A cached benign exec is answered at once, counted as a cache hit and summed into the report."""
    d, group, agent, tmp = rig
    fd, sha = _file(tmp / "ok", b"\x7fELF fine")
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd, 10))
    agent.send(json.dumps({"t": "verdict", "sha256": sha, "verdict": "benign", "source": "list", "ttl": 60}).encode())
    d.on_messages()
    hits = d.verdicts.hits
    for pid in (11, 12, 13):
        fd2 = os.open(tmp / "ok", os.O_RDONLY)
        d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd2, pid))
        assert group.answers[-1] == (fd2, True)
        with pytest.raises(OSError):
            os.fstat(fd2)                    # the event's fd is closed
    assert d.verdicts.hits == hits + 3 and d.c["decisions_allowed"] == 4 and d.c["hashed"] == 1
    _msgs(agent)
    d.flush_summary()
    evs = [e for m in _msgs(agent) if m["t"] == "evs" for e in m["events"]]
    assert [(e["sha256"], e["count"], e["pid"], e["cached"]) for e in evs] == [(sha, 3, 13, True)]
