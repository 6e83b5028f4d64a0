"""The deployment files agree with each other and with georep's settings.

Nothing here starts a container: docker-compose.yml, the registry configs
under deploy/compose/ and the Kubernetes manifests under deploy/k8s/ are
parsed, georep's settings are loaded the way each service would load them
(its environment plus the mounted TOML file), and every wire between two
parts is compared value for value: a renamed service, a changed port, a
rotated token or a region added in one place only fails here.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from engine.layout import Layout
from engine.settings import CONFIG_ENV, RegionSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
EXAMPLE_TOML = ROOT / "deploy" / "georep.example.toml"
K8S = ROOT / "deploy" / "k8s"
SECRET_TEMPLATE = K8S / "base" / "georep-credentials.example.yaml"

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
    for name in ("kafka", "primary", "webhook", "logstore"):
        assert name in services
    assert set(compose_settings) == {"webhook", "logstore"} | {f"replicator-{r}" for r in REGIONS}
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
    assert _list(services["logstore"]["command"], "logstore") == ["logstore"]


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
    kafka = services["kafka"]
    env = _env(kafka)
    name, host, port = _kafka_listener(kafka)
    # Clients reach the broker by the name it advertises: the compose service's DNS name.
    assert host == "kafka"
    assert host in services
    assert kafka["hostname"] == host
    listeners = dict(entry.split("://") for entry in env["KAFKA_LISTENERS"].split(","))
    assert _port_of_addr(listeners[name]) == port
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voters == f"{env['KAFKA_NODE_ID']}@kafka:{_port_of_addr(listeners[controller])}"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["image"] == "apache/kafka:4.1.1"
    # One broker: any internal topic asking for 3 replicas could never be created.
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_compose_georep_services_bootstrap_from_the_kafka_listener(
    services: dict[str, dict[str, Any]], compose_settings: dict[str, Settings]
) -> None:
    _, host, port = _kafka_listener(services["kafka"])
    for name, settings in compose_settings.items():
        assert settings.kafka.bootstrap_servers == f"{host}:{port}", name
        assert settings.kafka.replication_factor == 1, name


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
    # distribution 2.8.2 applies `ignore` only when a media type is listed; the
    # placeholder must not be a type a registry really sends.
    assert len(_list(ignore["mediatypes"], "ignore.mediatypes")) == 1
    assert not str(ignore["mediatypes"][0]).startswith(("application/vnd.oci", "application/vnd.docker"))
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
    assert deps["kafka"] == {"condition": "service_healthy"}
    assert deps["primary"] == {"condition": "service_healthy"}
    assert deps[f"minio-init-{region}"] == {"condition": "service_completed_successfully"}


def test_compose_webhook_and_logstore_healthchecks_use_their_ports(
    services: dict[str, dict[str, Any]], compose_settings: dict[str, Settings]
) -> None:
    assert _healthcheck_url(services["webhook"]) == (compose_settings["webhook"].webhook.port, "/readyz")
    logstore = compose_settings["logstore"]
    assert _healthcheck_url(services["logstore"]) == (logstore.logstore.port, "/healthz")
    assert logstore.logstore.host == ALL_INTERFACES
    # The SQLite file must be on the volume, or it vanishes with the container.
    assert str(PurePosixPath(logstore.logstore.path).parent) in _volume_targets(services["logstore"])


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


@pytest.fixture(scope="module")
def k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path == SECRET_TEMPLATE:
            continue
        objects.extend(_yaml_all(path))
    return objects


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


@pytest.fixture(scope="module")
def secret_template() -> dict[str, Any]:
    (secret,) = _yaml_all(SECRET_TEMPLATE)
    assert secret["kind"] == "Secret"
    return secret


@pytest.fixture(scope="module")
def k8s_toml(k8s_objects: list[dict[str, Any]]) -> str:
    return str(_one(k8s_objects, "ConfigMap", "georep-config")["data"]["georep.toml"])


@pytest.fixture(scope="module")
def k8s_settings(k8s_toml: str, secret_template: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings as a georep pod loads them: the ConfigMap's file plus the Secret as environment."""
    path = tmp_path_factory.mktemp("k8s") / "georep.toml"
    path.write_text(k8s_toml)
    env = {str(k): str(v) for k, v in _map(secret_template["stringData"], "stringData").items()}
    return _load({**env, CONFIG_ENV: str(path)})


def _kustomize_resources(directory: Path) -> list[Path]:
    kustomization = _yaml(directory / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    return [(directory / str(entry)).resolve() for entry in _list(kustomization["resources"], str(directory))]


def test_k8s_kustomizations_cover_every_manifest_but_the_secret_template() -> None:
    listed: list[Path] = []
    pending = [K8S]
    while pending:
        directory = pending.pop()
        for resource in _kustomize_resources(directory):
            assert resource.exists(), f"{directory}: {resource} does not exist"
            if resource.is_dir():
                pending.append(resource)
            else:
                listed.append(resource)
    manifests = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert len(listed) == len(set(listed)), "a manifest is listed twice"
    # Applying the kustomization must never overwrite real credentials with placeholders.
    assert set(listed) == manifests - {SECRET_TEMPLATE.resolve()}
    assert {p.parent.name for p in listed if p.parent.parent.name == "regions"} == set(REGIONS)


def test_k8s_objects_live_in_the_georep_namespace(k8s_objects: list[dict[str, Any]]) -> None:
    (namespace,) = [o for o in k8s_objects if o["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == "georep"
    for o in k8s_objects:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "georep", f"{o['kind']}/{o['metadata']['name']}"


def test_k8s_config_has_no_secrets_and_loads(k8s_toml: str, k8s_settings: Settings) -> None:
    parsed = tomllib.loads(k8s_toml)
    secret_names = {"secret_key", "access_key", "token", "password", "username"}

    def keys(table: Mapping[str, Any]) -> Iterator[str]:
        for key, value in table.items():
            yield key
            if isinstance(value, dict):
                yield from keys(value)

    assert secret_names.isdisjoint(keys(parsed))
    assert set(k8s_settings.regions) == set(REGIONS)
    assert k8s_settings.webhook.token is not None
    for region in REGIONS:
        assert k8s_settings.region(region).access_key == f"REPLACE-{region}-access-key"


def test_k8s_secret_references_name_template_keys(
    k8s_objects: list[dict[str, Any]], secret_template: dict[str, Any]
) -> None:
    name = secret_template["metadata"]["name"]
    keys = set(_map(secret_template["stringData"], "stringData"))
    references = 0
    for workload in _workloads(k8s_objects):
        container = _container(workload)
        for source in container.get("envFrom") or []:
            assert source["secretRef"]["name"] == name
            references += 1
        for var in container.get("env") or []:
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref is not None:
                assert (ref["name"], ref["key"]) in {(name, key) for key in keys}, var["name"]
                references += 1
    # webhook, logstore, a replicator per region (envFrom); two keys per regional registry.
    assert references == 2 + len(REGIONS) + 2 * len(REGIONS)


def _georep_workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [w for w in _workloads(objects) if str(_container(w)["image"]).split("/")[-1].startswith("georep:")]


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
    k8s_objects: list[dict[str, Any]], k8s_settings: Settings
) -> None:
    replicators = _replicators(k8s_objects)
    assert set(replicators) == set(k8s_settings.regions) == set(REGIONS)
    for region, workload in replicators.items():
        assert workload["kind"] == "Deployment"
        assert workload["metadata"]["name"] == f"replicator-{region}"


@pytest.mark.parametrize("region", REGIONS)
def test_k8s_replicator_probes_and_drain(
    k8s_objects: list[dict[str, Any]], k8s_settings: Settings, region: str
) -> None:
    workload = _replicators(k8s_objects)[region]
    container = _container(workload)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert _container_port(container, get["port"]) == k8s_settings.replicator.port, probe
    assert k8s_settings.replicator.host == ALL_INTERFACES
    grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > k8s_settings.replicator.drain_grace_s


def test_k8s_webhook_and_logstore(k8s_objects: list[dict[str, Any]], k8s_settings: Settings) -> None:
    webhook = _container(_one(k8s_objects, "Deployment", "webhook"))
    assert webhook["args"] == ["webhook"]
    assert _container_port(webhook, "http") == k8s_settings.webhook.port
    assert webhook["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # /readyz may wait publish_timeout_s for Kafka; a shorter probe timeout always fails then.
    assert webhook["readinessProbe"]["timeoutSeconds"] > k8s_settings.webhook.publish_timeout_s
    assert k8s_settings.webhook.host == ALL_INTERFACES

    statefulset = _one(k8s_objects, "StatefulSet", "logstore")
    logstore = _container(statefulset)
    assert logstore["args"] == ["logstore"]
    assert statefulset["spec"]["replicas"] == 1
    assert _container_port(logstore, "http") == k8s_settings.logstore.port
    assert logstore["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in logstore["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == str(PurePosixPath(k8s_settings.logstore.path).parent)
    service = _one(k8s_objects, "Service", statefulset["spec"]["serviceName"])
    url = urlsplit(k8s_settings.logstore.url)
    assert url.hostname == f"{service['metadata']['name']}.georep.svc"
    assert url.port == service["spec"]["ports"][0]["port"]


def test_k8s_services_select_their_pods(k8s_objects: list[dict[str, Any]]) -> None:
    services = [o for o in k8s_objects if o["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"webhook", "logstore"} | {f"registry-{r}" for r in REGIONS}
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


@pytest.mark.parametrize("region", REGIONS)
def test_k8s_regional_registry_reads_the_regions_bucket(
    k8s_objects: list[dict[str, Any]], k8s_settings: Settings, secret_template: dict[str, Any], region: str
) -> None:
    settings = k8s_settings.region(region)
    name = f"registry-{region}"
    config = _map(yaml.safe_load(_one(k8s_objects, "ConfigMap", name)["data"]["config.yml"]), name)
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
    refs = {var["name"]: var["valueFrom"]["secretKeyRef"]["key"] for var in container["env"]}
    assert refs == {
        "REGISTRY_STORAGE_S3_ACCESSKEY": f"GEOREP_REGIONS__{region}__ACCESS_KEY",
        "REGISTRY_STORAGE_S3_SECRETKEY": f"GEOREP_REGIONS__{region}__SECRET_KEY",
    }
    secrets = secret_template["stringData"]
    assert secrets[refs["REGISTRY_STORAGE_S3_ACCESSKEY"]] == settings.access_key
    assert secrets[refs["REGISTRY_STORAGE_S3_SECRETKEY"]] == settings.credentials()[1]
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
