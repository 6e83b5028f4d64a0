"""Configuration files of the local stack, generated from one StackSpec (registry configs in YAML)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.local.ports import Ports
from deploy.registry_config import load_primary_config, registry_config, render
from engine.replicas import ReplicaDefinition
from engine.settings import KafkaSettings

PRIMARY_REGION = "us-virginia"
DEFAULT_REGIONS = ("ap-singapore", "eu-frankfurt")
# The local stack's replica rules, so that every rule can be seen refusing something.
JURISDICTIONS = {
    "us-virginia": "US",
    "us-oregon": "US",
    "ap-singapore": "SG",
    "ap-tokyo": "JP",
    "eu-frankfurt": "EU",
    "cn-shanghai": "CN",
    "cn-beijing": "CN",
}
CLOSED_JURISDICTIONS = ("CN",)
NOT_OFFERED = ("us-gov-east",)
# A media type nobody sends: in distribution 2.8.2 `ignore.actions` only works beside a non-empty `mediatypes`.
_PLACEHOLDER_MEDIA_TYPE = "application/vnd.georep.placeholder"


@dataclass(frozen=True, slots=True)
class RegionSpec:
    name: str
    index: int
    bucket: str
    prefix: str
    access_key: str
    secret_key: str


@dataclass(frozen=True, slots=True)
class StackSpec:
    root: Path
    ports: Ports
    regions: tuple[RegionSpec, ...]
    # Local development credentials only, regenerated for every stack.
    webhook_token: str
    http_secret: str
    api_token: str
    host: str = "127.0.0.1"
    #: "2" (Debian's distribution 2.8.2) or "3" (distribution v3): every registry of the stack runs this line
    registry_line: str = "2"
    extra: dict[str, Any] = field(default_factory=dict)

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    def kafka_client(self) -> dict[str, Any]:
        """The administrator's Kafka client settings (what stack.json's `kafka_client` holds)."""
        return {"security_protocol": "PLAINTEXT"}

    def kafka_admin(self) -> KafkaSettings:
        return KafkaSettings.model_validate(
            {"bootstrap_servers": f"{self.host}:{self.ports.kafka}", **self.kafka_client()}
        )  # fmt: skip

    @property
    def webhook_url(self) -> str:
        return self.url(self.ports.webhook) + "/webhooks/distribution"

    @property
    def harbor_webhook_url(self) -> str:
        return self.url(self.ports.webhook) + "/webhooks/harbor"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _registry_base(spec: StackSpec, port: int) -> dict[str, Any]:
    return {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
        "http": {"addr": f"{spec.host}:{port}", "secret": spec.http_secret},
    }


def primary_registry(spec: StackSpec) -> Path:
    config = _registry_base(spec, spec.ports.primary)
    config["storage"] = {
        "filesystem": {"rootdirectory": str(spec.root / "primary" / "data")},
        "delete": {"enabled": True},
    }
    config["notifications"] = {
        "events": {"includereferences": True},
        "endpoints": [
            {
                "name": "georep",
                "url": spec.webhook_url,
                "headers": {"Authorization": [f"Bearer {spec.webhook_token}"]},
                "timeout": "5s",
                "threshold": 3,
                "backoff": "500ms",
                "ignore": {"mediatypes": [_PLACEHOLDER_MEDIA_TYPE], "actions": ["pull"]},
            }
        ],
    }
    return _write(spec.root / "primary" / "config.yml", render(config))


def replica_request(spec: StackSpec, region: RegionSpec) -> dict[str, Any]:
    """What `georep replicas create` sends for one of the stack's regions; its keys go to a file it references."""
    keys = {"access_key": region.access_key, "secret_key": region.secret_key}
    credentials = _write(spec.root / "credentials" / f"{region.name}.json", json.dumps(keys))
    credentials.chmod(0o600)
    return {
        "region": region.name,
        "endpoint": spec.url(spec.ports.seaweed(region.index)["s3"]),
        "bucket": region.bucket,
        "prefix": region.prefix,
        "registry": f"{spec.host}:{spec.ports.registry(region.index)}",
        "credentials_ref": f"file:{credentials}",
    }


def region_registry(spec: StackSpec, replica: ReplicaDefinition) -> Path:
    """The region's read-only registry, generated from its replica definition (keys come from the environment)."""
    listen = replica.registry or f"{spec.host}:5000"
    primary = load_primary_config(spec.root / "primary" / "config.yml")
    config = registry_config(replica, listen=listen, primary=primary)
    return _write(spec.root / f"registry-{replica.region}" / "config.yml", render(config))


def seaweed_identities(spec: StackSpec, region: RegionSpec) -> Path:
    identity = {
        "name": "georep",
        "credentials": [{"accessKey": region.access_key, "secretKey": region.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    return _write(spec.root / f"s3-{region.name}" / "s3.json", json.dumps({"identities": [identity]}, indent=2))


def kafka_properties(spec: StackSpec) -> Path:
    broker, controller = spec.ports.kafka, spec.ports.kafka_controller
    lines = [
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{spec.host}:{controller}",
        f"listeners=PLAINTEXT://{spec.host}:{broker},CONTROLLER://{spec.host}:{controller}",
        f"advertised.listeners=PLAINTEXT://{spec.host}:{broker}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={spec.root / 'kafka' / 'data'}",
        "num.partitions=1",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        # One broker, consumers joining one by one: don't wait for stragglers.
        "group.initial.rebalance.delay.ms=0",
        # Expired segments go within a second, not five minutes: a test shortens a topic's retention and waits.
        "log.retention.check.interval.ms=1000",
    ]
    return _write(spec.root / "kafka" / "server.properties", "\n".join(lines) + "\n")


def kafka_log4j(spec: StackSpec) -> Path:
    lines = [
        "status = warn",
        "appender.out.type = Console",
        "appender.out.name = OUT",
        "appender.out.layout.type = PatternLayout",
        "appender.out.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = info",
        "rootLogger.appenderRef.out.ref = OUT",
        "logger.kafka.name = kafka",
        "logger.kafka.level = warn",
        "logger.apache.name = org.apache.kafka",
        "logger.apache.level = warn",
    ]
    return _write(spec.root / "kafka" / "log4j2.properties", "\n".join(lines) + "\n")


def georep_toml(spec: StackSpec) -> Path:
    def q(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    lines = [
        "# Generated by deploy/local/stack.py for the local stack; local development credentials only.",
        'log_level = "info"',
        'log_format = "json"',
        "",
        "[kafka]",
        f"bootstrap_servers = {q(f'{spec.host}:{spec.ports.kafka}')}",
        'security_protocol = "PLAINTEXT"',
        "",
        "[primary]",
        f"url = {q(spec.url(spec.ports.primary))}",
        "",
        "[webhook]",
        f"host = {q(spec.host)}",
        f"port = {spec.ports.webhook}",
        f"token = {q(spec.webhook_token)}",
        "",
        "[replicator]",
        f"host = {q(spec.host)}",
        "",
        "[logstore]",
        f"path = {q(str(spec.root / 'logstore' / 'log.sqlite3'))}",
        f"host = {q(spec.host)}",
        f"port = {spec.ports.logstore}",
        f"url = {q(spec.url(spec.ports.logstore))}",
        f"api_token = {q(spec.api_token)}",
    ]
    lines += [
        "",
        "# The replicas themselves are created with `georep replicas create` (the stack does it) and live in Kafka.",
        "[rules]",
        f"primary_region = {q(PRIMARY_REGION)}",
        f"no_cross_border = {json.dumps(list(CLOSED_JURISDICTIONS))}",
        f"not_offered = {json.dumps(list(NOT_OFFERED))}",
        "",
        "[rules.jurisdictions]",
        *(f"{region} = {q(where)}" for region, where in JURISDICTIONS.items()),
    ]
    return _write(spec.root / "georep.toml", "\n".join(lines) + "\n")
