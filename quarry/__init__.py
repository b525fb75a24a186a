"""Quarry's command line and the thin runtime every service shares.

Settings, logging, the metrics endpoint, gRPC plumbing and process start-up live
here; no business logic does (that belongs to the service packages).
"""
