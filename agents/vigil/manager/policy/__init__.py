"""The policy: detections over flow batches and engine events (``detections``, ``baselines``),
the decision store with its ladder, allowlist and unblock suppression (``decisions``), the fleet
view and the signed rule-set publisher (``fleet``), and the component that wires them to the bus
and the control socket (``component``).  Its config section is ``config.PolicyConfig``.

Kept empty on purpose: the manager's config imports ``policy.config`` and must not load the rest.
"""
