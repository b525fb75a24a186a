"""Key material: the gateway's local CA, internal TLS, ZeroMQ CURVE keys."""
