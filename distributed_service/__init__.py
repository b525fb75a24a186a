"""Distributed service: live query campaigns and the per-host account of each."""
