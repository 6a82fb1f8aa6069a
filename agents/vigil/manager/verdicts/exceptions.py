"""Operator exceptions to the endpoints' behaviour rules, kept by the manager and pushed to the fleet.

The whole set is one retained message on ``vigil/v1/behaviour/exceptions`` (contract
``BehaviourExceptions``): published when the manager starts, after every change and again after
each reconnect to the broker (a broker restarted without persistence forgets retained messages).
An agent that (re)connects gets it from the broker and applies, without a restart, the exceptions
whose ``endpoints`` name it.  The set is saved in the manager's state directory
(``behaviour-exceptions.json``, written atomically); an entry of the file that does not check out
is dropped at load, logged and counted (``behaviour_exceptions_bad_stored``).

Control methods: ``behaviour.exceptions.list``, ``behaviour.exceptions.add`` (rule, path, unit,
user, endpoints, comment, id in ``exception``), ``behaviour.exceptions.remove`` (id).
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ... import topics
from ...contracts.endpoint import BehaviourException, BehaviourExceptions
from ...contracts.envelope import PayloadError
from ...control import ControlError
from ...files import atomic_write

log = logging.getLogger(__name__)

MAX_EXCEPTIONS = 256       # the agent refuses more (its decider gets the set in one datagram)


class ExceptionBook:
    def __init__(self, path: Path, ctx):
        self.path = path
        self.ctx = ctx
        self.counters = ctx.counters
        self._lock = threading.Lock()
        self._items: dict[str, BehaviourException] = {}
        self._published_at_connect = -1      # the mqtt_connects count when last published
        self._load()
        ctl = ctx.control
        ctl.register("behaviour.exceptions.list", self.ctl_list)
        ctl.register("behaviour.exceptions.add", self.ctl_add)
        ctl.register("behaviour.exceptions.remove", self.ctl_remove)

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.counters.inc("behaviour_exceptions_bad_stored")
            log.error("behaviour exceptions: cannot read %s (%s); starting with none", self.path, exc)
            return
        for body in raw if isinstance(raw, list) else []:
            try:
                e = BehaviourException.from_body(body)
            except PayloadError as exc:
                self.counters.inc("behaviour_exceptions_bad_stored")
                log.error("behaviour exceptions: dropped a stored entry of %s: %s", self.path, exc)
                continue
            self._items[e.id] = e

    def _save(self) -> None:
        atomic_write(self.path, json.dumps([e.body() for e in self._items.values()], indent=1), mode=0o640)

    def publish(self) -> None:
        with self._lock:
            msg = BehaviourExceptions(exceptions=list(self._items.values()))
        self._published_at_connect = self.counters.get("mqtt_connects")
        self.ctx.mqtt.publish(topics.BEHAVIOUR_EXCEPTIONS, msg.encode(self.ctx.manager_id), qos=1, retain=True)
        self.counters.inc("behaviour_exceptions_published")

    def tick(self) -> None:
        """Publish again after a reconnect (called from the verdict service's tick)."""
        if self.ctx.mqtt.connected.is_set() and self.counters.get("mqtt_connects") != self._published_at_connect:
            self.publish()

    def __len__(self) -> int:
        return len(self._items)

    # -- control methods -------------------------------------------------------------------
    def ctl_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e.body() for e in self._items.values()]

    def ctl_add(self, exception: dict) -> dict[str, Any]:
        """``exception``: {rule, path, unit, user, endpoints, comment, id} (id generated if absent)."""
        if not isinstance(exception, dict):
            raise ControlError("invalid", "exception: an object is needed")
        body = {**exception, "created": int(time.time() * 1000)}
        body["id"] = body.get("id") or f"x{uuid.uuid4().hex[:8]}"
        try:
            e = BehaviourException.from_body(body)
        except PayloadError as exc:
            self.counters.inc("behaviour_exceptions_refused")
            raise ControlError("invalid", str(exc).removeprefix("bad-field: ")) from None
        with self._lock:
            if e.id in self._items:
                raise ControlError("invalid", f"an exception {e.id!r} exists already")
            if len(self._items) >= MAX_EXCEPTIONS:
                raise ControlError("invalid", f"at most {MAX_EXCEPTIONS} exceptions")
            self._items[e.id] = e
            self._save()
        log.info("behaviour exceptions: added %s (rule %s, path %s, unit %s, user %s, endpoints %s)",
                 e.id, e.rule, e.path, e.unit, e.user, e.endpoints or "all")
        self.publish()
        return e.body()

    def ctl_remove(self, id: str) -> dict[str, Any]:
        with self._lock:
            e = self._items.pop(id, None) if isinstance(id, str) else None
            if e is None:
                raise ControlError("not-found", f"no behaviour exception {id!r}")
            self._save()
        log.info("behaviour exceptions: removed %s", id)
        self.publish()
        return e.body()
