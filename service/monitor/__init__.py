"""The monitor process: BentoML service, its app, analysis runs, rollouts and their evidence, the
offline gate, webhooks. Nothing here imports ``service.gateway``."""
