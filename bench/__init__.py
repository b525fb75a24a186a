"""Quarry's benchmark: an osquery-perf load generator and the figures it produces."""
