# Shared by linear.py and free.py (the roles tier's strategies; see molecule.yml).
#
# Plays on the fleet's containers run through Mitogen: one Python per container kept open over
# `podman exec -i`, instead of a fork, a podman exec and a fresh interpreter per task (a command
# task costs ~0.05 s instead of ~0.4 s). Every other play (Molecule's own create/destroy on
# localhost, whose async podman tasks Mitogen's local connection does not finish, and the
# scenario's localhost plays that launch the operator runs) keeps Ansible's own strategy.
from __future__ import annotations

import ansible_mitogen.loaders
import ansible_mitogen.strategy


def _on_podman(strategy, play) -> bool:
    hosts = strategy._inventory.get_hosts(play.hosts)
    return bool(hosts) and all(h.get_vars().get("ansible_connection") == "podman" for h in hosts)


def strategy_module(name: str) -> type:
    base = ansible_mitogen.loaders.strategy_loader.get(f"ansible.builtin.{name}", class_only=True)
    mixin = ansible_mitogen.strategy.StrategyMixin

    class StrategyModule(mixin, base):
        _vigil_mitogen = False

        def run(self, iterator, play_context, result=0):
            self._vigil_mitogen = _on_podman(self, iterator._play)
            if self._vigil_mitogen:
                return mixin.run(self, iterator, play_context)
            return base.run(self, iterator, play_context)

        def _queue_task(self, host, task, task_vars, play_context):
            owner = mixin if self._vigil_mitogen else base
            return owner._queue_task(self, host, task, task_vars, play_context)

        def _execute_meta(self, task, play_context, iterator, target_host):
            owner = mixin if self._vigil_mitogen else base
            return owner._execute_meta(self, task, play_context, iterator, target_host)

    return StrategyModule
