"""Quarry test suite: real processes, real ClickHouse, an osquery emulator."""
