"""Load test: locustfile, ceiling, compare."""
