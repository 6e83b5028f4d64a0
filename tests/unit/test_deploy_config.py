"""The deployment files agree with each other and with georep's settings.

Nothing here starts a container: docker-compose.yml, the registry configs
under deploy/compose/ and the Kubernetes manifests under deploy/k8s/ are
parsed, georep's settings are loaded the way each service would load them
(its environment plus the mounted TOML file), and every wire between two
parts is compared value for value: a renamed service, a changed port, a
rotated token or a region added in one place only fails here.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from adapters.kafka import topic_specs
from deploy.local.kafka_security import Acl, role_acls
from deploy.registry_config import registry_config
from engine.layout import Layout
from engine.replicas import ReplicaDefinition
from engine.settings import (
    CONFIG_ENV,
    ConfigError,
    KafkaSettings,
    RegionSettings,
    Settings,
    load_settings,
)
from producers.distribution import BLOB_MEDIA_TYPE

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_TOML = ROOT / "deploy" / "compose" / "georep.toml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
EXAMPLE_TOML = ROOT / "deploy" / "georep.example.toml"
K8S = ROOT / "deploy" / "k8s"

REGIONS = ("ap-singapore", "eu-frankfurt")
REGISTRY_CONFIG_PATH = "/etc/docker/registry/config.yml"
GEOREP_COMMANDS = {"webhook", "replicate", "logstore"}
# Inside a container or pod a service must listen on every interface: its
# peers and its probes come from outside the container's loopback.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


# -- helpers ------------------------------------------------------------------


def _map(value: object, where: str) -> dict[str, Any]:
    assert isinstance(value, dict), f"{where}: expected a mapping, got {type(value).__name__}"
    return value


def _list(value: object, where: str) -> list[Any]:
    assert isinstance(value, list), f"{where}: expected a list, got {type(value).__name__}"
    return value


def _yaml(path: Path) -> dict[str, Any]:
    return _map(yaml.safe_load(path.read_text()), str(path))


def _yaml_all(path: Path) -> list[dict[str, Any]]:
    return [_map(doc, str(path)) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _seconds(duration: object) -> float:
    """A Go / compose duration such as `15s`, `1m30s` or `500ms`, in seconds."""
    text = str(duration)
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts, f"not a duration: {text!r}"
    assert "".join(number + unit for number, unit in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def _port_of_addr(addr: object) -> int:
    """The port of a listen address such as `:5000` or `0.0.0.0:5000`."""
    return int(str(addr).rsplit(":", 1)[1])


@contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """Exactly `env` as georep's environment: nothing from the machine running the tests."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.upper().startswith("GEOREP_"):
                mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        yield


def _load(env: Mapping[str, str]) -> Settings:
    with _environment(env):
        return load_settings()


# -- docker compose -----------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = _yaml(COMPOSE_FILE)
    raw = _map(compose.get("services"), "services")
    return {name: _map(spec, f"services.{name}") for name, spec in raw.items()}


def _env(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {
        name: ("true" if value else "false") if isinstance(value, bool) else str(value)
        for name, value in _map(raw, "environment").items()
    }


def _mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """Bind mounts of a service: container path -> host path."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = str(volume["source"]), str(volume["target"])
        if source.startswith((".", "/")):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def _volume_targets(service: Mapping[str, Any]) -> set[str]:
    targets = set()
    for volume in service.get("volumes") or []:
        targets.add(volume.split(":")[1] if isinstance(volume, str) else str(volume["target"]))
    return targets


def _is_georep(service: Mapping[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == "deploy/Dockerfile"


def _georep_services(services: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in services.items() if _is_georep(spec)}


def _api_services(services: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The georep API processes (`georep logstore`)."""
    return {name: spec for name, spec in _georep_services(services).items() if spec["command"] == ["logstore"]}


def _kafka_nodes(services: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Kafka nodes (each broker and controller)."""
    return {name: spec for name, spec in services.items() if str(spec.get("image", "")).startswith("apache/kafka:")}


def _named_volumes(service: Mapping[str, Any]) -> dict[str, str]:
    """Named (not bind) volumes of a service: container path -> volume name."""
    named: dict[str, str] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = str(volume["source"]), str(volume["target"])
        if not source.startswith((".", "/")):
            named[target] = source
    return named


def _compose_settings(service: Mapping[str, Any]) -> Settings:
    """georep's settings as this service's container would load them."""
    env = _env(service)
    config = env[CONFIG_ENV]
    mounts = _mounts(service)
    assert config in mounts, f"{CONFIG_ENV}={config} is not a mounted file"
    env[CONFIG_ENV] = str(mounts[config])
    return _load(env)


def _registry_config(service: Mapping[str, Any]) -> dict[str, Any]:
    mounts = _mounts(service)
    assert REGISTRY_CONFIG_PATH in mounts, "the registry image serves /etc/docker/registry/config.yml"
    return _yaml(mounts[REGISTRY_CONFIG_PATH])


def _healthcheck_url(service: Mapping[str, Any]) -> tuple[int, str]:
    test = " ".join(str(part) for part in _list(_map(service["healthcheck"], "healthcheck")["test"], "test"))
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/.-]*)", test)
    assert match is not None, f"no local URL in healthcheck {test!r}"
    return int(match.group(1)), match.group(2)


@pytest.fixture(scope="module")
def compose_settings(services: dict[str, dict[str, Any]]) -> dict[str, Settings]:
    return {name: _compose_settings(spec) for name, spec in _georep_services(services).items()}


def test_compose_has_every_part_for_every_region(
    services: dict[str, dict[str, Any]], compose_settings: dict[str, Settings]
) -> None:
    for name in ("primary", "webhook"):
        assert name in services
    assert set(_kafka_nodes(services)) == {"kafka-1", "kafka-2", "kafka-3"}
    apis = set(_api_services(services))
    assert apis == {"logstore-1", "logstore-2"}
    assert set(compose_settings) == {"webhook"} | apis | {f"replicator-{r}" for r in REGIONS}
    for name, settings in compose_settings.items():
        assert set(settings.regions) == set(REGIONS), name
    for region in REGIONS:
        for part in ("minio", "minio-init", "registry", "replicator"):
            assert f"{part}-{region}" in services, f"region {region} has no {part}"


def test_compose_georep_services_run_georep_subcommands(services: dict[str, dict[str, Any]]) -> None:
    entrypoint = _dockerfile_entrypoint()
    assert entrypoint == ["georep"]
    for name, spec in _georep_services(services).items():
        command = _list(spec["command"], f"{name}.command")
        assert command[0] in GEOREP_COMMANDS, name
        assert "entrypoint" not in spec, name
    assert _list(services["webhook"]["command"], "webhook") == ["webhook"]
    for name in ("logstore-1", "logstore-2"):
        assert _list(services[name]["command"], name) == ["logstore"]


def _kafka_listener(kafka: Mapping[str, Any]) -> tuple[str, str, int]:
    """(listener name, host, port) that clients are told to use."""
    env = _env(kafka)
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    advertised = [entry for entry in env["KAFKA_ADVERTISED_LISTENERS"].split(",") if not entry.startswith(controller)]
    assert len(advertised) == 1, advertised
    name, address = advertised[0].split("://")
    host, port = address.rsplit(":", 1)
    return name, host, int(port)


def test_compose_kafka_listeners_are_consistent(services: dict[str, dict[str, Any]]) -> None:
    nodes = _kafka_nodes(services)
    assert nodes
    for node, kafka in nodes.items():
        env = _env(kafka)
        name, host, port = _kafka_listener(kafka)
        # Clients reach each broker by the name it advertises: its compose service's DNS name.
        assert host == node
        assert kafka["hostname"] == host
        listeners = dict(entry.split("://") for entry in env["KAFKA_LISTENERS"].split(","))
        assert _port_of_addr(listeners[name]) == port
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert kafka["image"] == "apache/kafka:4.1.1"


def _quorum_voters(kafka: Mapping[str, Any]) -> set[tuple[int, str, int]]:
    """(node id, host, port) of each controller in KAFKA_CONTROLLER_QUORUM_VOTERS."""
    voters = set()
    for entry in _env(kafka)["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","):
        node_id, address = entry.split("@")
        host, port = address.rsplit(":", 1)
        voters.add((int(node_id), host, int(port)))
    return voters


def test_compose_kafka_is_three_nodes_in_one_quorum(
    services: dict[str, dict[str, Any]], compose_settings: dict[str, Settings]
) -> None:
    nodes = _kafka_nodes(services)
    assert len(nodes) == 3
    # Every node is a controller at the address the others are told, under its own node id.
    expected = set()
    for node, kafka in nodes.items():
        env = _env(kafka)
        listeners = dict(entry.split("://") for entry in env["KAFKA_LISTENERS"].split(","))
        controller = _port_of_addr(listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]])
        expected.add((int(env["KAFKA_NODE_ID"]), node, controller))
    assert len({node_id for node_id, _, _ in expected}) == 3, "two nodes share a node id"
    for node, kafka in nodes.items():
        assert _quorum_voters(kafka) == expected, node
    # One cluster: the log dirs are formatted with one id.
    assert len({_env(kafka)["CLUSTER_ID"] for kafka in nodes.values()}) == 1
    # Each node its own data: a shared volume would be one copy of everything.
    data = [_named_volumes(kafka)[_env(kafka)["KAFKA_LOG_DIRS"]] for kafka in nodes.values()]
    assert len(set(data)) == 3
    # Three copies, acks=all waits for two: one node may be lost without losing an acknowledged write.
    kafka_settings = compose_settings["webhook"].kafka
    for node, kafka in nodes.items():
        env = _env(kafka)
        for factor in ("DEFAULT", "OFFSETS_TOPIC", "TRANSACTION_STATE_LOG"):
            assert env[f"KAFKA_{factor}_REPLICATION_FACTOR"] == str(kafka_settings.replication_factor), node
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == str(kafka_settings.min_insync_replicas) == "2", node
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2", node


def test_compose_georep_services_bootstrap_from_every_kafka_node(
    services: dict[str, dict[str, Any]], compose_settings: dict[str, Settings]
) -> None:
    config = tomllib.loads(COMPOSE_TOML.read_text())["kafka"]
    listeners = {f"{host}:{port}" for _, host, port in map(_kafka_listener, _kafka_nodes(services).values())}
    assert len(listeners) == 3
    # The file says it, not an environment variable over it.
    assert set(config["bootstrap_servers"].split(",")) == listeners
    assert config["replication_factor"] == 3
    for name, settings in compose_settings.items():
        assert set(settings.kafka.bootstrap_servers.split(",")) == listeners, name
        assert settings.kafka.replication_factor == 3, name
        assert settings.kafka.min_insync_replicas == 2, name
        # Each waits for every node: georep's topics need three brokers to be created.
        deps = _map(services[name]["depends_on"], f"{name}.depends_on")
        for node in _kafka_nodes(services):
            assert deps[node] == {"condition": "service_healthy"}, name


def test_compose_api_processes_each_have_their_own_store_and_address(
    services: dict[str, dict[str, Any]], compose_settings: dict[str, Settings]
) -> None:
    apis = _api_services(services)
    assert len(apis) >= 2
    stores: set[str] = set()
    advertised: set[str] = set()
    for name, spec in apis.items():
        settings = compose_settings[name].logstore
        # The leader is reached at the URL it announces: its own compose service name, on its port.
        assert settings.advertise_url is not None, name
        url = urlsplit(settings.advertise_url)
        assert (url.scheme, url.hostname, url.port, url.path) == ("http", name, settings.port, ""), name
        assert settings.host == ALL_INTERFACES, name
        advertised.add(settings.advertise_url)
        # Its own SQLite file on its own named volume: two writers on one file would corrupt it.
        stores.add(_named_volumes(spec)[str(PurePosixPath(settings.path).parent)])
    assert len(advertised) == len(apis)
    assert len(stores) == len(apis)
    assert stores <= set(_map(_yaml(COMPOSE_FILE)["volumes"], "volumes"))


def _notification_endpoint(config: Mapping[str, Any]) -> dict[str, Any]:
    notifications = _map(config["notifications"], "notifications")
    endpoints = _list(notifications["endpoints"], "notifications.endpoints")
    assert len(endpoints) == 1
    return _map(endpoints[0], "notifications.endpoints[0]")


def test_compose_primary_notifies_the_webhook(
    services: dict[str, dict[str, Any]], compose_settings: dict[str, Settings]
) -> None:
    config = _registry_config(services["primary"])
    webhook = compose_settings["webhook"]
    endpoint = _notification_endpoint(config)

    url = urlsplit(str(endpoint["url"]))
    assert url.scheme == "http"
    assert url.hostname == "webhook"
    assert url.hostname in services
    assert url.port == webhook.webhook.port
    assert url.path == "/webhooks/distribution"
    assert webhook.webhook.host == ALL_INTERFACES

    assert webhook.webhook.token is not None
    headers = _map(endpoint["headers"], "headers")
    assert headers["Authorization"] == [f"Bearer {webhook.webhook.token.get_secret_value()}"]

    assert _map(config["notifications"], "notifications")["events"] == {"includereferences": True}
    ignore = _map(endpoint["ignore"], "ignore")
    assert ignore["actions"] == ["pull"]
    # Blob events only: a manifest type listed here would stop replication of its pushes.
    assert _list(ignore["mediatypes"], "ignore.mediatypes") == [BLOB_MEDIA_TYPE]
    # The webhook answers 503 by itself after publish_timeout_s; the registry must wait longer.
    assert _seconds(endpoint["timeout"]) > webhook.webhook.publish_timeout_s


def test_compose_primary_is_writable_and_on_disk(services: dict[str, dict[str, Any]]) -> None:
    config = _registry_config(services["primary"])
    storage = _map(config["storage"], "storage")
    assert "s3" not in storage
    assert storage["filesystem"]["rootdirectory"] in _volume_targets(services["primary"])
    assert storage["delete"] == {"enabled": True}
    assert "readonly" not in (storage.get("maintenance") or {})
    assert services["primary"]["image"] == "registry:2.8.2"


def _region_from_compose_toml(compose_settings: Mapping[str, Settings], region: str) -> RegionSettings:
    return compose_settings[f"replicator-{region}"].region(region)


@pytest.mark.parametrize("region", REGIONS)
def test_compose_regional_registry_reads_the_regions_bucket(
    services: dict[str, dict[str, Any]], compose_settings: dict[str, Settings], region: str
) -> None:
    settings = _region_from_compose_toml(compose_settings, region)
    registry = services[f"registry-{region}"]
    config = _registry_config(registry)
    s3 = _map(_map(config["storage"], "storage")["s3"], "storage.s3")
    endpoint = urlsplit(settings.endpoint)

    assert s3["regionendpoint"] == settings.endpoint
    assert endpoint.hostname == f"minio-{region}"
    assert s3["bucket"] == settings.bucket
    assert Layout(str(s3["rootdirectory"])).prefix == settings.prefix
    assert settings.prefix != ""
    assert s3["accesskey"] == settings.access_key
    assert s3["secretkey"] == settings.credentials()[1]
    assert s3["region"] == settings.s3_region
    assert s3["secure"] is (endpoint.scheme == "https")
    assert s3["v4auth"] is True
    assert registry["image"] == "registry:2.8.2"

    minio = _env(services[f"minio-{region}"])
    assert minio["MINIO_ROOT_USER"] == settings.access_key
    assert minio["MINIO_ROOT_PASSWORD"] == settings.credentials()[1]
    minio_command = _list(services[f"minio-{region}"]["command"], "minio command")
    assert _port_of_addr(minio_command[minio_command.index("--address") + 1]) == endpoint.port

    http_port = _port_of_addr(_map(config["http"], "http")["addr"])
    assert settings.registry == f"registry-{region}:{http_port}"


@pytest.mark.parametrize("region", REGIONS)
def test_compose_bucket_init_creates_the_regions_bucket(
    services: dict[str, dict[str, Any]], compose_settings: dict[str, Settings], region: str
) -> None:
    settings = _region_from_compose_toml(compose_settings, region)
    init = services[f"minio-init-{region}"]
    hosts = {name.removeprefix("MC_HOST_"): url for name, url in _env(init).items() if name.startswith("MC_HOST_")}
    assert len(hosts) == 1
    ((alias, url),) = hosts.items()
    parsed = urlsplit(url)
    assert parsed.hostname == f"minio-{region}"
    assert (parsed.username, parsed.password) == (settings.access_key, settings.credentials()[1])
    assert f"{parsed.scheme}://{parsed.hostname}:{parsed.port}" == settings.endpoint
    assert _list(init["command"], "command") == ["mb", "--ignore-existing", f"{alias}/{settings.bucket}"]
    assert init["depends_on"] == {f"minio-{region}": {"condition": "service_healthy"}}
    assert str(init["image"]).rsplit("/", 1)[-1].startswith("mc:")
    registry_deps = _map(services[f"registry-{region}"]["depends_on"], "depends_on")
    assert registry_deps[f"minio-init-{region}"] == {"condition": "service_completed_successfully"}


@pytest.mark.parametrize("region", REGIONS)
def test_compose_regional_registry_is_read_only(services: dict[str, dict[str, Any]], region: str) -> None:
    storage = _map(_registry_config(services[f"registry-{region}"])["storage"], "storage")
    assert storage["maintenance"] == {"readonly": {"enabled": True}, "uploadpurging": {"enabled": False}}
    assert storage["redirect"] == {"disable": True}
    assert "cache" not in storage


@pytest.mark.parametrize("region", REGIONS)
def test_compose_replicator_serves_its_region(
    services: dict[str, dict[str, Any]], compose_settings: dict[str, Settings], region: str
) -> None:
    name = f"replicator-{region}"
    spec = services[name]
    settings = compose_settings[name]
    assert _list(spec["command"], "command") == ["replicate", "--region", region]
    assert region in settings.regions
    assert settings.primary.url == "http://primary:5000"
    assert urlsplit(settings.primary.url).hostname in services
    assert _seconds(spec["stop_grace_period"]) > settings.replicator.drain_grace_s
    assert settings.replicator.host == ALL_INTERFACES
    assert _healthcheck_url(spec) == (settings.replicator.port, "/healthz")
    deps = _map(spec["depends_on"], "depends_on")
    for node in _kafka_nodes(services):
        assert deps[node] == {"condition": "service_healthy"}
    assert deps["primary"] == {"condition": "service_healthy"}
    assert deps[f"minio-init-{region}"] == {"condition": "service_completed_successfully"}


def test_compose_webhook_and_logstore_healthchecks_use_their_ports(
    services: dict[str, dict[str, Any]], compose_settings: dict[str, Settings]
) -> None:
    assert _healthcheck_url(services["webhook"]) == (compose_settings["webhook"].webhook.port, "/readyz")
    for name, spec in _api_services(services).items():
        logstore = compose_settings[name]
        assert _healthcheck_url(spec) == (logstore.logstore.port, "/healthz"), name
        assert logstore.logstore.host == ALL_INTERFACES, name
        # The SQLite file must be on the volume, or it vanishes with the container.
        assert str(PurePosixPath(logstore.logstore.path).parent) in _volume_targets(spec), name


def test_compose_depends_on_targets_exist(services: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for name, spec in services.items():
        for target, condition in _map(spec.get("depends_on") or {}, f"{name}.depends_on").items():
            assert target in services, f"{name} depends on unknown service {target}"
            kind = _map(condition, f"{name}.depends_on.{target}")["condition"]
            if kind == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}, which has no healthcheck"
            else:
                assert kind == "service_completed_successfully", f"{name}: {kind}"
                assert "restart" not in services[target], f"{target} is one-shot"
            checked += 1
    assert checked >= 4 * len(REGIONS) + 3


def test_compose_host_ports(services: dict[str, dict[str, Any]]) -> None:
    published: dict[str, tuple[int, int]] = {}
    for name, spec in services.items():
        for port in spec.get("ports") or []:
            host_ip, host_port, target_port = str(port).split(":")
            # Nothing in the stack authenticates: never publish beyond loopback.
            assert host_ip == "127.0.0.1", name
            published[name] = (int(host_port), int(target_port))
    assert published == {
        "primary": (5000, 5000),
        "registry-ap-singapore": (5001, 5000),
        "registry-eu-frankfurt": (5002, 5000),
    }
    for name, (_, container_port) in published.items():
        assert _port_of_addr(_registry_config(services[name])["http"]["addr"]) == container_port


# -- Dockerfile ---------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _dockerfile_entrypoint() -> list[str]:
    (entrypoint,) = [rest for keyword, rest in _dockerfile_instructions() if keyword == "ENTRYPOINT"]
    parsed = json.loads(entrypoint)
    assert isinstance(parsed, list)
    return [str(part) for part in parsed]


def test_dockerfile_installs_every_package_from_the_repository() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    copied: set[str] = set()
    for keyword, rest in instructions:
        if keyword == "COPY":
            copied.update(part.rstrip("/") for part in rest.split()[:-1])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", pyproject["project"]["readme"], "requirements.lock"} <= copied
    assert any(keyword == "RUN" and "pip install -c requirements.lock ." in rest for keyword, rest in instructions)
    (user,) = [rest for keyword, rest in instructions if keyword == "USER"]
    assert user == "10001:10001"


# -- Kubernetes -----------------------------------------------------------------
#
# What `kubectl apply -k` would apply, rendered by the real kustomize (make install builds it), and the
# *.example.yaml templates of what it must never apply: the Secrets and the Kafka CA, which are the cluster's own.

KUSTOMIZE = ROOT / ".cache" / "go" / "bin" / "kustomize"
K8S_KAFKA = K8S / "kafka"
K8S_TEMPLATES = tuple(sorted(K8S.rglob("*.example.yaml")))
#: the Kafka user (deploy/local/kafka_security.py role) each georep command connects as, but `replicate`
KAFKA_USERS = {"webhook": "webhook", "logstore": "api"}
KAFKA_CA_CONFIGMAP = "georep-kafka-ca"
#: a region's bucket keys as georep reads them (pydantic-settings matches environment names in any case)
_S3_KEY = re.compile(r"GEOREP_REGIONS__(?P<region>[a-z0-9-]+)__(?:ACCESS|SECRET)_KEY", re.IGNORECASE)
_REGISTRY_S3_KEYS = {"REGISTRY_STORAGE_S3_ACCESSKEY", "REGISTRY_STORAGE_S3_SECRETKEY"}
#: Strimzi's names for what role_acls calls a literal or a prefixed pattern
_STRIMZI_PATTERNS = {"literal": "literal", "prefix": "prefixed"}


def _kustomize_build(directory: Path) -> list[dict[str, Any]]:
    if not KUSTOMIZE.is_file():
        pytest.fail(f"{KUSTOMIZE.relative_to(ROOT)} is missing: run `make install` (it builds kustomize)")
    result = subprocess.run(
        [str(KUSTOMIZE), "build", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    where = f"kustomize build {directory.relative_to(ROOT)}"
    assert result.returncode == 0, f"{where}:\n{result.stderr}"
    return [_map(doc, where) for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@pytest.fixture(scope="module")
def k8s_objects() -> list[dict[str, Any]]:
    return _kustomize_build(K8S)


@pytest.fixture(scope="module")
def kafka_objects() -> list[dict[str, Any]]:
    return _kustomize_build(K8S_KAFKA)


@pytest.fixture(scope="module")
def k8s_templates() -> dict[tuple[str, str], dict[str, Any]]:
    """The objects of the *.example.yaml templates, by (kind, name)."""
    templates: dict[tuple[str, str], dict[str, Any]] = {}
    for path in K8S_TEMPLATES:
        for doc in _yaml_all(path):
            key = (str(doc["kind"]), str(doc["metadata"]["name"]))
            assert key not in templates, f"{path}: {key} is templated twice"
            templates[key] = doc
    return templates


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def _workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]


def _container(workload: Mapping[str, Any]) -> dict[str, Any]:
    containers = _list(workload["spec"]["template"]["spec"]["containers"], "containers")
    assert len(containers) == 1, workload["metadata"]["name"]
    return _map(containers[0], "container")


def _container_port(container: Mapping[str, Any], port: object) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def _template_data(template: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's or ConfigMap's keys and values (a Secret's `data` decoded)."""
    data = {str(k): str(v) for k, v in (template.get("stringData") or {}).items()}
    for key, value in (template.get("data") or {}).items():
        data[str(key)] = base64.b64decode(value).decode() if template["kind"] == "Secret" else str(value)
    return data


@dataclass(frozen=True, slots=True)
class _Source:
    """A Secret or ConfigMap a pod reads: one key of it, or every key (`key` None)."""

    kind: str
    name: str
    key: str | None
    optional: bool


def _projections(volume: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, projection) of each Secret and ConfigMap in a volume, projected ones too; `name` set in each."""
    found: list[tuple[str, dict[str, Any]]] = []
    if "secret" in volume:
        found.append(("Secret", {**volume["secret"], "name": volume["secret"]["secretName"]}))
    if "configMap" in volume:
        found.append(("ConfigMap", dict(volume["configMap"])))
    for source in (volume.get("projected") or {}).get("sources") or []:
        found.extend(
            (kind, dict(source[field]))
            for kind, field in (("Secret", "secret"), ("ConfigMap", "configMap"))
            if field in source
        )
    return found


def _pod_sources(workload: Mapping[str, Any]) -> list[_Source]:
    """Every Secret and ConfigMap the pod can read: env, envFrom, volumes (projected ones too)."""
    pod = workload["spec"]["template"]["spec"]
    sources: list[_Source] = []
    for container in [*pod["containers"], *(pod.get("initContainers") or [])]:
        for source in container.get("envFrom") or []:
            for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if field in source:
                    ref = source[field]
                    sources.append(_Source(kind, str(ref["name"]), None, bool(ref.get("optional"))))
        for var in container.get("env") or []:
            value_from = var.get("valueFrom") or {}
            for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if field in value_from:
                    ref = value_from[field]
                    sources.append(_Source(kind, str(ref["name"]), str(ref["key"]), bool(ref.get("optional"))))
    for volume in pod.get("volumes") or []:
        for kind, projection in _projections(volume):
            name, optional, items = str(projection["name"]), bool(projection.get("optional")), projection.get("items")
            if items is None:
                sources.append(_Source(kind, name, None, optional))
            else:
                sources.extend(_Source(kind, name, str(item["key"]), optional) for item in items)
    return sources


def _pod_secrets(workload: Mapping[str, Any]) -> set[str]:
    return {source.name for source in _pod_sources(workload) if source.kind == "Secret"}


def _readable_secret_keys(
    workload: Mapping[str, Any], templates: Mapping[tuple[str, str], dict[str, Any]]
) -> set[tuple[str, str]]:
    """(Secret, key) for every Secret key the pod can read."""
    readable: set[tuple[str, str]] = set()
    for source in _pod_sources(workload):
        if source.kind == "Secret":
            keys = _template_data(templates[source.kind, source.name]) if source.key is None else {source.key}
            readable.update((source.name, key) for key in keys)
    return readable


def _own_secret(workload: Mapping[str, Any]) -> str:
    """The one Secret a workload may read: georep-<component>, per region for replicators and registries."""
    name = str(workload["metadata"]["name"])
    return "georep-api" if name == "logstore" else f"georep-{name}"


def _georep_workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [w for w in _workloads(objects) if str(_container(w)["image"]).split("/")[-1].startswith("georep:")]


def _kafka_user(workload: Mapping[str, Any]) -> str:
    args = _container(workload)["args"]
    return f"replicator-{args[2]}" if args[0] == "replicate" else KAFKA_USERS[args[0]]


_ENV_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][\w.-]*)\)")


def _expand(value: str, env: Mapping[str, str]) -> str:
    """`value` as the kubelet expands it: `$(NAME)` of a variable defined before it, `$$` as `$`; an undefined
    reference stays as it is."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))

    return _ENV_REFERENCE.sub(one, value)


def _pod_names(workload: Mapping[str, Any]) -> list[str]:
    """The names of a workload's pods: a StatefulSet's are `<name>-<ordinal>`. A Deployment's are random; the
    same form stands in for them (nothing of theirs reads its own name)."""
    name = str(workload["metadata"]["name"])
    return [f"{name}-{ordinal}" for ordinal in range(int(workload["spec"]["replicas"]))]


def _pod_environment(
    workload: Mapping[str, Any],
    templates: Mapping[tuple[str, str], dict[str, Any]],
    config: Path,
    pod: str | None = None,
) -> dict[str, str]:
    """The environment of pod `pod` (by default the workload's first): plain values (`$(NAME)` expanded), its
    Secret's keys as the template holds them, the downward API's fields, GEOREP_CONFIG at `config`."""
    container = _container(workload)
    fields = {
        "metadata.name": pod or _pod_names(workload)[0],
        "metadata.namespace": str(workload["metadata"]["namespace"]),
    }
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(_template_data(templates["Secret", source["secretRef"]["name"]]))
    for var in container.get("env") or []:
        value_from = var.get("valueFrom") or {}
        if "value" in var:
            env[var["name"]] = _expand(str(var["value"]), env)
        elif "fieldRef" in value_from:
            env[var["name"]] = fields[value_from["fieldRef"]["fieldPath"]]
        else:
            ref = value_from["secretKeyRef"]
            env[var["name"]] = _template_data(templates["Secret", ref["name"]])[ref["key"]]
    assert PurePosixPath(env[CONFIG_ENV]).name == config.name
    env[CONFIG_ENV] = str(config)
    return env


@pytest.fixture(scope="module")
def k8s_toml(k8s_objects: list[dict[str, Any]]) -> str:
    return str(_one(k8s_objects, "ConfigMap", "georep-config")["data"]["georep.toml"])


@pytest.fixture(scope="module")
def k8s_toml_file(k8s_toml: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """georep-config's georep.toml, as a file."""
    path = tmp_path_factory.mktemp("k8s") / "georep.toml"
    path.write_text(k8s_toml)
    return path


@pytest.fixture(scope="module")
def k8s_pod_settings(
    k8s_objects: list[dict[str, Any]],
    k8s_toml_file: Path,
    k8s_templates: dict[tuple[str, str], dict[str, Any]],
) -> dict[str, Settings]:
    """Settings as each georep pod loads them, by workload name (its first pod): the ConfigMap's file plus its
    own environment."""
    return {
        str(w["metadata"]["name"]): _load(_pod_environment(w, k8s_templates, k8s_toml_file))
        for w in _georep_workloads(k8s_objects)
    }


def _kustomize_resources(directory: Path) -> list[Path]:
    kustomization = _yaml(directory / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    return [(directory / str(entry)).resolve() for entry in _list(kustomization["resources"], str(directory))]


def test_k8s_kustomizations_cover_every_manifest_but_the_templates() -> None:
    listed: list[Path] = []
    pending = [K8S, K8S_KAFKA]
    while pending:
        directory = pending.pop()
        for resource in _kustomize_resources(directory):
            assert resource.exists(), f"{directory}: {resource} does not exist"
            if resource.is_dir():
                pending.append(resource)
            else:
                listed.append(resource)
    manifests = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    templates = {p.resolve() for p in K8S_TEMPLATES}
    assert len(listed) == len(set(listed)), "a manifest is listed twice"
    # Applying a kustomization must never overwrite real credentials with placeholders.
    assert templates
    assert set(listed) == manifests - templates
    assert {p.parent.name for p in listed if p.parent.parent.name == "regions"} == set(REGIONS)
    assert {p.parent.name for p in templates if p.parent.parent.name == "regions"} == set(REGIONS)


def test_k8s_builds_no_secret_and_nothing_templated(
    k8s_objects: list[dict[str, Any]], k8s_templates: dict[tuple[str, str], dict[str, Any]]
) -> None:
    assert not [o for o in k8s_objects if o["kind"] == "Secret"]
    assert not {(o["kind"], o["metadata"]["name"]) for o in k8s_objects} & set(k8s_templates)
    for (kind, name), template in k8s_templates.items():
        assert template["metadata"]["namespace"] == "georep", name
        if kind == "Secret":
            # Placeholders only: a real credential never sits in the repository.
            for key, value in _template_data(template).items():
                assert "REPLACE" in value, f"{name}.{key}"
        else:
            assert (kind, name) == ("ConfigMap", KAFKA_CA_CONFIGMAP)


def test_k8s_objects_live_in_the_georep_namespace(k8s_objects: list[dict[str, Any]]) -> None:
    (namespace,) = [o for o in k8s_objects if o["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == "georep"
    for o in k8s_objects:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "georep", f"{o['kind']}/{o['metadata']['name']}"


def test_k8s_config_has_no_secrets(k8s_toml: str) -> None:
    parsed = tomllib.loads(k8s_toml)
    secret_names = {"secret_key", "access_key", "token", "password", "username", "api_token", "signing_key"}

    def keys(table: Mapping[str, Any]) -> Iterator[str]:
        for key, value in table.items():
            yield key
            if isinstance(value, dict):
                yield from keys(value)

    assert secret_names.isdisjoint(keys(parsed))
    assert set(parsed["regions"]) == set(REGIONS)


def test_k8s_pod_references_exist_in_the_templates(
    k8s_objects: list[dict[str, Any]], k8s_templates: dict[tuple[str, str], dict[str, Any]]
) -> None:
    rendered = {(o["kind"], o["metadata"]["name"]): o for o in k8s_objects if o["kind"] == "ConfigMap"}
    checked = 0
    for workload in _workloads(k8s_objects):
        where = workload["metadata"]["name"]
        for source in _pod_sources(workload):
            found = k8s_templates.get((source.kind, source.name)) or rendered.get((source.kind, source.name))
            assert found is not None, f"{where}: {source.kind}/{source.name} is neither built nor templated"
            if source.key is not None:
                assert source.key in _template_data(found), f"{where}: {source.kind}/{source.name} has no {source.key}"
            # Nothing is optional: a pod whose Secret is missing does not start without it.
            assert not source.optional, f"{where}: {source.kind}/{source.name}"
            checked += 1
    # The georep pods' config, CA and Secret, the registries' config and three keys and certificates.
    assert checked == 3 * (2 + len(REGIONS)) + 5 * len(REGIONS)


def test_k8s_pods_read_only_their_own_secret(k8s_objects: list[dict[str, Any]]) -> None:
    workloads = _workloads(k8s_objects)
    assert {w["metadata"]["name"] for w in workloads} == {"webhook", "logstore"} | {
        f"{part}-{r}" for r in REGIONS for part in ("replicator", "registry")
    }
    for workload in workloads:
        where = workload["metadata"]["name"]
        assert _pod_secrets(workload) == {_own_secret(workload)}, where
        # Nor a service account token: no pod of georep talks to the Kubernetes API.
        assert workload["spec"]["template"]["spec"]["automountServiceAccountToken"] is False, where


def test_k8s_bucket_keys_reach_only_their_regions_pods(
    k8s_objects: list[dict[str, Any]], k8s_templates: dict[tuple[str, str], dict[str, Any]]
) -> None:
    for workload in _workloads(k8s_objects):
        name = str(workload["metadata"]["name"])
        readable = _readable_secret_keys(workload, k8s_templates)
        georep_s3 = {key for _, key in readable if _S3_KEY.fullmatch(key)}
        registry_s3 = {(secret, key) for secret, key in readable if key in _REGISTRY_S3_KEYS}
        component, _, region = name.partition("-")
        if component == "replicator":
            assert georep_s3 == {f"GEOREP_REGIONS__{region}__ACCESS_KEY", f"GEOREP_REGIONS__{region}__SECRET_KEY"}
            assert not registry_s3, name
        elif component == "registry":
            assert not georep_s3, name
            assert registry_s3 == {(f"georep-registry-{region}", key) for key in _REGISTRY_S3_KEYS}
        else:
            # Not even a key it does not read: no Secret of the webhook or the API holds any bucket key.
            for secret in _pod_secrets(workload):
                held = set(_template_data(k8s_templates["Secret", secret]))
                assert not {key for key in held if _S3_KEY.fullmatch(key)} | (held & _REGISTRY_S3_KEYS), secret
            assert not georep_s3, name
            assert not registry_s3, name
    # ... and each Secret holds its own region's bucket keys only.
    for (kind, name), template in k8s_templates.items():
        regions = {m["region"] for key in _template_data(template) if (m := _S3_KEY.fullmatch(key))}
        if kind == "Secret" and name.startswith("georep-replicator-"):
            assert regions == {name.removeprefix("georep-replicator-")}
        else:
            assert not regions, name
        if _REGISTRY_S3_KEYS & set(_template_data(template)):
            assert name.startswith("georep-registry-"), name


def test_k8s_georep_pods_mount_the_config(k8s_objects: list[dict[str, Any]]) -> None:
    workloads = _georep_workloads(k8s_objects)
    assert len(workloads) == 2 + len(REGIONS)
    for workload in workloads:
        where = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        container = _container(workload)
        assert "command" not in container, f"{where}: the image's entrypoint is georep"
        assert container["args"][0] in GEOREP_COMMANDS, where
        env = {var["name"]: var.get("value") for var in container.get("env") or []}
        config = PurePosixPath(env[CONFIG_ENV])
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent)]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["configMap"]["name"] == "georep-config", where
        assert config.name == "georep.toml", where
        assert pod["securityContext"]["runAsUser"] == 10001, where
        for field in ("requests", "limits"):
            assert set(container["resources"][field]) == {"cpu", "memory"}, where


def _mounted_file(workload: Mapping[str, Any], path: PurePosixPath) -> tuple[str, str, str]:
    """(kind, name, key) of the ConfigMap or Secret key a pod sees as the file `path`."""
    where = workload["metadata"]["name"]
    (mount,) = [m for m in _container(workload)["volumeMounts"] if m["mountPath"] == str(path.parent)]
    (volume,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    for kind, projection in _projections(volume):
        items = projection.get("items")
        if items is None:
            return kind, str(projection["name"]), path.name
        for item in items:
            if item["path"] == path.name:
                return kind, str(projection["name"]), str(item["key"])
    raise AssertionError(f"{where}: no ConfigMap or Secret key is mounted as {path}")


def test_k8s_georep_pods_connect_to_kafka_as_their_own_user(
    k8s_objects: list[dict[str, Any]],
    k8s_pod_settings: dict[str, Settings],
    k8s_templates: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for workload in _georep_workloads(k8s_objects):
        where = str(workload["metadata"]["name"])
        kafka = k8s_pod_settings[where].kafka
        assert kafka.username == _kafka_user(workload), where
        assert kafka.password is not None, where
        assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512"), where
        # An administrator (the KafkaTopic resources) makes the topics; georep's users may not.
        assert kafka.create_topics is False, where
        assert kafka.replication_factor == 3, where
        assert kafka.ca_file is not None, where
        kind, name, key = _mounted_file(workload, PurePosixPath(kafka.ca_file))
        assert (kind, name) == ("ConfigMap", KAFKA_CA_CONFIGMAP), where
        assert "BEGIN CERTIFICATE" in _template_data(k8s_templates[kind, name])[key]
        verify_key = k8s_pod_settings[where].replicas.verifier()
        assert len(base64.b64decode(verify_key, validate=True)) == 32, where
    assert len({str(s.kafka.username) for s in k8s_pod_settings.values()}) == len(k8s_pod_settings)


def _no_bucket_keys(settings: Settings) -> None:
    for region in REGIONS:
        with pytest.raises(ConfigError):
            settings.region(region)


def test_k8s_webhook_loads_with_only_its_own_secret(k8s_pod_settings: dict[str, Settings]) -> None:
    settings = k8s_pod_settings["webhook"]
    assert settings.webhook.token is not None
    assert settings.primary.username is None
    assert settings.primary.password is None
    assert settings.logstore.api_token is None
    assert settings.replicas.signing_key is None
    assert set(settings.regions) == set(REGIONS)
    _no_bucket_keys(settings)


def test_k8s_api_loads_with_only_its_own_secret(k8s_pod_settings: dict[str, Settings]) -> None:
    settings = k8s_pod_settings["logstore"]
    assert settings.logstore.api_token is not None
    assert settings.replicas.signing_key is not None
    assert settings.primary.username is not None
    assert settings.primary.password is not None
    assert settings.webhook.token is None
    assert set(settings.regions) == set(REGIONS)
    _no_bucket_keys(settings)


@pytest.mark.parametrize("region", REGIONS)
def test_k8s_replicator_loads_with_only_its_own_secret(
    k8s_pod_settings: dict[str, Settings], k8s_templates: dict[tuple[str, str], dict[str, Any]], region: str
) -> None:
    settings = k8s_pod_settings[f"replicator-{region}"]
    secret = _template_data(k8s_templates["Secret", f"georep-replicator-{region}"])
    assert settings.region(region).credentials() == (
        secret[f"GEOREP_REGIONS__{region}__ACCESS_KEY"],
        secret[f"GEOREP_REGIONS__{region}__SECRET_KEY"],
    )
    for other in set(REGIONS) - {region}:
        with pytest.raises(ConfigError):
            settings.region(other)
    assert settings.primary.username is not None
    assert settings.primary.password is not None
    assert settings.webhook.token is None
    assert settings.logstore.api_token is None
    assert settings.replicas.signing_key is None


def _replicators(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for workload in _georep_workloads(objects):
        args = _container(workload)["args"]
        if args[0] == "replicate":
            assert args[:2] == ["replicate", "--region"], args
            assert len(args) == 3, args
            assert args[2] not in found, f"two replicator Deployments for {args[2]}"
            found[args[2]] = workload
    return found


def test_k8s_replicators_cover_the_configured_regions(
    k8s_objects: list[dict[str, Any]], k8s_pod_settings: dict[str, Settings]
) -> None:
    replicators = _replicators(k8s_objects)
    assert set(replicators) == set(k8s_pod_settings["webhook"].regions) == set(REGIONS)
    for region, workload in replicators.items():
        assert workload["kind"] == "Deployment"
        assert workload["metadata"]["name"] == f"replicator-{region}"


@pytest.mark.parametrize("region", REGIONS)
def test_k8s_replicator_probes_and_drain(
    k8s_objects: list[dict[str, Any]], k8s_pod_settings: dict[str, Settings], region: str
) -> None:
    workload = _replicators(k8s_objects)[region]
    settings = k8s_pod_settings[workload["metadata"]["name"]]
    container = _container(workload)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert _container_port(container, get["port"]) == settings.replicator.port, probe
    assert settings.replicator.host == ALL_INTERFACES
    grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.replicator.drain_grace_s


def test_k8s_webhook_and_logstore(k8s_objects: list[dict[str, Any]], k8s_pod_settings: dict[str, Settings]) -> None:
    settings = k8s_pod_settings["webhook"]
    webhook = _container(_one(k8s_objects, "Deployment", "webhook"))
    assert webhook["args"] == ["webhook"]
    assert _container_port(webhook, "http") == settings.webhook.port
    assert webhook["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # /readyz may wait publish_timeout_s for Kafka; a shorter probe timeout always fails then.
    assert webhook["readinessProbe"]["timeoutSeconds"] > settings.webhook.publish_timeout_s
    assert settings.webhook.host == ALL_INTERFACES

    settings = k8s_pod_settings["logstore"]
    statefulset = _one(k8s_objects, "StatefulSet", "logstore")
    logstore = _container(statefulset)
    assert logstore["args"] == ["logstore"]
    assert statefulset["spec"]["replicas"] >= 2
    assert _container_port(logstore, "http") == settings.logstore.port
    assert logstore["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert logstore["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Each pod its own SQLite file: a claim per pod (volumeClaimTemplates), never one claim shared by the pods.
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in logstore["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == str(PurePosixPath(settings.logstore.path).parent)
    pod_volumes = statefulset["spec"]["template"]["spec"]["volumes"]
    assert not [v for v in pod_volumes if "persistentVolumeClaim" in v or v["name"] == claim["metadata"]["name"]]
    # Clients (logstore.url) go through a Service with a virtual IP: any ready API pod answers them.
    url = urlsplit(settings.logstore.url)
    assert url.hostname is not None
    service_name, _, domain = url.hostname.partition(".")
    assert domain == "georep.svc"
    service = _one(k8s_objects, "Service", service_name)
    assert service["spec"].get("clusterIP") != "None"
    assert service_name != statefulset["spec"]["serviceName"]
    assert url.port == service["spec"]["ports"][0]["port"]


def test_k8s_services_select_their_pods(k8s_objects: list[dict[str, Any]]) -> None:
    services = [o for o in k8s_objects if o["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"webhook", "logstore", "logstore-headless"} | {
        f"registry-{r}" for r in REGIONS
    }
    for service in services:
        selector = service["spec"]["selector"]
        matches = [
            w
            for w in _workloads(k8s_objects)
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, service["metadata"]["name"]
        (workload,) = matches
        assert (
            workload["spec"]["selector"]["matchLabels"].items()
            <= workload["spec"]["template"]["metadata"]["labels"].items()
        )
        for port in service["spec"]["ports"]:
            _container_port(_container(workload), port["targetPort"])


# -- Kubernetes: no single point of failure -------------------------------------------

HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
#: every workload, by kind and name: each must survive losing one pod, and one node
WORKLOADS = (
    ("Deployment", "webhook"),
    ("StatefulSet", "logstore"),
    *(("Deployment", f"{part}-{r}") for r in REGIONS for part in ("replicator", "registry")),
)


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects `labels`."""
    if not dict(selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def _pod_labels(workload: Mapping[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def _selects_exactly(objects: list[dict[str, Any]], selector: Mapping[str, Any], workload: Mapping[str, Any]) -> bool:
    """`selector` selects the pods of `workload` and of no other workload."""
    selected = [w["metadata"]["name"] for w in _workloads(objects) if _selects(selector, _pod_labels(w))]
    return selected == [workload["metadata"]["name"]]


def _disruption_budget(objects: list[dict[str, Any]], workload: Mapping[str, Any]) -> dict[str, Any]:
    """The one PodDisruptionBudget over a workload's pods."""
    name = workload["metadata"]["name"]
    budgets = [
        o
        for o in objects
        if o["kind"] == "PodDisruptionBudget" and _selects(o["spec"]["selector"], _pod_labels(workload))
    ]
    assert len(budgets) == 1, f"{name}: {len(budgets)} PodDisruptionBudgets"
    return budgets[0]


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_k8s_workload_has_a_disruption_budget_over_exactly_its_pods(
    k8s_objects: list[dict[str, Any]], kind: str, name: str
) -> None:
    workload = _one(k8s_objects, kind, name)
    replicas = workload["spec"]["replicas"]
    assert replicas >= 2, "one pod is a single point of failure"
    budget = _disruption_budget(k8s_objects, workload)
    assert budget["apiVersion"] == "policy/v1"
    # Its pods and no other workload's: a budget over two workloads' pods counts the wrong pods.
    assert _selects_exactly(k8s_objects, budget["spec"]["selector"], workload)
    spec = budget["spec"]
    assert ("maxUnavailable" in spec) != ("minAvailable" in spec), "one of maxUnavailable, minAvailable"
    # Absolute numbers: a drain may evict one pod at a time, never the last one, and never none.
    if "maxUnavailable" in spec:
        assert isinstance(spec["maxUnavailable"], int)
        assert 1 <= spec["maxUnavailable"] < replicas
    else:
        assert isinstance(spec["minAvailable"], int)
        assert 1 <= spec["minAvailable"] < replicas
    if name.startswith("replicator-"):
        assert spec["maxUnavailable"] == 1


def test_k8s_every_disruption_budget_has_its_workload(k8s_objects: list[dict[str, Any]]) -> None:
    budgets = [o for o in k8s_objects if o["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == len(WORKLOADS)
    for budget in budgets:
        selected = [w for w in _workloads(k8s_objects) if _selects(budget["spec"]["selector"], _pod_labels(w))]
        assert len(selected) == 1, budget["metadata"]["name"]
        assert budget["metadata"]["name"] == selected[0]["metadata"]["name"]


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_k8s_workload_spreads_its_pods_over_nodes(k8s_objects: list[dict[str, Any]], kind: str, name: str) -> None:
    workload = _one(k8s_objects, kind, name)
    anti = workload["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    terms = [
        *anti.get("requiredDuringSchedulingIgnoredDuringExecution", []),
        *(p["podAffinityTerm"] for p in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])),
    ]
    # Away from its own siblings (not from some other workload's pods), one per node.
    spread = [
        term
        for term in terms
        if term["topologyKey"] == HOSTNAME_TOPOLOGY and _selects_exactly(k8s_objects, term["labelSelector"], workload)
    ]
    assert spread, f"{name}: no pod anti-affinity on {HOSTNAME_TOPOLOGY} over its own pods"
    for preferred in anti.get("preferredDuringSchedulingIgnoredDuringExecution", []):
        assert 1 <= preferred["weight"] <= 100


def test_k8s_api_pods_advertise_their_own_address(
    k8s_objects: list[dict[str, Any]],
    k8s_templates: dict[tuple[str, str], dict[str, Any]],
    k8s_toml_file: Path,
) -> None:
    """A change reaching a follower is forwarded to the URL the leader advertises: each pod's must reach that pod,
    whichever leads, which a per-pod DNS name under a headless Service gives."""
    statefulset = _one(k8s_objects, "StatefulSet", "logstore")
    namespace = statefulset["metadata"]["namespace"]
    container = _container(statefulset)
    headless = _one(k8s_objects, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    # A Service's selector is a plain map of labels.
    assert _selects_exactly(k8s_objects, {"matchLabels": headless["spec"]["selector"]}, statefulset)
    # The leader stays resolvable while it is (briefly) unready: Kafka decides who leads, not the probes.
    assert headless["spec"]["publishNotReadyAddresses"] is True

    # Set from the downward API, and defined before the URL that expands it.
    names = [var["name"] for var in container["env"]]
    (pod_name,) = [var for var in container["env"] if var["name"] == "POD_NAME"]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert names.index("POD_NAME") < names.index("GEOREP_LOGSTORE__ADVERTISE_URL")

    advertised = set()
    for pod in _pod_names(statefulset):
        settings = _load(_pod_environment(statefulset, k8s_templates, k8s_toml_file, pod)).logstore
        assert settings.advertise_url is not None, pod
        # No virtual IP in front of a headless Service: the URL names the container's own port.
        assert settings.port == _container_port(container, "http")
        expected = f"http://{pod}.{headless['metadata']['name']}.{namespace}.svc:{settings.port}"
        assert settings.advertise_url == expected, pod
        advertised.add(settings.advertise_url)
    assert len(advertised) == statefulset["spec"]["replicas"] >= 2


def test_kafka_nodes_spread_over_nodes(kafka_objects: list[dict[str, Any]]) -> None:
    (cluster,) = _strimzi(kafka_objects, "Kafka").values()
    for name, pool in _strimzi(kafka_objects, "KafkaNodePool").items():
        anti = pool["spec"]["template"]["pod"]["affinity"]["podAntiAffinity"]
        (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        term = preferred["podAffinityTerm"]
        assert term["topologyKey"] == HOSTNAME_TOPOLOGY, name
        # The labels Strimzi gives the pool's pods.
        pods = {"strimzi.io/cluster": cluster["metadata"]["name"], "strimzi.io/pool-name": name}
        assert term["labelSelector"] == {"matchLabels": pods}, name


def _k8s_registry_config(objects: list[dict[str, Any]], region: str) -> dict[str, Any]:
    name = f"registry-{region}"
    return _map(yaml.safe_load(_one(objects, "ConfigMap", name)["data"]["config.yml"]), name)


def _secret_env(container: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Environment variable -> (Secret, key), for each variable set from a Secret."""
    return {
        var["name"]: (var["valueFrom"]["secretKeyRef"]["name"], var["valueFrom"]["secretKeyRef"]["key"])
        for var in container.get("env") or []
        if "secretKeyRef" in (var.get("valueFrom") or {})
    }


@pytest.mark.parametrize("region", REGIONS)
def test_k8s_regional_registry_reads_the_regions_bucket(
    k8s_objects: list[dict[str, Any]], k8s_pod_settings: dict[str, Settings], region: str
) -> None:
    settings = k8s_pod_settings[f"replicator-{region}"].region(region)
    name = f"registry-{region}"
    config = _k8s_registry_config(k8s_objects, region)
    storage = _map(config["storage"], "storage")
    s3 = _map(storage["s3"], "storage.s3")
    assert s3["regionendpoint"] == settings.endpoint
    assert s3["bucket"] == settings.bucket
    assert Layout(str(s3["rootdirectory"])).prefix == settings.prefix
    assert s3["region"] == settings.s3_region
    assert s3["secure"] is (urlsplit(settings.endpoint).scheme == "https")
    assert s3["v4auth"] is True
    assert "accesskey" not in s3
    assert "secretkey" not in s3
    assert storage["maintenance"] == {"readonly": {"enabled": True}, "uploadpurging": {"enabled": False}}
    assert storage["redirect"] == {"disable": True}

    deployment = _one(k8s_objects, "Deployment", name)
    container = _container(deployment)
    assert container["image"] == "registry:2.8.2"
    # Keys of its own (read-only ones), not the replicator's read-write keys.
    secret = f"georep-registry-{region}"
    assert {var: ref for var, ref in _secret_env(container).items() if var in _REGISTRY_S3_KEYS} == {
        var: (secret, var) for var in _REGISTRY_S3_KEYS
    }
    pod = deployment["spec"]["template"]["spec"]
    (mount,) = [
        m for m in container["volumeMounts"] if m["mountPath"] == str(PurePosixPath(REGISTRY_CONFIG_PATH).parent)
    ]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == name

    http = _map(config["http"], "http")
    assert _container_port(container, "http") == _port_of_addr(http["addr"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/debug/health", "port": "debug"}
    assert _container_port(container, "debug") == _port_of_addr(http["debug"]["addr"])
    service = _one(k8s_objects, "Service", name)
    assert settings.registry == f"{name}.georep.svc:{service['spec']['ports'][0]['port']}"


@pytest.mark.parametrize("region", REGIONS)
def test_k8s_regional_registry_requires_auth_and_keeps_its_secret_out_of_the_configmap(
    k8s_objects: list[dict[str, Any]], k8s_templates: dict[tuple[str, str], dict[str, Any]], region: str
) -> None:
    config = _k8s_registry_config(k8s_objects, region)
    deployment = _one(k8s_objects, "Deployment", f"registry-{region}")
    secret = f"georep-registry-{region}"

    # Pulls take the primary's credentials: without an auth section the region serves every image to anyone.
    auth = _map(config.get("auth"), "auth")
    assert auth
    assert set(auth) <= {"token", "htpasswd"}, "an auth the primary would use (never `silly`)"
    # Its files (token: the issuer's certificates; htpasswd: the users) come from the region's own Secret.
    for scheme, field in (("token", "rootcertbundle"), ("htpasswd", "path")):
        if scheme in auth:
            kind, name, key = _mounted_file(deployment, PurePosixPath(auth[scheme][field]))
            assert (kind, name) == ("Secret", secret)
            assert key in _template_data(k8s_templates[kind, name])

    # http.secret: this region's own, from its Secret, never written into a ConfigMap.
    assert "secret" not in _map(config["http"], "http")
    assert _secret_env(_container(deployment))["REGISTRY_HTTP_SECRET"] == (secret, "REGISTRY_HTTP_SECRET")
    assert _map(config["storage"], "storage")["maintenance"]["readonly"] == {"enabled": True}


@pytest.mark.parametrize("region", REGIONS)
def test_k8s_regional_registry_is_what_registry_config_writes(
    k8s_objects: list[dict[str, Any]], k8s_pod_settings: dict[str, Settings], region: str
) -> None:
    """`georep replicas registry-config` for this region, the primary's auth copied, gives the same file
    (but for http.secret, which the static manifests take from the region's Secret)."""
    settings = k8s_pod_settings[f"replicator-{region}"].region(region)
    config = _k8s_registry_config(k8s_objects, region)
    replica = ReplicaDefinition(
        region=region,
        endpoint=settings.endpoint,
        bucket=settings.bucket,
        prefix=settings.prefix,
        s3_region=settings.s3_region,
        registry=settings.registry,
        credentials_ref="aws:default",
    )
    generated = registry_config(replica, listen=str(config["http"]["addr"]), primary={"auth": config["auth"]})
    assert generated["storage"] == config["storage"]
    assert generated["auth"] == config["auth"]


# -- Kafka on Kubernetes (Strimzi) ----------------------------------------------------


def _strimzi(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    found = {str(o["metadata"]["name"]): o for o in objects if o["kind"] == kind}
    assert len(found) == len([o for o in objects if o["kind"] == kind]), f"two {kind}s of one name"
    return found


def _strimzi_acls(user: Mapping[str, Any]) -> list[Acl]:
    name = str(user["metadata"]["name"])
    authorization = _map(user["spec"]["authorization"], f"{name}.authorization")
    assert authorization["type"] == "simple", name
    acls: list[Acl] = []
    for rule in _list(authorization["acls"], f"{name}.acls"):
        assert rule.get("type", "allow") == "allow", name
        assert rule.get("host", "*") == "*", name
        resource = _map(rule["resource"], "resource")
        pattern = _STRIMZI_PATTERNS[resource.get("patternType", "literal")]
        acls.extend(
            Acl(name, str(resource["type"]), str(resource["name"]), str(op).lower(), pattern)
            for op in _list(rule["operations"], "operations")
        )
    return acls


def test_kafka_users_are_allowed_what_the_local_stack_allows(
    kafka_objects: list[dict[str, Any]], k8s_objects: list[dict[str, Any]], k8s_pod_settings: dict[str, Settings]
) -> None:
    kafka = k8s_pod_settings["webhook"].kafka
    users = _strimzi(kafka_objects, "KafkaUser")
    roles = {_kafka_user(w) for w in _georep_workloads(k8s_objects)}
    assert roles == {"webhook", "api"} | {f"replicator-{r}" for r in REGIONS}
    assert set(users) == roles | {"admin"}
    for name, user in users.items():
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}, name
    for role in roles:
        granted = _strimzi_acls(users[role])
        assert len(granted) == len(set(granted)), f"{role}: an ACL is granted twice"
        assert set(granted) == set(role_acls(kafka, role)), role
    # The operator's account: a super user, so it needs (and has) no ACLs.
    assert "authorization" not in users["admin"]["spec"]
    (cluster,) = _strimzi(kafka_objects, "Kafka").values()
    assert cluster["spec"]["kafka"]["authorization"] == {"type": "simple", "superUsers": ["admin"]}


def test_kafka_topics_are_the_ones_georep_would_create(
    kafka_objects: list[dict[str, Any]], k8s_pod_settings: dict[str, Settings]
) -> None:
    kafka = k8s_pod_settings["webhook"].kafka
    topics = {str(t["spec"].get("topicName", name)): t for name, t in _strimzi(kafka_objects, "KafkaTopic").items()}
    names = {getattr(kafka, field) for field in KafkaSettings.model_fields if field.endswith("_topic")}
    assert set(topics) == names
    for spec in topic_specs(kafka):
        topic = topics[spec.name]["spec"]
        assert topic["partitions"] == spec.num_partitions, spec.name
        assert topic["replicas"] == spec.replication_factor == kafka.replication_factor, spec.name
        assert {k: str(v) for k, v in topic["config"].items()} == spec.topic_configs, spec.name
    compacted = {kafka.replicas_topic, kafka.backfill_topic, kafka.reconcile_topic, kafka.leader_topic}
    for name, topic in topics.items():
        assert (topic["spec"]["config"].get("cleanup.policy") == "compact") is (name in compacted), name
    assert topics[kafka.events_topic]["spec"]["config"]["retention.ms"] == kafka.events_retention_ms


def test_kafka_cluster_serves_georeps_settings(
    kafka_objects: list[dict[str, Any]], k8s_pod_settings: dict[str, Settings]
) -> None:
    (cluster,) = _strimzi(kafka_objects, "Kafka").values()
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    for o in kafka_objects:
        assert o["apiVersion"] == "kafka.strimzi.io/v1", o["kind"]
        assert o["metadata"]["namespace"] == namespace, o["metadata"]["name"]
        if o is not cluster:
            assert o["metadata"]["labels"]["strimzi.io/cluster"] == name, o["metadata"]["name"]

    # One client listener, TLS and SCRAM: nothing reaches a broker unencrypted or unauthenticated.
    (listener,) = cluster["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True
    assert listener["authentication"] == {"type": "scram-sha-512"}
    for pod, settings in k8s_pod_settings.items():
        assert settings.kafka.bootstrap_servers == f"{name}-kafka-bootstrap.{namespace}.svc:{listener['port']}", pod

    kafka = k8s_pod_settings["webhook"].kafka
    config = cluster["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == kafka.replication_factor
    assert config["min.insync.replicas"] == kafka.min_insync_replicas == 2
    assert config["auto.create.topics.enable"] is False
    pools = _strimzi(kafka_objects, "KafkaNodePool").values()
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    controllers = sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"])
    assert brokers >= kafka.replication_factor
    # A KRaft quorum of an odd number of controllers, at least three: one may fail.
    assert controllers >= 3
    assert controllers % 2 == 1


# -- the example configuration ----------------------------------------------------

_SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}


def _documented_keys(text: str) -> dict[str, tuple[set[str], set[str]]]:
    """Per table ("" for the top level): keys set in the file, and keys shown commented out."""
    tables: dict[str, tuple[set[str], set[str]]] = {"": (set(), set())}
    current = ""
    for line in text.splitlines():
        header = re.fullmatch(r"\[([\w.-]+)\]", line.strip())
        if header:
            current = header.group(1)
            tables.setdefault(current, (set(), set()))
            continue
        active = re.match(r"(\w+) = ", line)
        commented = re.match(r"# (\w+) = ", line)
        if active:
            tables[current][0].add(active.group(1))
        elif commented:
            tables[current][1].add(commented.group(1))
    return tables


def test_example_toml_loads_and_documents_every_setting_with_its_default() -> None:
    text = EXAMPLE_TOML.read_text()
    settings = _load({CONFIG_ENV: str(EXAMPLE_TOML)})
    assert set(settings.regions) == set(REGIONS)
    documented = _documented_keys(text)

    top_level = {name for name in Settings.model_fields if name not in _SECTIONS and name != "regions"}
    assert documented[""][0] == top_level
    defaults = Settings.model_construct()
    for name in top_level:
        assert getattr(settings, name) == getattr(defaults, name), name

    for section, model in _SECTIONS.items():
        active, commented = documented[section]
        assert active | commented == set(model.model_fields), section
        assert not active & commented, section
        default = model()
        loaded = getattr(settings, section)
        for name in model.model_fields:
            assert getattr(loaded, name) == getattr(default, name), f"{section}.{name} is not shown with its default"

    for region in REGIONS:
        active, commented = documented[f"regions.{region}"]
        assert active | commented == set(RegionSettings.model_fields), region
    # Secrets without a default are only shown commented out, with where they come from instead.
    assert {"token"} <= documented["webhook"][1]
    assert {"password", "username"} <= documented["primary"][1]
    assert "GEOREP_REGIONS__ap-singapore__SECRET_KEY" in text


@pytest.mark.parametrize(
    ("brokers", "names", "rf", "isr"), [(1, ["kafka"], 1, 1), (3, ["kafka-0", "kafka-1", "kafka-2"], 3, 2)]
)
def test_the_local_stack_lists_every_broker_and_sizes_its_topics_by_them(
    tmp_path: Path, brokers: int, names: list[str], rf: int, isr: int
) -> None:
    """stack.json's `kafka` names every broker (host:port,…), the pid keys are `kafka` or `kafka-0..2`, topics
    get replication factor min(3, brokers) and min.insync.replicas 2 once there are 3 copies."""
    from deploy.local import configs, stack

    spec = stack.make_spec(tmp_path, 40000, ["ap-singapore", "eu-frankfurt"], kafka_brokers=brokers)
    assert stack.kafka_names(spec) == names
    hosts = spec.bootstrap.split(",")
    assert len(hosts) == brokers
    assert len(set(hosts)) == brokers
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", h) for h in hosts)
    assert spec.kafka_admin().replication_factor == rf
    properties = configs.kafka_properties(spec, 0).read_text()
    assert f"default.replication.factor={rf}\n" in properties
    assert f"min.insync.replicas={isr}\n" in properties
