"""The HTTPS gateway osquery talks to: stateless, answers check-ins from memory.

Read `osquery_api.py` first: it is the whole osquery protocol surface (`asgi.py` is the
little HTTP plumbing under it, `app.py` the wiring). The caches it answers from
(`node_cache.py`, `config_cache.py`, `live_queries.py`) are fed by the services' gRPC
watch streams; writes leave through `activity_batcher.py` (gRPC, in
batches) and `log_forwarder.py` (ZeroMQ to the ingest service). `client_certificates.py`
captures each TLS connection's verified client certificate for enrollment;
`idle_connections.py` keeps what an idle keep-alive connection holds small (and writes
each answer in one piece).
"""
