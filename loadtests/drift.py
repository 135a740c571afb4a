"""Whether the load test's users send drifted inputs now (the drift shape turns it on midway)."""

drifting = False
DRIFTED = {"mean radius": 1.5, "worst texture": 1.5}
"""Feature name -> factor while drifting (the demo's drift)."""
