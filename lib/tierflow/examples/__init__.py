"""Example data for the example jobs in ``conf/jobs`` (generated, never committed)."""
