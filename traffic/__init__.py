"""Traffic: which variant of an endpoint answers a request. Pure logic: no HTTP, no BentoML."""
