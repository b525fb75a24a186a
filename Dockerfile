# One image for every Quarry process: `docker run IMAGE SERVICE` runs `quarry serve SERVICE`
# (gateway, enroll, config, distributed or ingest); the default is the gateway.
# Kubernetes manifests: deploy/kubernetes/; one host with docker compose: deploy/compose/.

# Build stage: a virtual environment with Quarry and its dependencies, copied whole into
# the runtime stage so no compiler, pip cache or build tree ships in the image.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/quarry
WORKDIR /src
COPY pyproject.toml README.md ./
COPY quarry/ quarry/
COPY protos/ protos/
COPY gateway/ gateway/
COPY enroll_service/ enroll_service/
COPY config_service/ config_service/
COPY distributed_service/ distributed_service/
COPY ingest_service/ ingest_service/
COPY api_service/ api_service/
COPY osquery_config/ osquery_config/
RUN /opt/quarry/bin/pip install .

FROM python:3.11-slim
# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it and fsGroup matches.
RUN groupadd --system --gid 10001 quarry \
    && useradd --system --uid 10001 --gid quarry --home-dir /var/lib/quarry --no-create-home quarry \
    && mkdir -p /var/lib/quarry /etc/quarry/keys \
    && chown quarry:quarry /var/lib/quarry /etc/quarry/keys
COPY --from=build /opt/quarry /opt/quarry
ENV PATH=/opt/quarry/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    QUARRY_STATE_DIR=/var/lib/quarry \
    QUARRY_BIND_HOST=0.0.0.0
# SQLite state, the ingest spool, generated TLS files and chdb live here.
VOLUME ["/var/lib/quarry"]
WORKDIR /var/lib/quarry
USER 10001:10001
# gateway HTTPS; enroll, config, distributed, ingest gRPC; ingest ZeroMQ; metrics (+ /healthz)
EXPOSE 8443 50051 50052 50053 50054 50055 9400 9401 9402 9403 9404
ENTRYPOINT ["quarry", "serve"]
CMD ["gateway"]
