"""The layer below the services: what every Quarry process runs on, and the command line.

Layers, lowest first; a module imports only from its own layer or lower ones, and none
imports a service package (tests/test_layering.py; docs/architecture.md):

- `runtime/`: settings, logging, the metrics endpoint, shutdown signals, small shared tools;
- `state/`: the state directory's map, the state database and its migrations, change feeds,
  the carve store;
- `access/`: admin tokens, roles and the audit log;
- `encryption/`: key material: the gateway's local CA, internal TLS, ZeroMQ CURVE keys;
- `serving/`: running a service process: gRPC servers and channels, start-up, entry points;
- `cli/`: the `quarry` command: the cluster supervisor, the admin commands.
"""
