# One image for every Quarry process: `docker run IMAGE SERVICE` runs `quarry serve SERVICE`
# (gateway, enroll, config, distributed or ingest); the default is the gateway.
# Kubernetes manifests: deploy/kubernetes/; one host with docker compose: deploy/compose/.
#
# A server image: no embedded ClickHouse (chdb is the `embedded` extra), so ingest needs
# QUARRY_CLICKHOUSE_URL (docs/deploy.md, "The image"). Reproducible: the base image is
# pinned by digest and the dependencies by requirements.lock, with hashes
# (deploy/image/lock_requirements.py refreshes it; docs/deploy.md says when).

# The digest of python:3.11-slim (a multi-platform index). To move to a newer one:
# `docker buildx imagetools inspect python:3.11-slim`, and put its digest here.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# Build stage: a virtual environment with Quarry and its dependencies, copied whole into
# the runtime stage so no compiler, pip, cache or build tree ships in the image.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# binutils for strip: the wheels' shared libraries carry symbols, half of their size.
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends binutils >/dev/null \
    && rm -rf /var/lib/apt/lists/*
# No pip inside the environment: the base image's pip installs into it (--python).
RUN python -m venv --without-pip /opt/quarry
WORKDIR /src
# Dependencies first, in their own layer: rebuilt only when the lock changes, not on every
# source change.
COPY requirements.lock ./
RUN pip --python /opt/quarry/bin/python install --no-deps --require-hashes -r requirements.lock \
    && find /opt/quarry -name '*.so*' -type f -exec strip --strip-unneeded {} +
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
# --no-deps: everything it needs came from the lock above; pip fails here if not.
RUN pip --python /opt/quarry/bin/python install --no-deps . \
    && pip --python /opt/quarry/bin/python check

FROM ${PYTHON_IMAGE}
# tini as PID 1: it reaps orphans and forwards SIGTERM to `quarry serve`, whose gateway
# forks worker processes (QUARRY_GATEWAY_WORKERS) and stops them on that signal.
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends tini >/dev/null \
    && rm -rf /var/lib/apt/lists/*
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
# SQLite state, the ingest spool and generated TLS files live here.
VOLUME ["/var/lib/quarry"]
WORKDIR /var/lib/quarry
USER 10001:10001
# gateway HTTPS; enroll, config, distributed, ingest gRPC; ingest ZeroMQ; metrics (+ probes)
EXPOSE 8443 50051 50052 50053 50054 50055 9400 9401 9402 9403 9404
ENTRYPOINT ["/usr/bin/tini", "--", "quarry", "serve"]
CMD ["gateway"]
