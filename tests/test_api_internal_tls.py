"""The REST API with Quarry's internal traffic encrypted (QUARRY_INTERNAL_TLS and
QUARRY_ZMQ_CURVE on, docs/security.md): its channels present the internal certificate, so
every call still reaches the services, still as the caller."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.quarry_cluster import QuarryCluster, quarry_cluster
from tests.test_api import Api

ENCRYPTED = {"QUARRY_INTERNAL_TLS": "on", "QUARRY_ZMQ_CURVE": "on"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("api-encrypted"), "", ENCRYPTED) as running:
        yield running


def test_the_api_calls_the_services_over_mutual_tls_as_the_caller(cluster: QuarryCluster) -> None:
    admin = Api(cluster, (cluster.state_dir / "admin_token").read_text().strip())
    assert admin.ok("GET", "/api/v1/hosts")["total"] == 0
    started = admin.ok("POST", "/api/v1/queries", 201, json={"sql": "SELECT 1"})
    assert admin.ok("GET", f"/api/v1/queries/{started['campaign_id']}/results")["items"] == []
    # The detection service too, and the alerts through the log store.
    assert admin.ok("GET", "/api/v1/detections")["items"] == []
    assert admin.ok("GET", "/api/v1/alerts")["total"] == 0
    token = admin.ok("POST", "/api/v1/tokens", 201, json={"name": "tls-ro", "role": "read-only"})
    refused = Api(cluster, token["value"]).request("POST", "/api/v1/queries", json={"sql": "x"})
    assert refused.status_code == 403
    assert Api(cluster, "").request("GET", "/api/v1/hosts").status_code == 401
