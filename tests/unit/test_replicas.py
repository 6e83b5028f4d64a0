"""Replica definitions, their filters, the rules a new replica must pass, and where its keys come from."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploy.registry_config import registry_config
from engine.credentials import MAX_FILE_BYTES, resolve_credentials
from engine.errors import InvalidEvent, InvalidInput
from engine.names import Repository, Tag
from engine.replicas import ReplicaDefinition, ReplicaRefused, Rules, is_referrer_tag
from engine.settings import ConfigError

HEX = "ab" * 32

RULES = Rules(
    primary_region="us-virginia",
    jurisdictions={"us-virginia": "US", "us-oregon": "US", "eu-frankfurt": "EU", "cn-shanghai": "CN"},
    no_cross_border=("CN",),
    not_offered=("us-gov-east",),
)


BASE: dict[str, object] = {
    "region": "eu-frankfurt",
    "endpoint": "http://127.0.0.1:9000",
    "bucket": "georep-eu",
    "credentials_ref": "env:GEOREP_S3_EU",
}


def replica(region: str = "eu-frankfurt", **fields: object) -> ReplicaDefinition:
    return ReplicaDefinition.parse(BASE | {"region": region} | fields)


# -- rules ---------------------------------------------------------------------------------------


def test_a_replica_in_another_region_and_open_jurisdiction_is_allowed() -> None:
    RULES.check_create(replica("eu-frankfurt"), {})
    RULES.check_create(replica("us-oregon"), {})
    RULES.check_create(replica("ap-unlisted"), {})  # no jurisdiction, and neither side is closed


@pytest.mark.parametrize(
    ("region", "rule", "words"),
    [
        ("us-virginia", "primary-region", "is the primary's region"),
        ("us-gov-east", "not-offered", "not offered in us-gov-east"),
        ("cn-shanghai", "cross-border", "across the border of CN is forbidden"),
    ],
)
def test_each_rule_refuses_with_its_reason(region: str, rule: str, words: str) -> None:
    with pytest.raises(ReplicaRefused) as refused:
        RULES.check_create(replica(region), {})
    assert refused.value.rule == rule
    assert words in str(refused.value)
    assert refused.value.status == 422


def test_a_closed_primary_cannot_replicate_out_of_its_jurisdiction() -> None:
    rules = RULES.model_copy(update={"primary_region": "cn-shanghai"})
    with pytest.raises(ReplicaRefused, match="border of CN is forbidden"):
        rules.check_create(replica("eu-frankfurt"), {})
    same = rules.model_copy(update={"jurisdictions": {**rules.jurisdictions, "cn-beijing": "CN"}})
    same.check_create(replica("cn-beijing"), {})


def test_creating_a_region_twice_is_refused_with_409() -> None:
    existing = {"eu-frankfurt": replica("eu-frankfurt")}
    with pytest.raises(ReplicaRefused) as refused:
        RULES.check_create(replica("eu-frankfurt", bucket="other-bucket"), existing)
    assert (refused.value.rule, refused.value.status) == ("exists", 409)
    assert "exists already" in str(refused.value)


def test_the_primary_cannot_be_removed_while_replicas_exist() -> None:
    existing = {"eu-frankfurt": replica("eu-frankfurt"), "us-oregon": replica("us-oregon")}
    with pytest.raises(ReplicaRefused) as refused:
        RULES.check_delete("us-virginia", existing)
    assert (refused.value.rule, refused.value.status) == ("primary-in-use", 409)
    assert "2 replica(s) exist (eu-frankfurt, us-oregon)" in str(refused.value)
    with pytest.raises(ReplicaRefused, match="not a replica"):
        RULES.check_delete("us-virginia", {})


def test_deleting_an_unknown_replica_is_404_and_names_the_known_ones() -> None:
    with pytest.raises(ReplicaRefused) as refused:
        RULES.check_delete("ap-tokyo", {"eu-frankfurt": replica()})
    assert refused.value.status == 404
    assert "replicas: eu-frankfurt" in str(refused.value)
    assert RULES.check_delete("eu-frankfurt", {"eu-frankfurt": replica()}).region == "eu-frankfurt"


# -- the definition ------------------------------------------------------------------------------


def test_a_definition_survives_the_topic_and_ignores_unknown_fields() -> None:
    original = replica(include=["team-a/*"], exclude=["*:*-debug"], deletes=False, prefix="registry")
    raw = json.loads(original.to_json())
    assert raw["schema"] == 1
    assert ReplicaDefinition.from_json(json.dumps(raw | {"future": 1})) == original


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"credentials_ref": "AKIA-secret-inline"}, "must reference the keys"),
        ({"credentials_ref": "file:relative/path"}, "must reference the keys"),
        ({"endpoint": "s3.example.com"}, "http:// or https://"),
        ({"region": "EU_Frankfurt"}, "invalid region name"),
        ({"include": ["a:b:c"]}, "repository-glob[:tag-glob]"),
        ({"exclude": ["team a/*"]}, "whitespace"),
        ({"prefix": "../escape"}, "prefix"),
        ({"bucket": "ab"}, "bucket"),
    ],
)
def test_bad_definitions_are_refused_naming_the_field(fields: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        ReplicaDefinition.parse(BASE | fields)
    assert words in str(refused.value)


def test_an_unreadable_topic_value_is_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent):
        ReplicaDefinition.from_json(b"{not json")
    with pytest.raises(InvalidEvent, match="bucket"):
        ReplicaDefinition.from_json(b'{"region": "eu-frankfurt", "endpoint": "http://x", "credentials_ref": "env:A"}')


# -- filters -------------------------------------------------------------------------------------


def test_filters_include_exclude_by_repository_and_tag() -> None:
    r = replica(include=["team-a/*", "base/*:v*"], exclude=["team-a/secret*", "*:*-debug"])
    repo, tag = Repository.parse, Tag.parse
    assert r.excluded(repo("team-a/api"), tag("latest")) is None
    assert r.excluded(repo("base/alpine"), tag("v3.20")) is None
    assert "no include filter" in (r.excluded(repo("base/alpine"), tag("latest")) or "")
    assert "no include filter" in (r.excluded(repo("team-b/api"), tag("v1")) or "")
    assert r.excluded(repo("team-a/secret-store"), tag("v1")) == "excluded by filter team-a/secret*"
    assert r.excluded(repo("team-a/api"), tag("v1-debug")) == "excluded by filter *:*-debug"


def test_signature_and_referrer_tags_follow_their_repository_not_the_tag_patterns() -> None:
    r = replica(include=["base/*:v*"])
    for tag in (f"sha256-{HEX}.sig", f"sha256-{HEX}.att", f"sha256-{HEX}.sbom", f"sha256-{HEX}"):
        assert is_referrer_tag(tag)
        assert r.excluded(Repository.parse("base/alpine"), Tag.parse(tag)) is None
        assert r.excluded(Repository.parse("other/alpine"), Tag.parse(tag)) is not None
    assert not is_referrer_tag(f"sha256-{HEX[:-2]}.sig")
    assert not is_referrer_tag("sha256-latest")


def test_a_digest_only_event_is_filtered_by_its_repository_alone() -> None:
    r = replica(include=["base/*:v*"], exclude=["*:*-debug", "base/secret"])
    assert r.excluded(Repository.parse("base/alpine"), None) is None, "a tag exclude cannot judge an untagged event"
    assert r.excluded(Repository.parse("apps/web"), None) is not None
    assert r.excluded(Repository.parse("base/secret"), None) == "excluded by filter base/secret"


NAMES = st.from_regex(r"[a-z0-9]+(/[a-z0-9]+){0,2}", fullmatch=True)
TAGS = st.from_regex(r"[A-Za-z0-9_]{1,20}", fullmatch=True)


@given(NAMES, TAGS)
def test_no_filters_take_everything(name: str, tag: str) -> None:
    assert replica().excluded(Repository.parse(name), Tag.parse(tag)) is None


# -- credentials ---------------------------------------------------------------------------------


def test_env_credentials_are_read_by_prefix() -> None:
    keys = resolve_credentials("env:S3_EU", {"S3_EU_ACCESS_KEY": "ak", "S3_EU_SECRET_KEY": "sk-123456"})
    assert keys is not None
    assert (keys.access_key, keys.secret_key.get_secret_value()) == ("ak", "sk-123456")
    with pytest.raises(ConfigError, match="S3_EU_SECRET_KEY not set"):
        resolve_credentials("env:S3_EU", {"S3_EU_ACCESS_KEY": "ak"})


def test_default_chain_names_no_keys() -> None:
    """`aws:default` leaves the keys to the SDK (IRSA, instance profile); the definition is valid."""
    assert resolve_credentials("aws:default") is None
    assert replica(credentials_ref="aws:default").credentials_ref == "aws:default"


def test_file_credentials_from_json_or_a_mounted_secret_directory(tmp_path: Path) -> None:
    doc = tmp_path / "keys.json"
    doc.write_text(json.dumps({"access_key": "ak", "secret_key": "sk-123456"}))
    keys = resolve_credentials(f"file:{doc}", directory=tmp_path)
    assert keys is not None
    assert keys.access_key == "ak"
    mounted = tmp_path / "secret"
    mounted.mkdir()
    (mounted / "access_key").write_text("ak2\n")
    (mounted / "secret_key").write_text("sk2-123456\n")
    keys = resolve_credentials(f"file:{mounted}", directory=tmp_path)
    assert keys is not None
    assert (keys.access_key, keys.secret_key.get_secret_value()) == ("ak2", "sk2-123456")


def test_file_credentials_stay_under_the_credentials_directory(tmp_path: Path) -> None:
    """A definition (writable by an admin, read by every replicator) cannot make a replicator read
    files outside its credentials directory, nor a device that never ends."""
    allowed = tmp_path / "credentials"
    allowed.mkdir()
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps({"access_key": "ak", "secret_key": "sk-123456"}))
    with pytest.raises(ConfigError, match=r"not under replicator\.credentials_dir"):
        resolve_credentials(f"file:{outside}", directory=allowed)
    with pytest.raises(ConfigError, match=r"not under replicator\.credentials_dir"):
        resolve_credentials(f"file:{allowed}/../elsewhere.json", directory=allowed)
    (allowed / "escape").symlink_to(outside)
    with pytest.raises(ConfigError, match=r"not under replicator\.credentials_dir"):
        resolve_credentials(f"file:{allowed / 'escape'}", directory=allowed)
    with pytest.raises(ConfigError, match=r"need replicator\.credentials_dir"):
        resolve_credentials(f"file:{outside}")
    with pytest.raises(ConfigError, match="not under"):
        resolve_credentials("file:/dev/zero", directory=allowed)
    (allowed / "zero").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="not under"):
        resolve_credentials(f"file:{allowed / 'zero'}", directory=allowed)


def test_oversized_or_special_credential_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        resolve_credentials(f"file:{big}", directory=tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / "access_key").symlink_to(fifo)
    (mounted / "secret_key").write_text("sk-123456")
    with pytest.raises(ConfigError, match="not a regular file"):
        resolve_credentials(f"file:{mounted}", directory=tmp_path)


def test_unreadable_credentials_name_the_file_never_the_content(tmp_path: Path) -> None:
    bad = tmp_path / "keys.json"
    bad.write_text('{"access_key": "ak", "secret_key": "sk-TOPSECRET"')  # truncated JSON
    with pytest.raises(ConfigError) as refused:
        resolve_credentials(f"file:{bad}", directory=tmp_path)
    assert str(bad) in str(refused.value)
    assert "TOPSECRET" not in str(refused.value)
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_credentials(f"file:{tmp_path / 'missing.json'}", directory=tmp_path)


# -- the region's registry configuration ---------------------------------------------------------


def test_registry_config_is_read_only_with_the_primarys_auth_and_no_keys() -> None:
    primary = {
        "http": {"addr": ":5000", "secret": "shared-secret"},
        "auth": {"htpasswd": {"realm": "registry", "path": "/etc/registry/htpasswd"}},
    }
    r = replica(prefix="registry", endpoint="https://s3.eu.example.com")
    config = registry_config(r, listen="127.0.0.1:5001", primary=primary)
    storage = config["storage"]
    assert storage["maintenance"]["readonly"] == {"enabled": True}
    assert storage["maintenance"]["uploadpurging"] == {"enabled": False}
    assert storage["s3"] == {
        "region": "us-east-1",
        "regionendpoint": "https://s3.eu.example.com",
        "bucket": "georep-eu",
        "secure": True,
        "v4auth": True,
        "forcepathstyle": True,
        "rootdirectory": "/registry",
    }
    assert config["auth"] == primary["auth"]
    assert config["http"]["addr"] == "127.0.0.1:5001"
    assert "accesskey" not in json.dumps(config)
    assert "secretkey" not in json.dumps(config)


def test_each_region_gets_its_own_http_secret_never_the_primarys() -> None:
    primary = {"http": {"secret": "primary-secret"}, "auth": {"token": {"realm": "https://auth.example.com"}}}
    first = registry_config(replica(), primary=primary)["http"]["secret"]
    second = registry_config(replica(region="eu-other"), primary=primary)["http"]["secret"]
    assert "primary-secret" not in (first, second)
    assert first != second
    assert len(first) >= 32


def test_registry_config_fails_closed_without_auth() -> None:
    """No auth to copy means no configuration, unless an open region is asked for by name."""
    with pytest.raises(ConfigError, match="no auth section"):
        registry_config(replica(), primary={"http": {"addr": ":5000"}})
    with pytest.raises(ConfigError, match="no --primary-config"):
        registry_config(replica())
    assert "auth" not in registry_config(replica(), anonymous=True)


def test_registry_config_keeps_the_primarys_tls_and_host_unless_the_region_has_its_own_name() -> None:
    primary: dict[str, Any] = {
        "http": {"addr": ":443", "host": "https://registry.example.com",
                 "tls": {"certificate": "/certs/tls.crt", "key": "/certs/tls.key"}},
        "auth": {"token": {"realm": "https://auth.example.com/token", "service": "registry.example.com"}},
    }  # fmt: skip
    shared = registry_config(replica(s3_region="ap-northeast-1"), primary=primary)
    assert shared["http"]["tls"] == primary["http"]["tls"]
    assert shared["http"]["host"] == "https://registry.example.com"
    assert shared["auth"]["token"]["realm"] == "https://auth.example.com/token", "tokens still come from the primary"
    assert shared["storage"]["s3"]["region"] == "ap-northeast-1"
    own = registry_config(replica(), primary=primary, host="https://registry.ap-tokyo.example.com")
    assert own["http"]["host"] == "https://registry.ap-tokyo.example.com"
    assert "tls" not in registry_config(replica(), anonymous=True)["http"]
