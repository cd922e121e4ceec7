"""Benchmarks: tierflow against the same work written by hand, side by side (`make bench`)."""
