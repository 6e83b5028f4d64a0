"""Settings: environment over file over defaults; bad settings stop the process naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from adapters.objects import use_io_threads
from engine.logconfig import REDACTED, register_secrets, scrub, settings_secrets
from engine.settings import CONFIG_ENV, ConfigError, load_settings

GOOD = """
[kafka]
bootstrap_servers = "127.0.0.1:9999"

[webhook]
token = "file-token-123456"

[regions.ap-singapore]
endpoint = "http://127.0.0.1:9000"
bucket = "georep-sg"
prefix = "/mirror/"
access_key = "AKIAEXAMPLE"
secret_key = "very-secret-key-123"
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in __import__("os").environ if n.startswith("GEOREP_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "georep.toml"
    path.write_text(GOOD)
    monkeypatch.setenv(CONFIG_ENV, str(path))
    return path


def test_file_values_load_and_prefixes_are_normalised(config: Path) -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9999"
    region = settings.region("ap-singapore")
    assert (region.bucket, region.prefix, region.layout.prefix) == ("georep-sg", "mirror", "mirror")
    assert region.credentials() == ("AKIAEXAMPLE", "very-secret-key-123")


def test_environment_overrides_the_file(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOREP_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:7777")
    monkeypatch.setenv("GEOREP_REPLICATOR__BLOB_CONCURRENCY", "3")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:7777"
    assert settings.replicator.blob_concurrency == 3


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (GOOD.replace('bucket = "georep-sg"', 'bucket = "x"'), "regions.ap-singapore.bucket"),
        (GOOD.replace("http://127.0.0.1:9000", "127.0.0.1:9000"), "regions.ap-singapore.endpoint"),
        (GOOD.replace('prefix = "/mirror/"', 'prefix = "../up"'), "regions.ap-singapore.prefix"),
        (GOOD.replace("[regions.ap-singapore]", "[regions.AP_Singapore]"), "regions"),
        (GOOD + "\n[kafka_typo]\nx = 1\n", "kafka_typo"),
        (GOOD.replace('bootstrap_servers = "127.0.0.1:9999"', "events_partitions = 0"), "kafka.events_partitions"),
    ],
)
def test_invalid_configuration_names_the_setting(config: Path, text: str, named: str) -> None:
    config.write_text(text)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings()


def test_missing_config_file_and_missing_region_credentials(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config.write_text(GOOD.replace('secret_key = "very-secret-key-123"', ""))
    settings = load_settings()  # a process that never writes to the region does not need its keys
    with pytest.raises(ConfigError, match=r"regions\.ap-singapore\.secret_key is required"):
        settings.region("ap-singapore")
    with pytest.raises(ConfigError, match="not configured"):
        settings.region("mars")
    monkeypatch.setenv(CONFIG_ENV, str(config.parent / "absent.toml"))
    with pytest.raises(ConfigError, match="no such file"):
        load_settings()


def test_secrets_never_print_and_are_scrubbed_from_logs(config: Path) -> None:
    settings = load_settings()
    assert "very-secret-key-123" not in repr(settings)
    assert "file-token-123456" not in str(settings.model_dump())
    register_secrets(settings_secrets(settings))
    assert scrub("boto said: key very-secret-key-123 refused") == f"boto said: key {REDACTED} refused"
    with capture_logs() as logs:
        import structlog

        structlog.get_logger().info("x", settings=repr(settings))
    assert "very-secret-key-123" not in repr(logs)


def test_the_cli_refuses_to_start_on_bad_configuration(config: Path) -> None:
    config.write_text(GOOD.replace('bucket = "georep-sg"', ""))
    result = subprocess.run(
        [sys.executable, "-m", "georep", "--config", str(config), "replicate", "--region", "ap-singapore"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "regions.ap-singapore.bucket: Field required" in result.stderr
    assert "GEOREP_REGIONS__AP-SINGAPORE__BUCKET" in result.stderr
    assert "very-secret-key-123" not in result.stderr + result.stdout


def test_topics_get_their_configs_and_min_insync_replicas_with_three_copies() -> None:
    from adapters.kafka import topic_specs
    from engine.settings import KafkaSettings

    one = {t.name: t for t in topic_specs(KafkaSettings())}
    three = {t.name: t for t in topic_specs(KafkaSettings(replication_factor=3, events_retention_ms=1000))}
    assert one[KafkaSettings().events_topic].topic_configs["min.insync.replicas"] == "1"
    for name, topic in three.items():
        assert (topic.replication_factor, topic.topic_configs["min.insync.replicas"]) == (3, "2"), name
        assert topic.replica_assignments is None or topic.replica_assignments == {}, name
    events = three[KafkaSettings().events_topic]
    assert (events.num_partitions, events.topic_configs["retention.ms"]) == (8, "1000")
    assert three[KafkaSettings().replicas_topic].topic_configs["cleanup.policy"] == "compact"


def test_a_replicator_runs_its_region_requests_on_one_io_thread_unless_told_otherwise(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """obstore's runtime reads its size from TOKIO_WORKER_THREADS when it is built; the replicator sets it from
    `replicator.io_threads` before its first request."""
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.delenv("TOKIO_WORKER_THREADS", raising=False)
    use_io_threads(load_settings().replicator.io_threads)
    assert os.environ["TOKIO_WORKER_THREADS"] == "1"
    monkeypatch.setenv("GEOREP_REPLICATOR__IO_THREADS", "3")
    use_io_threads(load_settings().replicator.io_threads)
    assert os.environ["TOKIO_WORKER_THREADS"] == "3"
