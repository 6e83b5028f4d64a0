"""The production examples say what the code does, and their commands would run.

No Docker, no cluster, no cloud: the Dockerfile's inputs are checked against the repository, every `georep`
command in the deployment examples (the README's production sections, deploy/k8s/README.md, the compose files'
comments) is parsed by georep's own parser, every `replicas create` among them is checked against the README's
replica rules, the compose and Kubernetes examples are checked to carry the API token those commands need, and
the README's IAM policies and Kafka topic table are compared with what the code calls and creates.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import import_module, metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from adapters.kafka import topic_specs
from engine.credentials import resolve_credentials
from engine.replicas import ReplicaDefinition, Rules
from engine.settings import CONFIG_ENV, KafkaSettings, Settings, load_settings
from engine.signing import public_key
from georep.cli import build_parser
from producers.replicas import REPLAY

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
K8S = ROOT / "deploy" / "k8s"
K8S_README = K8S / "README.md"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_TOML = ROOT / "deploy" / "compose" / "georep.toml"
ADD_REGION = ROOT / "deploy" / "compose" / "add-ap-tokyo.yml"
#: the regions the examples ship with: an "add a region" example must add another
SHIPPED_REGIONS = frozenset({"ap-singapore", "eu-frankfurt"})
#: what must never reach the image (the build context is the whole repository)
LOCAL_STATE = frozenset({".", ".venv", ".cache", ".georep", ".git"})
#: shell operators that end the georep part of a command line
_SHELL_STOPS = frozenset({">", ">>", "<", "|", "&", "&&", ";"})


# -- helpers ------------------------------------------------------------------


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _section(text: str, start: str, end: str) -> str:
    """The part of a markdown text from the heading `start` to the heading `end`."""
    begin = text.index(f"\n{start}\n")
    return text[begin : text.index(f"\n{end}\n", begin)]


def _fenced(text: str, language: str | None = None) -> list[str]:
    """The bodies of the fenced code blocks of a markdown text (of one language, if given)."""
    blocks = re.findall(r"^ *```([a-z]*)\n(.*?)^ *```", text, re.MULTILINE | re.DOTALL)
    return [body for lang, body in blocks if language is None or lang == language]


def _comments(path: Path) -> str:
    """The indented comment lines of a YAML file, without their `#`: its example commands (prose is not indented)."""
    lines = [line.strip().removeprefix("#") for line in path.read_text().splitlines() if line.lstrip().startswith("#")]
    return "\n".join(line for line in lines if line.startswith("  "))


@dataclass(frozen=True, slots=True)
class Command:
    """A shell line that runs georep: what comes before `georep` (kubectl, docker compose exec), georep's own
    arguments, and where its output goes (a `>` redirect)."""

    prefix: tuple[str, ...]
    args: tuple[str, ...]
    output: str | None
    line: str


def _georep_commands(text: str) -> Iterator[Command]:
    """Every command line in `text` that runs georep, directly or in a container (continuations joined)."""
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip().removeprefix("$ ")
        if not line.startswith(("georep ", "kubectl ", "docker compose exec ")):
            continue
        tokens = shlex.split(line, comments=True)
        # `kubectl -n georep ...` names the namespace, not the command.
        at = [
            i for i, t in enumerate(tokens) if t == "georep" and (i == 0 or tokens[i - 1] not in ("-n", "--namespace"))
        ]
        if not at:
            continue
        rest = tokens[at[0] + 1 :]
        stop = next((i for i, t in enumerate(rest) if t in _SHELL_STOPS), len(rest))
        output = rest[stop + 1] if stop + 1 < len(rest) and rest[stop] in (">", ">>") else None
        yield Command(tuple(tokens[: at[0]]), tuple(rest[:stop]), output, line)


def _parse(args: tuple[str, ...] | list[str], where: str) -> argparse.Namespace:
    try:
        return build_parser().parse_args(list(args))
    except SystemExit as exc:
        pytest.fail(f"{where}: `georep {shlex.join(args)}` does not parse with georep's parser (exit {exc.code})")


def _production_readme() -> str:
    """The README's production sections: deploying a region, the front door, Kafka in production."""
    return _section(README.read_text(), "## Deploying a region", "## Security")


def _example_sources() -> dict[str, str]:
    """Where deployment examples live, by name: the text their commands are read from."""
    return {
        "README.md (production sections)": "\n".join(_fenced(_production_readme())),
        "deploy/k8s/README.md": "\n".join(_fenced(K8S_README.read_text())),
        "docker-compose.yml": _comments(COMPOSE_FILE),
        "deploy/compose/add-ap-tokyo.yml": _comments(ADD_REGION),
    }


def _readme_rules() -> Rules:
    """The replica rules the README's configuration shows (its `[rules]` block)."""
    (block,) = [b for b in _fenced(README.read_text(), "toml") if "[rules]" in b]
    return Rules(**tomllib.loads(block)["rules"])


def _definition(args: argparse.Namespace) -> ReplicaDefinition:
    """The definition `georep replicas create` would send, as the API validates it."""
    return ReplicaDefinition(
        region=args.region, endpoint=args.endpoint, bucket=args.bucket, prefix=args.prefix, s3_region=args.s3_region,
        registry=args.registry, credentials_ref=args.credentials_ref, deletes=not args.no_deletes,
        include=tuple(args.include), exclude=tuple(args.exclude),
    )  # fmt: skip


def _creates(source: str) -> list[tuple[Command, argparse.Namespace]]:
    commands = _georep_commands(_example_sources()[source])
    return [(c, _parse(c.args, source)) for c in commands if c.args[:2] == ("replicas", "create")]


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]


def _compose_services(*paths: Path) -> dict[str, dict[str, Any]]:
    """Services of compose files merged in order, as `docker compose -f a -f b` merges them (enough for these:
    a later file adds services, it does not change earlier ones)."""
    services: dict[str, dict[str, Any]] = {}
    for path in paths:
        for name, spec in (yaml.safe_load(path.read_text()).get("services") or {}).items():
            assert name not in services, f"{path.name} redefines service {name}"
            services[name] = spec
    return services


def _env(service: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (service.get("environment") or {}).items()}


def _settings(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """georep's settings with exactly `env` as its environment, the compose TOML as its file."""
    for name in [n for n in os.environ if n.upper().startswith("GEOREP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("GEOREP_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv(CONFIG_ENV, str(COMPOSE_TOML))
    return load_settings()


# -- deploy/Dockerfile -----------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuations joined, comments left out."""
    instructions = []
    for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_the_dockerfile_copies_only_paths_that_exist_and_no_local_state() -> None:
    instructions = _dockerfile()
    assert not [rest for keyword, rest in instructions if keyword == "ADD"], "ADD fetches and unpacks: use COPY"
    sources = []
    for keyword, rest in instructions:
        if keyword == "COPY":
            parts = rest.split()
            assert not parts[0].startswith("--"), f"COPY {rest}: copies from another stage or changes owners"
            sources += parts[:-1]
    assert sources
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, f"deploy/Dockerfile copies paths the repository does not have: {missing}"
    # The whole repository is the build context: copying it (or local state in it) would ship .venv and tokens.
    assert not [s for s in sources if s.rstrip("/") in LOCAL_STATE or s.startswith((".venv", ".cache", ".georep"))]


def test_the_image_installs_every_dependency_at_the_locked_version() -> None:
    instructions = _dockerfile()
    (base,) = [rest for keyword, rest in instructions if keyword == "FROM"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    python = re.fullmatch(r"python:(\d+\.\d+)(?:[.-].*)?", base)
    assert python is not None, base
    assert SpecifierSet(pyproject["project"]["requires-python"]).contains(python.group(1) + ".0"), base
    assert any(k == "RUN" and "pip install -c requirements.lock ." in rest for k, rest in instructions)

    lock: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            lock[_normalized(name)] = version.split(";")[0].strip()
    # The project's own pins must agree with the lock, or `pip install -c` refuses to resolve.
    wanted = [Requirement(d) for d in pyproject["project"]["dependencies"]]
    for requirement in wanted:
        (pin,) = requirement.specifier
        assert lock.get(_normalized(requirement.name)) == pin.version, f"{requirement} against the lock"
    # Everything those pull in, transitively (as installed here), is pinned too: the image gets the same versions.
    seen: set[str] = set()
    unpinned = []
    while wanted:
        requirement = wanted.pop()
        key = _normalized(requirement.name)
        if key in seen:
            continue
        seen.add(key)
        if key not in lock:
            unpinned.append(requirement.name)
        extras = {"", *requirement.extras}
        for text in metadata.requires(requirement.name) or []:
            dependency = Requirement(text)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                wanted.append(dependency)
    assert not unpinned, f"runtime dependencies requirements.lock does not pin: {sorted(unpinned)}"


def test_the_image_runs_the_georep_cli_with_any_command_the_examples_give_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    instructions = _dockerfile()
    (entrypoint,) = [json.loads(rest) for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    (command,) = [json.loads(rest) for keyword, rest in instructions if keyword == "CMD"]
    # Exec form: georep is PID 1 and gets SIGTERM itself (the drain); a shell would swallow it.
    assert entrypoint == ["georep"]
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["georep"]
    module, _, function = script.partition(":")
    assert callable(getattr(import_module(module), function))
    with pytest.raises(SystemExit) as shown:
        build_parser().parse_args(command)
    assert shown.value.code == 0
    assert "usage: georep" in capsys.readouterr().out
    # Each container's command is the entrypoint's arguments.
    commands: dict[str, list[str]] = {}
    for name, spec in _compose_services(COMPOSE_FILE, ADD_REGION).items():
        if (spec.get("build") or {}).get("dockerfile") == "deploy/Dockerfile":
            assert "entrypoint" not in spec, name
            commands[f"compose {name}"] = [str(a) for a in spec["command"]]
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in _yaml_docs(path):
            if doc.get("kind") in ("Deployment", "StatefulSet"):
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    if str(container["image"]).rsplit("/", 1)[-1].startswith("georep:"):
                        assert "command" not in container, path
                        commands[f"{path.relative_to(ROOT)} {container['name']}"] = [str(a) for a in container["args"]]
    assert len(commands) >= 8
    for where, args in commands.items():
        _parse(args, where)


# -- the examples' commands ------------------------------------------------------------


def test_every_georep_command_in_the_deploy_examples_parses() -> None:
    counted = 0
    for source in _example_sources():
        for command in _georep_commands(_example_sources()[source]):
            _parse(command.args, source)
            counted += 1
    assert counted >= 8


@pytest.mark.parametrize("source", ["deploy/k8s/README.md", "deploy/compose/add-ap-tokyo.yml"])
def test_add_a_region_uses_replicas_create_with_its_s3_region(source: str) -> None:
    creates = _creates(source)
    assert creates, f"{source} adds a region without `georep replicas create`"
    for command, _ in creates:
        # The default (us-east-1) signs for the wrong region on AWS: every example says which one it means.
        assert "--s3-region" in command.args, command.line


def test_every_replicas_create_example_passes_the_readmes_rules() -> None:
    rules = _readme_rules()
    assert rules.primary_region is not None
    checked = 0
    for source in _example_sources():
        for command, args in _creates(source):
            definition = _definition(args)
            # The primary's region is refused (`primary-region`), and so is a region that exists already.
            rules.check_create(definition, {})
            assert definition.region not in SHIPPED_REGIONS, command.line
            aws = re.fullmatch(r"s3[.-]([a-z0-9-]+)\.amazonaws\.com", urlsplit(definition.endpoint).hostname or "")
            if aws is not None:
                assert definition.s3_region == aws.group(1), f"signs for the wrong region: {command.line}"
            checked += 1
    assert checked >= 2


def test_the_k8s_add_a_region_walkthrough_is_not_the_primary_region() -> None:
    text = K8S_README.read_text()
    (region,) = re.findall(r"Say the new region is `([a-z0-9-]+)`", text)
    assert region != _readme_rules().primary_region
    assert region not in SHIPPED_REGIONS
    walkthrough = text[text.index("## Add a region") : text.index("## Sizing notes")]
    assert f"[regions.{_readme_rules().primary_region}]" not in walkthrough


def test_both_readmes_say_where_a_new_replicas_group_starts() -> None:
    said = f"{int(REPLAY.total_seconds())} s before"
    for path in (README, K8S_README):
        text = " ".join(path.read_text().split())
        assert said in text, f"{path.relative_to(ROOT)} does not say a new replica's group starts {said} its creation"
        assert "to start now" not in text, path


# -- the API token: replica changes must not get 403 -------------------------------------------


def _changes(command: Command) -> bool:
    return command.args[:2] in (("replicas", "create"), ("replicas", "delete")) or command.args[:1] == ("backfill",)


def test_the_k8s_example_carries_the_api_token_where_replica_changes_run() -> None:
    (api,) = [
        d
        for d in _yaml_docs(K8S / "core" / "secrets.example.yaml")
        if d["kind"] == "Secret" and d["metadata"]["name"] == "georep-api"
    ]
    assert api["stringData"].get("GEOREP_LOGSTORE__API_TOKEN")
    (logstore,) = [d for d in _yaml_docs(K8S / "core" / "logstore.yaml") if d["kind"] == "StatefulSet"]
    (container,) = logstore["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": "georep-api"}} in container["envFrom"]
    pod = logstore["metadata"]["name"]
    changes = [c for c in _georep_commands(_example_sources()["deploy/k8s/README.md"]) if _changes(c)]
    assert changes
    for command in changes:
        # Only the API pods hold the token: run there, as the README says.
        assert command.prefix[:4] == ("kubectl", "-n", "georep", "exec"), command.line
        assert re.fullmatch(rf"{pod}-\d+", command.prefix[4]), command.line
        assert command.prefix[-1] == "--", command.line


def test_the_compose_api_processes_hold_the_api_token_and_a_matching_signing_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _compose_services(COMPOSE_FILE, ADD_REGION)
    georep = {n: s for n, s in services.items() if (s.get("build") or {}).get("dockerfile") == "deploy/Dockerfile"}
    apis = {n for n, s in georep.items() if s["command"] == ["logstore"]}
    assert apis
    for name, spec in georep.items():
        settings = _settings(_env(spec), monkeypatch)
        if name in apis:
            assert settings.logstore.api_token is not None, name
            assert settings.replicas.signing_key is not None, name
            # The API signs definitions every process verifies: a pair that does not match would be ignored.
            assert public_key(settings.replicas.signing_key.get_secret_value()) == settings.replicas.verify_key
        else:
            assert settings.logstore.api_token is None, name
            assert settings.replicas.signing_key is None, name
    for source in ("docker-compose.yml", "deploy/compose/add-ap-tokyo.yml"):
        for command in _georep_commands(_example_sources()[source]):
            if _changes(command):
                assert command.prefix[:3] == ("docker", "compose", "exec"), command.line
                assert [p for p in command.prefix[3:] if not p.startswith("-")] == [command.prefix[-1]], command.line
                assert command.prefix[-1] in apis, command.line


def test_the_compose_georep_services_speak_the_brokers_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose_services(COMPOSE_FILE)
    protocols = set()
    for spec in services.values():
        env = _env(spec)
        if "KAFKA_ADVERTISED_LISTENERS" in env:
            listener = env["KAFKA_ADVERTISED_LISTENERS"].split("://")[0]
            protocols.add(dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))[listener])
    assert len(protocols) == 1
    assert _settings({}, monkeypatch).kafka.security_protocol == protocols.pop()


def test_the_compose_add_a_region_override_agrees_with_its_replicas_create(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose_services(COMPOSE_FILE, ADD_REGION)
    override = yaml.safe_load(ADD_REGION.read_text())
    for name, spec in override["services"].items():
        for target in spec.get("depends_on") or {}:
            assert target in services, f"{name} depends on unknown service {target}"
    ((_, args),) = _creates("deploy/compose/add-ap-tokyo.yml")
    definition = _definition(args)
    region = definition.region
    assert set(override["services"]) == {
        f"{part}-{region}" for part in ("minio", "minio-init", "replicator", "registry")
    }

    replicator = services[f"replicator-{region}"]
    assert replicator["command"] == ["replicate", "--region", region]
    minio = _env(services[f"minio-{region}"])
    keys = resolve_credentials(definition.credentials_ref, _env(replicator))
    assert keys is not None
    assert (keys.access_key, keys.secret_key.get_secret_value()) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    settings = _settings(_env(replicator), monkeypatch)
    assert region not in settings.regions, "made with replicas create, not pinned"
    assert settings.replicas.verify_key, "a replicator of a replica follows signed definitions"

    endpoint = urlsplit(definition.endpoint)
    assert endpoint.hostname == f"minio-{region}"
    minio_command = services[f"minio-{region}"]["command"]
    assert minio_command[minio_command.index("--address") + 1] == f":{endpoint.port}"
    assert services[f"minio-init-{region}"]["command"][-1] == f"region/{definition.bucket}"

    registry = services[f"registry-{region}"]
    assert definition.registry == f"registry-{region}:5000"
    published = [str(p) for s in services.values() for p in s.get("ports") or []]
    assert len({p.rsplit(":", 1)[0] for p in published}) == len(published), "two services publish one host port"
    assert any(p.endswith(":5000") for p in registry["ports"])
    registry_env = _env(registry)
    assert (registry_env["REGISTRY_STORAGE_S3_ACCESSKEY"], registry_env["REGISTRY_STORAGE_S3_SECRETKEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    # The registry serves the file `registry-config` writes, listening where the service publishes.
    (generate,) = [c for c in _georep_commands(_comments(ADD_REGION)) if c.args[:2] == ("replicas", "registry-config")]
    config = _parse(generate.args, "add-ap-tokyo.yml")
    assert config.region == region
    assert config.listen.endswith(":5000")
    assert f"./{generate.output}:/etc/docker/registry/config.yml:ro" in registry["volumes"]


# -- the README's IAM policies and Kafka table against the code --------------------------------------

#: every S3 call georep makes, by botocore operation (adapters/store.py) or obstore call (adapters/objects.py),
#: and the IAM action that allows it
_IAM_ACTION = {
    "head_bucket": "s3:ListBucket",
    "get_object": "s3:GetObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "list_multipart_uploads": "s3:ListBucketMultipartUploads",
    "list": "s3:ListBucket",  # obstore's ListObjectsV2
    "head_async": "s3:GetObject",
    "get_async": "s3:GetObject",
    "put_async": "s3:PutObject",
    "delete_async": "s3:DeleteObject",
}
#: what `georep verify` and `reconcile` may do to a region's store (consumers/drift.py): read only
_READS = frozenset({"keys", "listing", "size", "digest", "exists", "get"})


def _s3_calls() -> set[str]:
    store = (ROOT / "adapters" / "store.py").read_text()
    objects = (ROOT / "adapters" / "objects.py").read_text()
    calls = set(re.findall(r"_s3\.(\w+)\(", store)) - {"get_paginator"}
    calls |= set(re.findall(r"get_paginator\(\s*\"(\w+)\"", store))
    calls |= set(re.findall(r"obstore\.(\w+)\(", objects))
    return calls


def _policies() -> dict[str, set[str]]:
    """The README's IAM statements' actions, by statement id."""
    actions: dict[str, set[str]] = {}
    for block in _fenced(_section(README.read_text(), "## Security", "## Performance"), "json"):
        for statement in json.loads(block)["Statement"]:
            actions[statement["Sid"]] = set(statement["Action"])
    return actions


def test_the_readmes_iam_policies_allow_every_s3_call_and_nothing_more() -> None:
    calls = _s3_calls()
    expected = {"put_async", "list", "list_multipart_uploads", "abort_multipart_upload"}
    assert expected <= calls, "the scan no longer finds the calls"
    unknown = calls - set(_IAM_ACTION)
    assert not unknown, f"S3 calls with no IAM action here (add them, and to the README's policy): {sorted(unknown)}"
    # S3 is called from the adapters only, so the scan above sees every call.
    for top in ("engine", "consumers", "producers", "georep"):
        for path in (ROOT / top).rglob("*.py"):
            assert not re.search(r"obstore\.\w+\(|_s3\.\w+\(", path.read_text()), path
    needed = {_IAM_ACTION[c] for c in calls}
    policies = _policies()
    assert policies["ReplicatorBucket"] | policies["ReplicatorObjects"] == needed
    # Bucket-level actions on the bucket, object-level on its keys: IAM ignores a mismatch silently.
    assert policies["ReplicatorBucket"] == {a for a in needed if a.startswith("s3:List")}
    assert policies["ReadOnlyBucket"] | policies["ReadOnlyObjects"] == {"s3:GetObject", "s3:ListBucket"}
    drift = (ROOT / "consumers" / "drift.py").read_text()
    assert set(re.findall(r"self\.store\.(\w+)\(", drift)) <= _READS, "verify/reconcile must only read the bucket"
    # The deployment list in the README names every action the policy grants.
    deploying = _section(README.read_text(), "## Deploying a region", "### The image: `deploy/Dockerfile`")
    for action in needed:
        assert f"`{action}`" in deploying, action


def _retention(configs: Mapping[str, str]) -> str:
    ms = configs.get("retention.ms")
    if ms is None:
        return "the broker's default"
    if ms == "-1":
        return "forever"
    days = int(ms) / (24 * 3600 * 1000)
    return f"{days:g} days"


def test_the_readmes_kafka_table_is_what_georep_creates() -> None:
    section = _section(README.read_text(), "## Kafka in production", "## Security")
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and re.fullmatch(r"`[a-z.-]+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    specs = topic_specs(KafkaSettings())
    assert set(rows) == {spec.name for spec in specs}
    for spec in specs:
        cells = rows[spec.name]
        assert cells[1].split()[0] == str(spec.num_partitions), cells
        cleanup = "compact" if spec.topic_configs.get("cleanup.policy") == "compact" else "delete"
        assert cells[2].startswith(f"{cleanup}, {_retention(spec.topic_configs)}"), cells
