"""The ingest service: log batches from gateways over ZeroMQ, stored in ClickHouse, then acked."""
