"""Batch jobs: sources, contracts, the tier planner, the runner and run records."""
