"""The gateway worker process: BentoML service, data plane, batching, routing follower, recording
and the HTTP API. Nothing here imports ``service.monitor``."""
