"""Publish signed rule sets to an engine the way the manager does, and read the kernel's view.

``RulesetPublisher(mqtt_cfg, key_dir)`` generates (or loads) a manager key pair in ``key_dir``;
engines are configured with ``publisher.public_key_path``.  ``snapshot()`` / ``delta()`` sign and
publish (snapshots retained, as the manager does); ``raw()`` sends arbitrary bytes (for rejection
tests).  ``states`` collects what the engine reports on ``ruleset/state``.

``kernel_set(run, name)`` lists one set of ``bridge vigil`` with ``nft -j`` through ``run``
(e.g. ``lambda argv: lab.run("engine", argv)``) and returns {element text: seconds left or None}.
``kernel_elements(run, name)`` returns the set's element texts and raises ``KernelSetError`` when
nft fails, by its exit status or by ``run`` raising CalledProcessError (no ``bridge vigil`` table or
no such set); ``missing_ok=True`` makes it return None then (waiting for the table to appear).
"""
from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from vigil import payload, ruleset, topics
from vigil.common import MqttConfig
from vigil.config import from_dict
from vigil.mqtt import MqttClient, new_client_id


class RulesetPublisher:
    def __init__(self, mqtt_cfg: dict, key_dir: Path, engine_id: str = "e1", sender: str = "lab-manager",
                 nodelay: bool = True, binary: bool = False):
        self.engine_id = engine_id
        self.binary = binary          # publish binary (vigil.rulewire) instead of JSON
        self.sender = sender
        self.key, self.public = ruleset.generate_keypair(Path(key_dir))
        self.public_key_path = Path(key_dir) / ruleset.PUBLIC_KEY_FILE
        self.generation = 0
        self.states: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.mqtt = MqttClient(from_dict(mqtt_cfg, MqttConfig), new_client_id("test-rulesets"))
        self.mqtt.subscribe(topics.engine(engine_id, "ruleset/state"), self._on_state)
        self.mqtt.start()
        if not self.mqtt.wait_connected(10):
            raise RuntimeError("test publisher cannot connect to the broker")
        if nodelay:
            # Without TCP_NODELAY a publish that follows our PUBACK of a state message waits for
            # the broker's delayed ACK (~40 ms): Nagle, not the engine.
            sock = self.mqtt.paho.socket()
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.mqtt.stop()

    def _on_state(self, msg) -> None:
        if not msg.payload:
            return
        with self._cond:
            self.states.append(payload.decode(msg.payload, "ruleset-state"))
            self._cond.notify_all()

    def wait_state(self, pred: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for s in reversed(self.states):
                    if pred(s):
                        return s
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no ruleset/state matched within {timeout}s; last: "
                                       f"{self.states[-1] if self.states else None}")
                self._cond.wait(left)

    def clear_states(self) -> None:
        with self._cond:
            self.states.clear()

    # -- publishing -------------------------------------------------------------------------
    def snapshot(self, entries: Iterable[dict], generation: int | None = None, mode: str | None = None,
                 issued_at: int | None = None, key=None, retain: bool = True) -> int:
        gen = self.generation + 1 if generation is None else generation
        body = ruleset.snapshot_body(self.engine_id, gen, list(entries), mode=mode, issued_at=issued_at)
        raw = self._encode("ruleset", body, key)
        self.raw("ruleset", raw, retain=retain)
        self.generation = max(self.generation, gen)
        return gen

    def delta(self, add: Iterable[dict] = (), remove: Iterable[dict] = (), base: int | None = None,
              generation: int | None = None, mode: str | None = None, key=None) -> int:
        base = self.generation if base is None else base
        gen = base + 1 if generation is None else generation
        body = ruleset.delta_body(self.engine_id, base, gen, list(add), list(remove), mode=mode)
        self.raw("ruleset/delta", self._encode("ruleset-delta", body, key))
        self.generation = max(self.generation, gen)
        return gen

    def _encode(self, kind: str, body: dict, key=None) -> bytes:
        if self.binary:
            from vigil import rulewire
            return rulewire.encode(kind, self.sender, body, key or self.key)
        return ruleset.encode_signed(kind, self.sender, body, key or self.key)

    def raw(self, leaf: str, data: bytes, retain: bool = False, timeout: float = 30.0) -> None:
        if not self.mqtt.publish_wait(topics.engine(self.engine_id, leaf), data, qos=1, retain=retain,
                                      timeout=timeout):
            raise RuntimeError(f"publish to {leaf} was not acknowledged")


def drop(value: str, ttl: int | None = None, scope: str | None = None, id: str | None = None) -> dict:
    scope = scope or ("flow" if "|" in value else "cidr" if "/" in value else "ip")
    return ruleset.entry(id or f"d-{value}", "drop", scope, value, ttl, "test", "integration test")


def allow(value: str, ttl: int | None = None) -> dict:
    return ruleset.entry(f"a-{value}", "allow", "cidr" if "/" in value else "ip", value, ttl, "test", "allow")


def kernel_set(run: Callable[[list[str]], Any], name: str) -> dict[str, float | None]:
    """{element: seconds until expiry (None: no timeout)} of ``bridge vigil <name>``, from nft -j."""
    r = run(_list_set(name))
    return dict(_elements(json.loads(r.stdout)))


class KernelSetError(AssertionError):
    """Listing a set of ``bridge vigil`` failed: no such table or set, or nft refused."""


def kernel_elements(run: Callable[[list[str]], Any], name: str, missing_ok: bool = False) -> set[str] | None:
    """The elements of ``bridge vigil <name>``.  When nft fails (no such table or set) this raises
    ``KernelSetError`` with nft's message, so a broken enforcement table fails the test that reads
    it; ``missing_ok=True`` returns None instead, for a caller that waits for the table to appear."""
    try:
        r = run(_list_set(name))
    except subprocess.CalledProcessError as exc:
        if missing_ok:
            return None
        raise KernelSetError(f"nft list set bridge vigil {name} failed: {exc.stderr or exc}") from None
    if r.returncode != 0:
        if missing_ok:
            return None
        raise KernelSetError(f"nft list set bridge vigil {name} failed ({r.returncode}): {r.stderr}")
    return {el for el, _ in _elements(json.loads(r.stdout))}


def _list_set(name: str) -> list[str]:
    return ["nft", "-j", "list", "set", "bridge", "vigil", name]


def _elements(doc: dict) -> Iterator[tuple[str, float | None]]:
    """(element text, seconds until expiry or None) for every element of every set in an nft -j document."""
    for item in doc.get("nftables", []):
        s = item.get("set")
        if not s:
            continue
        for el in s.get("elem") or []:
            expires = None
            if isinstance(el, dict) and "elem" in el:
                expires = el["elem"].get("expires")
                el = el["elem"]["val"]
            yield _text(el), expires


def _text(v: Any) -> str:
    if isinstance(v, dict):
        if "prefix" in v:
            return f"{v['prefix']['addr']}/{v['prefix']['len']}"
        if "concat" in v:
            return " . ".join(_text(x) for x in v["concat"])
        if "range" in v:
            return "-".join(_text(x) for x in v["range"])
    return str(v)
