"""What Vigil's programs say to each other, defined once, below every program.

Everything on the wire between engine, manager, collector, endpoint agent and decider, and what
is written to InfluxDB, has its one definition here: identifiers (``ids``), vocabularies
(``vocab``), and the payload kinds.  This package imports nothing of Vigil but itself: every
program may import it, it imports no program (see docs/ARCHITECTURE.md and tests/unit/test_imports.py).
"""
