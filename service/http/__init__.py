"""The HTTP surface: a lean Starlette app mounted into the BentoML service (the hot path)."""
