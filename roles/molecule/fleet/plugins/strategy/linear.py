# ansible.builtin.linear for the roles tier: Mitogen on the fleet's containers (_mitogen_podman.py).
# molecule.yml puts this directory on ANSIBLE_STRATEGY_PLUGINS, where this file shadows the
# builtin, so plays that name their strategy (site.yml's `strategy: free`) get it too, and so do
# the operator runs side_effect.yml launches (they inherit the environment). Operators never see it.
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _mitogen_podman import strategy_module  # noqa: E402

StrategyModule = strategy_module("linear")
