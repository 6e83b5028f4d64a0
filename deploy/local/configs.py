"""Configuration files of the local stack, generated from one StackSpec (registry configs in YAML)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.local.pki import NODE_PRINCIPAL
from deploy.local.ports import Ports
from deploy.registry_config import load_primary_config, registry_config, render
from engine.replicas import ReplicaDefinition
from engine.settings import KafkaSettings
from engine.signing import public_key
from producers.distribution import BLOB_MEDIA_TYPE

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
# The primary ignores blob events (BLOB_MEDIA_TYPE). The registry delivers an endpoint's events one at a time:
# sent, they would be two of every three round trips of a one-layer image, and under load its queue of pushes
# falls behind. (It also makes `ignore.actions` work: distribution 2.8.2 applies it only beside a non-empty
# `mediatypes`.)


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
    #: SCRAM password per Kafka principal: admin, kafka-node, webhook, api, replicator-<region>
    kafka_passwords: dict[str, str]
    #: the replicas' Ed25519 signing key (its 32-byte seed, base64): the API holds it, every process its public half
    signing_key: str
    host: str = "127.0.0.1"
    #: "2" (Debian's distribution 2.8.2) or "3" (distribution v3): every registry of the stack runs this line
    registry_line: str = "2"
    #: Kafka nodes (each a broker and a controller): 1, or 3 for a cluster that survives losing one
    kafka_brokers: int = 1
    #: georep API processes (`georep logstore`): 1, or 2 that share the control plane by electing a leader
    api_processes: int = 1
    #: webhook processes: each is a notification endpoint of the primary, so each gets every event
    webhook_processes: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{self.ports.kafka_node(i)[0]}" for i in range(self.kafka_brokers))

    @property
    def ca_file(self) -> Path:
        return self.root / "pki" / "ca.crt"

    @property
    def replication_factor(self) -> int:
        return min(3, self.kafka_brokers)

    def kafka_client(self, role: str = "admin") -> dict[str, Any]:
        """A principal's Kafka client settings; the admin's are what stack.json's `kafka_client` holds."""
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "username": role,
            "password": self.kafka_passwords[role],
            "ca_file": str(self.ca_file),
        }

    def kafka_admin(self) -> KafkaSettings:
        return KafkaSettings.model_validate(
            {"bootstrap_servers": self.bootstrap, "replication_factor": self.replication_factor, **self.kafka_client()}
        )  # fmt: skip

    def kafka_env(self, role: str) -> dict[str, str]:
        """What a georep process of `role` adds to its environment: its own principal."""
        return {"GEOREP_KAFKA__USERNAME": role, "GEOREP_KAFKA__PASSWORD": self.kafka_passwords[role]}

    @property
    def webhook_url(self) -> str:
        return self.webhook_urls[0]

    @property
    def webhook_urls(self) -> list[str]:
        return [self.url(self.ports.webhook(i)) + "/webhooks/distribution" for i in range(self.webhook_processes)]

    @property
    def harbor_webhook_url(self) -> str:
        return self.url(self.ports.webhook()) + "/webhooks/harbor"


def _write(path: Path, text: str, *, private: bool = False) -> Path:
    """Write `text`; `private` files (they hold credentials) are readable by their owner only, from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        path.touch(mode=0o600)
        path.chmod(0o600)
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
    # One endpoint per webhook process: the registry queues and retries each on its own, so one webhook down
    # delays nothing; the replicators recognise the second copy of each event by its id.
    config["notifications"] = {
        "events": {"includereferences": True},
        "endpoints": [
            {
                "name": "georep" if len(spec.webhook_urls) == 1 else f"georep-{i}",
                "url": url,
                "headers": {"Authorization": [f"Bearer {spec.webhook_token}"]},
                "timeout": "5s",
                "threshold": 3,
                "backoff": "500ms",
                "ignore": {"mediatypes": [BLOB_MEDIA_TYPE], "actions": ["pull"]},
            }
            for i, url in enumerate(spec.webhook_urls)
        ],
    }
    return _write(spec.root / "primary" / "config.yml", render(config))


def replica_request(spec: StackSpec, region: RegionSpec) -> dict[str, Any]:
    """What `georep replicas create` sends for one of the stack's regions; its keys go to a file it references."""
    keys = {"access_key": region.access_key, "secret_key": region.secret_key}
    credentials = _write(spec.root / "credentials" / f"{region.name}.json", json.dumps(keys), private=True)
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
    # The local primary is open (loopback, development): its regions are too, on purpose.
    config = registry_config(replica, listen=listen, primary=primary, anonymous=True)
    return _write(spec.root / f"registry-{replica.region}" / "config.yml", render(config))


def seaweed_identities(spec: StackSpec, region: RegionSpec) -> Path:
    identity = {
        "name": "georep",
        "credentials": [{"accessKey": region.access_key, "secretKey": region.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    identities = json.dumps({"identities": [identity]}, indent=2)
    return _write(spec.root / f"s3-{region.name}" / "s3.json", identities, private=True)


def kafka_properties(spec: StackSpec, index: int) -> Path:
    """Node `index` of the stack's Kafka: broker and controller in one process (KRaft), secured.

    Clients (and the nodes between them) use SASL_SSL with SCRAM-SHA-512; the controller listener is mutual TLS,
    where the nodes' certificate is their principal (SCRAM cannot be used there: the credentials live in the
    metadata a quorum has not elected a leader for yet). Nothing is allowed without an ACL.
    """
    client, controller = spec.ports.kafka_node(index)
    voters = ",".join(f"{i}@{spec.host}:{spec.ports.kafka_node(i)[1]}" for i in range(spec.kafka_brokers))
    rf, isr = spec.replication_factor, 2 if spec.replication_factor >= 3 else 1
    node_password = spec.kafka_passwords[NODE_PRINCIPAL]
    lines = [
        "process.roles=broker,controller",
        f"node.id={index}",
        f"controller.quorum.voters={voters}",
        f"listeners=CLIENT://{spec.host}:{client},CONTROLLER://{spec.host}:{controller}",
        f"advertised.listeners=CLIENT://{spec.host}:{client}",
        "listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:SSL",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=CLIENT",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        "listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule"
        f' required username="{NODE_PRINCIPAL}" password="{node_password}";',
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={spec.root / 'pki' / 'node.pem'}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={spec.ca_file}",
        "listener.name.controller.ssl.client.auth=required",
        "ssl.principal.mapping.rules=RULE:^CN=([^,]+).*$/$1/,DEFAULT",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users=User:admin;User:{NODE_PRINCIPAL}",
        f"log.dirs={spec.root / f'kafka-{index}' / 'data'}",
        "num.partitions=1",
        "auto.create.topics.enable=false",
        f"default.replication.factor={rf}",
        f"min.insync.replicas={isr}",
        f"offsets.topic.replication.factor={rf}",
        "offsets.topic.num.partitions=4",
        f"transaction.state.log.replication.factor={rf}",
        f"transaction.state.log.min.isr={isr}",
        f"share.coordinator.state.topic.replication.factor={rf}",
        # Consumers joining one by one: don't wait for stragglers.
        "group.initial.rebalance.delay.ms=0",
        # Expired segments go within a second, not five minutes: a test shortens a topic's retention and waits.
        "log.retention.check.interval.ms=1000",
        # A dead node is noticed in ~2.5 s, not 9 s (measured on loopback: leadership moves in 2-4 s, 4-6 s when
        # the node was the active controller).
        "broker.heartbeat.interval.ms=500",
        "broker.session.timeout.ms=2500",
        "controller.quorum.fetch.timeout.ms=1000",
        "controller.quorum.election.timeout.ms=500",
        "replica.lag.time.max.ms=5000",
    ]
    return _write(spec.root / f"kafka-{index}" / "server.properties", "\n".join(lines) + "\n")


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
        # Failed authentications are a security signal: the network layer logs them at info.
        "logger.auth.name = org.apache.kafka.common.network.Selector",
        "logger.auth.level = info",
    ]
    return _write(spec.root / "pki" / "log4j2.properties", "\n".join(lines) + "\n")


def georep_toml(spec: StackSpec) -> Path:
    def q(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    lines = [
        "# Generated by deploy/local/stack.py for the local stack; local development credentials only.",
        'log_level = "info"',
        'log_format = "json"',
        "",
        "# The operator's principal (the CLI's); each georep service gets its own from its environment.",
        "[kafka]",
        f"bootstrap_servers = {q(spec.bootstrap)}",
        'security_protocol = "SASL_SSL"',
        'sasl_mechanism = "SCRAM-SHA-512"',
        'username = "admin"',
        f"password = {q(spec.kafka_passwords['admin'])}",
        f"ca_file = {q(str(spec.ca_file))}",
        f"replication_factor = {spec.replication_factor}",
        "# The stack's administrator creates the topics; georep's own principals may not.",
        "create_topics = false",
        "",
        "[replicas]",
        f"verify_key = {q(public_key(spec.signing_key))}",
        "",
        "[primary]",
        f"url = {q(spec.url(spec.ports.primary))}",
        "",
        "[webhook]",
        f"host = {q(spec.host)}",
        f"port = {spec.ports.webhook()}",
        f"token = {q(spec.webhook_token)}",
        "",
        "[replicator]",
        f"host = {q(spec.host)}",
        "# Replica definitions may reference key files here only (the stack writes them).",
        f"credentials_dir = {q(str(spec.root / 'credentials'))}",
        "",
        "[logstore]",
        f"path = {q(str(spec.root / 'logstore' / 'log.sqlite3'))}",
        f"host = {q(spec.host)}",
        f"port = {spec.ports.logstore()}",
        f"url = {q(spec.url(spec.ports.logstore()))}",
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
    return _write(spec.root / "georep.toml", "\n".join(lines) + "\n", private=True)
