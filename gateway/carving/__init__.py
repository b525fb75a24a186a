"""File carving: the sessions osquery uploads carved files through, stored on local disk.

`limits` reads the QUARRY_CARVE_* settings, the carve store (quarry/state/carve_store.py, in
the state layer below the services) keeps each carve's data file and its progress in a
SQLite index under the state directory (shared by every gateway worker on the machine,
and read directly by `quarry carve`), and `sessions` applies osquery's start and continue
requests to it (docs/osquery-protocol.md §10, docs/carving.md).
"""
