"""The REST API process: JSON over HTTPS, translated into the services' admin gRPC calls
with the caller's own token (docs/api.md, docs/adr/0014-rest-api-over-grpc.md)."""
