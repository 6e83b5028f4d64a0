"""Settings: one model per part, composed into `Settings` by the entry point.

Sources, strongest first: environment variables `GEOREP_<PART>__<NAME>`
(e.g. `GEOREP_KAFKA__BOOTSTRAP_SERVERS`), then the TOML file named by
`GEOREP_CONFIG` (regions usually live there), then the defaults below.
`deploy/georep.example.toml` documents every setting. Secrets are `SecretStr`:
they print as `**********` and never reach a log line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from engine import topics
from engine.errors import InvalidInput
from engine.layout import Layout
from engine.names import parse_region
from engine.replicas import Rules

KiB = 1024
MiB = 1024 * KiB
CONFIG_ENV = "GEOREP_CONFIG"


class ConfigError(InvalidInput):
    reason = "invalid-config"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class KafkaSettings(_Part):
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "georep"
    #: how clients reach the brokers. SASL_SSL (SCRAM over TLS) unless plaintext is chosen on purpose.
    security_protocol: Literal["SASL_SSL", "SSL", "SASL_PLAINTEXT", "PLAINTEXT"] = "SASL_SSL"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    #: this process's principal; each georep role has its own (webhook, api, replicator-<region>)
    username: str | None = None
    password: SecretStr | None = None
    #: the CA that signed the brokers' certificates (PEM); unset: the system's trusted CAs
    ca_file: Path | None = None
    #: create missing topics at start; off where processes hold no CREATE right (topics made by an admin)
    create_topics: bool = True
    events_topic: str = topics.EVENTS
    log_topic: str = topics.REPLICATION_LOG
    dead_letter_topic: str = topics.DEAD_LETTER
    #: compacted: one signed replica definition per region
    replicas_topic: str = topics.REPLICAS
    #: compacted: each region's backfill checkpoint
    backfill_topic: str = topics.BACKFILL
    #: compacted: each region's last reconciliation pass, per partition
    reconcile_topic: str = topics.RECONCILE
    #: compacted, one partition: the API processes' group holds it to elect a leader, who writes its URL there
    leader_topic: str = topics.LEADER
    #: partitions bound how many repositories one region replicates at once
    events_partitions: int = Field(8, ge=1)
    log_partitions: int = Field(4, ge=1)
    #: copies of every partition; min.insync.replicas is 2 once there are 3 (acks=all then survives one broker)
    replication_factor: int = Field(1, ge=1)
    #: how long georep.events keeps events (-1: forever). Regions reconcile, so an event older than this
    #: is not lost to a region that was down longer: the reconciliation loop repairs it.
    events_retention_ms: int = Field(7 * 24 * 3600 * 1000, ge=-1)
    request_timeout_ms: int = Field(15_000, ge=1000)
    #: how long a producer waits to gather messages into one request (each request costs the brokers TLS
    #: and bookkeeping; under load a few ms of waiting fills requests)
    linger_ms: int = Field(5, ge=0)

    @property
    def min_insync_replicas(self) -> int:
        return 2 if self.replication_factor >= 3 else 1

    @property
    def secured(self) -> bool:
        return self.security_protocol != "PLAINTEXT"


class PrimarySettings(_Part):
    """The registry images are pushed to; replicators pull from it."""

    url: str = "http://127.0.0.1:5000"
    username: str | None = None
    password: SecretStr | None = None
    tls_verify: bool = True
    timeout_s: float = Field(60.0, gt=0)

    _check_url = field_validator("url")(_http_url)


class RegionSettings(_Part):
    """One replica region: its S3-compatible bucket, and where its read-only registry answers."""

    endpoint: str
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = ""
    # Optional here so that processes which never touch a bucket (the webhook, the log store)
    # need not hold every region's keys; `Settings.region()` insists on them.
    access_key: str | None = Field(None, min_length=1)
    secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    #: no keys here: the AWS SDK's default chain finds them (IRSA / web identity, instance profile, ...)
    default_chain: bool = False
    #: the region's read-only registry (`host:port`), for people and checks; georep never writes to it
    registry: str | None = None

    _check_endpoint = field_validator("endpoint")(_http_url)

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return Layout(value).prefix

    @property
    def layout(self) -> Layout:
        return Layout(self.prefix)

    def credentials(self) -> tuple[str, str]:
        if self.access_key is None or self.secret_key is None:
            raise ConfigError("region credentials are missing: access_key and secret_key")
        return self.access_key, self.secret_key.get_secret_value()


class WebhookSettings(_Part):
    host: str = "127.0.0.1"
    port: int = Field(8600, ge=0, le=65535)
    #: the bearer token the registry (or Harbor) must send; required to start the webhook
    token: SecretStr | None = None
    max_body_bytes: int = Field(1 * MiB, ge=1024)
    #: how long one request may wait for Kafka before answering 503
    publish_timeout_s: float = Field(10.0, gt=0)
    #: event ids remembered after Kafka took them, so that a redelivery is not published twice
    dedupe_window: int = Field(100_000, ge=0)
    #: a connection that has not sent a whole request by then, or sits idle that long, is closed
    header_timeout_s: float = Field(10.0, gt=0)
    #: connections one webhook process keeps open at once; more are closed at once
    max_connections: int = Field(256, ge=1)
    #: the webhook's own `kafka.linger_ms`. A registry sends an endpoint's events one at a time, each only
    #: once the last was answered, so a wait here is a wait for every push behind it; under concurrent
    #: senders the producer still gathers what arrives while a request is in flight (measured: the same
    #: events/s as 5 ms; one registry's queue drains 46% faster)
    linger_ms: int = Field(0, ge=0)


class ReplicatorSettings(_Part):
    #: blobs copied at once by one process (across all its partitions). Each open copy costs about
    #: 9 MB beyond its buffers (connections, socket buffers); 4 already keeps a region's S3 busy.
    blob_concurrency: int = Field(4, ge=1)
    #: blobs up to this size go in one PUT; larger ones stream as multipart
    multipart_threshold: int = Field(8 * MiB, ge=5 * MiB)
    part_size: int = Field(8 * MiB, ge=5 * MiB, le=512 * MiB)
    #: blobs at least this large are looked for in the region (a HEAD) before they are fetched from the
    #: primary; smaller ones go straight to a conditional PUT, which answers "already there" itself
    probe_blobs_from: int = Field(64 * KiB, ge=0)
    #: bytes one process may hold in copy buffers at once (small blobs, multipart parts): bounds its memory.
    #: Measured (make bench): 32 MiB in 8 MiB parts copies as fast as 96 MiB did, peak RSS under 200 MB.
    buffer_bytes: int = Field(32 * MiB, ge=5 * MiB)
    #: records buffered per partition before the partition is paused
    partition_buffer: int = Field(200, ge=1)
    #: events of one partition replicated at once (of different repositories: one repository's events
    #: always run one after another, in order)
    lane_concurrency: int = Field(8, ge=1)
    retry_initial_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)
    #: on rebalance or SIGTERM, how long in-flight events may run before they are abandoned
    drain_grace_s: float = Field(30.0, ge=0)
    #: multipart uploads older than this are abandoned (their copier died) and get aborted
    stale_upload_s: float = Field(3600.0, gt=0)
    #: an index may have at most this many manifests under it (at any depth); one with more is dead-lettered
    max_index_children: int = Field(256, ge=1)
    #: the manifests one event needs (the pushed one and all under it) may total at most this many bytes
    max_manifest_bytes: int = Field(16 * MiB, ge=MiB)
    #: manifest bytes one process holds at once across its events (bounds memory whatever pushers do)
    manifest_buffer_bytes: int = Field(32 * MiB, ge=MiB)
    #: manifests one process fetches from the primary at once
    manifest_fetches: int = Field(8, ge=1)
    #: copies waiting for buffer room while none has been given back for this long is a health problem
    #: (a leak, or a copy hung for good): /healthz answers 503 and names the held bytes
    budget_stall_s: float = Field(300.0, gt=0)
    #: threads that carry the region's small-object requests (obstore's Rust runtime; its default is one per
    #: core). Each request costs its thread about 0.4 ms, so one keeps up with what a region takes; more only
    #: add wake-ups between threads (measured on 2 cores: CPU per new image 0.43 of the S3 server's with
    #: one, 0.45 with two, medians of 6 runs).
    io_threads: int = Field(1, ge=1)
    #: how often finished events' offsets are committed (each commit is a Kafka request; a crash replays
    #: what was finished since the last one, which is harmless)
    commit_interval_s: float = Field(1.0, ge=0)
    #: ids of events replicated lately that a second delivery is recognised by (two webhooks publish each
    #: event twice); a duplicate older than this is replicated again, which is harmless
    dedupe_window: int = Field(10000, ge=0)
    #: revision links a process remembers finding in its region (0: none), and for how long: a tag-only event
    #: (a retag, a replay) of a manifest found lately costs no HEAD. A link removed behind georep's back is
    #: put back by reconciliation; until then, or this long, tags may be written to it.
    whole_manifests: int = Field(20000, ge=0)
    whole_manifests_ttl_s: float = Field(600.0, gt=0)
    #: where `file:` credential references may point (a mounted Secret); none set means file: is refused
    credentials_dir: Path | None = None
    host: str = "127.0.0.1"
    #: health and metrics port (0: pick a free one)
    port: int = Field(8610, ge=0, le=65535)

    @model_validator(mode="after")
    def _buffers_fit(self) -> ReplicatorSettings:
        largest = max(self.part_size, self.multipart_threshold)
        if self.buffer_bytes < largest:
            raise ValueError(
                f"buffer_bytes ({self.buffer_bytes}) must hold the largest buffer a copy needs: "
                f"max(part_size, multipart_threshold) = {largest}"
            )
        if self.manifest_buffer_bytes < self.max_manifest_bytes:
            raise ValueError(
                f"manifest_buffer_bytes ({self.manifest_buffer_bytes}) must hold the manifests of one event: "
                f"max_manifest_bytes = {self.max_manifest_bytes}"
            )
        return self


class ReplicasSettings(_Part):
    """Replica definitions are signed by the georep API (Ed25519); every process verifies before it follows one."""

    #: the public key (base64 of 32 bytes): every process that follows georep.replicas needs it, and ignores
    #: any definition it does not verify, even one a Kafka superuser wrote
    verify_key: str | None = None
    #: the private key (base64 of its 32-byte seed): the georep API only, which writes the definitions
    signing_key: SecretStr | None = None

    def verifier(self) -> str:
        if not self.verify_key:
            raise ConfigError(
                "replicas.verify_key is required to follow replica definitions (they are signed by the georep API): "
                "set it to the API's public key (GEOREP_REPLICAS__VERIFY_KEY)"
            )
        return self.verify_key


class ReconcileSettings(_Part):
    """The loop behind the events: each replicator compares the repositories of its partitions with the primary
    and publishes repair events for what differs, so a region converges even when an event was lost."""

    enabled: bool = True
    #: seconds from the start of one pass to the start of the next (a slower pass is followed at once)
    interval_s: float = Field(300.0, gt=0)
    #: every repository's keys are checked in full (blobs' sizes, every link and manifest) at least this often;
    #: in between, a repository whose tags did not move on the primary costs one read of the region
    full_every_s: float = Field(6 * 3600.0, gt=0)
    #: blobs are read back and hashed at least this often (None: never; `georep verify --rehash` does it by hand)
    rehash_every_s: float | None = Field(None, gt=0)
    #: requests per second a pass may make to the primary, and to the region's object store
    primary_rps: float = Field(20.0, gt=0)
    region_rps: float = Field(50.0, gt=0)
    #: repositories a pass compares at once (within those budgets)
    concurrency: int = Field(8, ge=1, le=256)
    #: where the list of repositories comes from: the registry's `/v2/_catalog`, Harbor's API (projects, then
    #: repositories: for a Harbor whose catalog is for administrators only), or `repository_list`
    repositories: Literal["catalog", "harbor", "list"] = "catalog"
    repository_list: tuple[str, ...] = ()
    #: how long a repository waits for live events already on its partition before it is compared anyway
    settle_timeout_s: float = Field(30.0, gt=0)


class LogStoreSettings(_Part):
    path: Path = Path("georep-log.sqlite3")
    host: str = "127.0.0.1"
    port: int = Field(8620, ge=0, le=65535)
    #: where `georep logs`, `georep replicas` and `georep status` find the georep API
    url: str = "http://127.0.0.1:8620"
    #: the bearer token replica changes (POST, DELETE) need; unset, the API refuses them
    api_token: SecretStr | None = None
    #: where the other API processes reach this one (`http://host:port`), when several run: a change sent
    #: to one that does not lead is forwarded to the leader's. Unset: this process's own `url`.
    advertise_url: str | None = None
    #: how long a change sent to a process that does not lead waits for a leader to take it (an election
    #: after a leader died takes Kafka's session timeout, 6 s, plus a rebalance)
    forward_wait_s: float = Field(30.0, gt=0)

    _check_url = field_validator("url")(_http_url)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GEOREP_", env_nested_delimiter="__", extra="forbid", frozen=True)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: how far ahead of this process's clock an event's time may be: a later one is taken as that far ahead,
    #: and a tag note dated later than that is not trusted (a poisoned clock must not freeze a tag for good)
    max_clock_skew_s: float = Field(5.0, ge=0)
    log_format: Literal["json", "console"] = "json"
    kafka: KafkaSettings = KafkaSettings()
    primary: PrimarySettings = PrimarySettings()
    webhook: WebhookSettings = WebhookSettings()
    replicator: ReplicatorSettings = ReplicatorSettings()
    logstore: LogStoreSettings = LogStoreSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    replicas: ReplicasSettings = ReplicasSettings()
    #: what a new replica must satisfy (primary region, jurisdictions, regions not offered)
    rules: Rules = Rules()
    #: regions pinned in the config file; others are defined in the replicas topic (`georep replicas create`)
    regions: dict[str, RegionSettings] = {}

    @field_validator("regions")
    @classmethod
    def _check_region_names(cls, value: dict[str, RegionSettings]) -> dict[str, RegionSettings]:
        for name in value:
            parse_region(name)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get(CONFIG_ENV)
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)

    def region(self, name: str) -> RegionSettings:
        """A region's settings, complete with the credentials a process that writes to it needs."""
        try:
            region = self.regions[name]
        except KeyError:
            known = ", ".join(sorted(self.regions)) or "none"
            raise ConfigError(f"region {name!r} is not configured (configured: {known})") from None
        for field in ("access_key", "secret_key"):
            if getattr(region, field) is None and not region.default_chain:
                env = f"GEOREP_REGIONS__{name}__{field.upper()}"
                raise ConfigError(f"regions.{name}.{field} is required (set it in the config file or as {env})")
        return region


def load_settings() -> Settings:
    """Settings from the environment and `$GEOREP_CONFIG`, or a ConfigError naming what is wrong."""
    config = os.environ.get(CONFIG_ENV)
    if config and not Path(config).is_file():
        raise ConfigError(f"{CONFIG_ENV}={config}: no such file")
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            setting = ".".join(str(p) for p in err["loc"])
            env = "GEOREP_" + "__".join(str(p).upper() for p in err["loc"])
            problems.append(f"{setting}: {err['msg']} (set it in the config file or as {env})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read configuration {config}: {exc}") from None
