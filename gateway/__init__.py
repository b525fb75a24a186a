"""The HTTPS gateway osquery talks to: stateless, answers check-ins from memory.

Read `osquery_api.py` first: it is the whole osquery protocol surface (`routing.py` is the
little plumbing under it, `app.py` the wiring). The HTTP/1.1 server is the gateway's own
(`http_connection.py`, deadlines in `connection_sweep.py`; `serving.py` runs one process,
`workers.py` several, `server.py` starts either). The caches it answers from
(`node_cache.py`, `config_cache.py`, `live_queries.py`) are fed by the services' gRPC
watch streams; writes leave through `activity_batcher.py` (gRPC, in
batches) and `log_forwarder.py` (ZeroMQ to the ingest service). `client_certificates.py`
reads each TLS connection's verified client certificate for enrollment; `read_buffers.py`
hands TLS buffers' memory back to the system: a closed connection's, and the pages a large
body grew in an open one (docs/adr/0017-tls-buffer-pages-handed-back.md).
"""
