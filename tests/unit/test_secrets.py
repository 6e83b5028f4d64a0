"""Credentials never reach a log line or an error message.

Logging is configured in a child process exactly as `georep` configures it (secrets registered from the
settings, then `configure_logging`), failures that naturally carry a secret are provoked there, and this
test reads what the process wrote to stdout and stderr. (structlog's configuration is process-wide and
caches loggers, so it is not configured inside the test runner.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from botocore.exceptions import ClientError

from adapters.kafka import Publisher
from engine.errors import StorageUnavailable, UpstreamUnavailable
from engine.logconfig import REDACTED, configure_logging, register_secrets, settings_secrets
from engine.settings import CONFIG_ENV, ConfigError, Settings, load_settings
from producers.webhook import WebhookApp

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "S3cr3t/Key+For+Tests/9f8e7d6c5b4a"
PASSWORD = "Registry-Passw0rd-7c4d1e"
TOKEN = "Webhook-Token-5b2a9c71e0"
KAFKA_PASSWORD = "Kafka-Scram-Passw0rd-31d9"
SECRETS = (SECRET_KEY, PASSWORD, TOKEN, KAFKA_PASSWORD)

GOOD = f"""
[kafka]
bootstrap_servers = "127.0.0.1:1"
security_protocol = "SASL_PLAINTEXT"
username = "webhook"
password = "{KAFKA_PASSWORD}"

[primary]
url = "http://127.0.0.1:5000"
username = "georep"
password = "{PASSWORD}"

[webhook]
token = "{TOKEN}"

[regions.ap-singapore]
endpoint = "http://127.0.0.1:9000"
bucket = "georep-sg"
access_key = "AKIAEXAMPLE"
secret_key = "{SECRET_KEY}"
"""

# Each bad configuration still holds every secret, next to (or inside) the mistake.
BAD_CONFIGS = {
    "bucket too short": GOOD.replace('bucket = "georep-sg"', 'bucket = "x"'),
    "endpoint not a URL": GOOD.replace('"http://127.0.0.1:9000"', '"127.0.0.1:9000"'),
    "region name": GOOD.replace("[regions.ap-singapore]", "[regions.AP_Singapore]"),
    "region missing its endpoint": GOOD.replace('endpoint = "http://127.0.0.1:9000"', ""),
    "misspelt secret field": GOOD.replace("secret_key =", "secret_kye ="),
    "misspelt token field": GOOD.replace("token =", "tokne ="),
    "secret key in a list": GOOD.replace(f'"{SECRET_KEY}"', f'["{SECRET_KEY}"]'),
    "token in a table": GOOD.replace(f'token = "{TOKEN}"', f'token = {{ value = "{TOKEN}" }}'),
    "password and a bad primary URL": GOOD.replace('url = "http://127.0.0.1:5000"', 'url = "ftp://host"'),
    "TOML syntax error on the secret's line": GOOD.replace(
        f'secret_key = "{SECRET_KEY}"', f'secret_key = "{SECRET_KEY}'
    ),
    "TOML syntax error after the token": GOOD.replace(f'token = "{TOKEN}"', f'token = "{TOKEN}" "{TOKEN}"'),
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [n for n in os.environ if n.startswith("GEOREP_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize("mistake", list(BAD_CONFIGS))
def test_config_errors_name_the_setting_but_never_echo_a_secret(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, mistake: str
) -> None:
    config = tmp_path / "georep.toml"
    config.write_text(BAD_CONFIGS[mistake])
    clean_env.setenv(CONFIG_ENV, str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    _assert_no_secret(str(caught.value))
    _assert_no_secret(repr(caught.value))
    # What a crash report or `log.exception` would print, chained pydantic errors included.
    _assert_no_secret("".join(traceback.format_exception(caught.value)))


@pytest.mark.parametrize(
    "environment",
    [
        {"GEOREP_REGIONS": json.dumps({"sg": {"secret_key": SECRET_KEY, "bucket": "x"}})},
        {"GEOREP_REGIONS": '{"sg": {"secret_key": "' + SECRET_KEY + '", '},  # broken JSON
        {"GEOREP_REGIONS__SG__SECRET_KEY": SECRET_KEY},  # a region with nothing else
        {"GEOREP_WEBHOOK": json.dumps({"token": TOKEN, "port": "eighty"})},
        {"GEOREP_WEBHOOK__TOKEN": TOKEN, "GEOREP_WEBHOOK__PORT": "-1"},
        {"GEOREP_PRIMARY__PASSWORD": PASSWORD, "GEOREP_PRIMARY__URL": "127.0.0.1:5000"},
        {"GEOREP_PRIMARY": json.dumps({"password": [PASSWORD]})},
    ],
)
def test_config_errors_from_the_environment_never_echo_a_secret(
    clean_env: pytest.MonkeyPatch, environment: dict[str, str]
) -> None:
    for name, value in environment.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    _assert_no_secret(str(caught.value))
    _assert_no_secret("".join(traceback.format_exception(caught.value)))


def test_region_lookups_and_credentials_errors_never_echo_a_secret(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "georep.toml"
    config.write_text(GOOD.replace('access_key = "AKIAEXAMPLE"', ""))
    clean_env.setenv(CONFIG_ENV, str(config))
    settings = load_settings()
    for region in ("mars", "ap-singapore"):  # not configured; configured without its access key
        with pytest.raises(ConfigError) as caught:
            settings.region(region)
        _assert_no_secret(str(caught.value))
    with pytest.raises(ConfigError) as caught:
        settings.regions["ap-singapore"].credentials()
    _assert_no_secret(str(caught.value))
    _assert_no_secret(repr(settings) + str(settings.model_dump()) + settings.model_dump_json())


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_failures_carrying_secrets_leave_none_in_the_process_output(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, fmt: str
) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(GOOD)
    bad.write_text(BAD_CONFIGS["bucket too short"])
    result = subprocess.run(
        [sys.executable, "-m", "tests.unit.test_secrets", fmt, str(good), str(bad)],
        cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "error"}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "child: done" in result.stdout
    # Every provocation happened and was logged ...
    for seen in [
        "regions.ap-singapore.bucket",  # the CLI's report of the bad config
        "config.invalid",
        "webhook.refused",
        "status=401" if fmt == "console" else '"status":401',
        "invalid repository name",
        "replicate.attempt_failed",
        "SignatureDoesNotMatch",  # the chained botocore error in the traceback
        "registry.fetch_failed",
        "Error handling request",  # aiohttp's own logger, through the standard library
        "botocore.endpoint",
    ]:
        assert seen in output, seen
    # ... and every secret that reached a log line was redacted there.
    _assert_no_secret(output)
    assert output.count(REDACTED) >= 8, output


# --- the child process ---------------------------------------------------------------------------------


def _child(fmt: str, good: str, bad: str) -> None:
    os.environ[CONFIG_ENV] = good
    settings = load_settings()
    # What georep.cli.main does before anything else runs.
    register_secrets(settings_secrets(settings))
    configure_logging("info", fmt)
    log = structlog.get_logger("georep.test")

    # 1. A settings validation error for a bad region config, reported as the CLI reports it, and logged.
    os.environ[CONFIG_ENV] = bad
    try:
        load_settings()
    except ConfigError as exc:
        print(f"georep: {exc}", file=sys.stderr)
        log.error("config.invalid", error=str(exc))
    os.environ[CONFIG_ENV] = good

    # 2. Refused webhook requests carrying the token where it does not belong.
    asyncio.run(_refused_requests(settings))

    # 3. Object store and registry errors whose messages carry credentials.
    s3_error = ClientError(
        {
            "Error": {
                "Code": "SignatureDoesNotMatch",
                "Message": f"The request signature we calculated does not match the signature of {SECRET_KEY}",
            },
            "ResponseMetadata": {"HTTPStatusCode": 403},
        },
        "PutObject",
    )
    try:
        try:
            raise s3_error
        except ClientError as exc:
            raise StorageUnavailable(f"object store failed on some/key: {exc}", key="some/key") from exc
    except StorageUnavailable as exc:
        log.warning("replicate.attempt_failed", attempt=1, reason=exc.reason, error=str(exc))
        log.error("replicate.dead_lettered", reason=exc.reason, error=repr(exc), context={"secret": SECRET_KEY})
        log.exception("lane.stalled", partition=0, offset=7)
        logging.getLogger("botocore.endpoint").warning("request failed: %s", exc)
        logging.getLogger("aiohttp.server").error("Error handling request from %s", "127.0.0.1", exc_info=exc)
    upstream = UpstreamUnavailable(
        f"primary registry unreachable: ClientResponseError: 401, url='http://georep:{PASSWORD}@127.0.0.1:5000/v2/'"
    )
    log.warning("registry.fetch_failed", error=str(upstream), tried=[f"georep:{PASSWORD}", TOKEN])
    print("child: done")


async def _refused_requests(settings: Settings) -> None:
    app = WebhookApp(settings.webhook, settings.kafka, Publisher(settings.kafka, "test")).app()
    good_auth = {"Authorization": f"Bearer {TOKEN}"}
    json_type = {"Content-Type": "application/json"}
    async with TestClient(TestServer(app)) as client:
        for headers in [
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Token {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}-expired"},
            {"X-Registry-Token": TOKEN},
        ]:
            response = await client.post("/webhooks/distribution", data=b"{}", headers={**headers, **json_type})
            assert response.status == 401
            print("401 answer:", await response.text())
        # Refusals whose reasons quote the caller's input: a secret pasted into the wrong place.
        for name in (TOKEN, SECRET_KEY, PASSWORD):
            body = {"type": "PUSH_ARTIFACT", "occur_at": 1795824000, "event_data": {}}
            body["event_data"] = {
                "resources": [{"digest": "sha256:" + "1" * 64}],
                "repository": {"repo_full_name": name},
            }
            response = await client.post("/webhooks/harbor", data=json.dumps(body), headers={**good_auth, **json_type})
            assert response.status == 400


if __name__ == "__main__":
    _child(*sys.argv[1:])
