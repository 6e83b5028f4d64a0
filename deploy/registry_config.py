"""A replica region's registry configuration, generated from its replica definition.

The region runs a stock CNCF distribution registry on the replica's bucket:
read-only (pushes answer 405), upload purging off (there are no uploads), and
the primary's `auth` section copied as is, so the same users and tokens pull
with the same credentials in every region. Without an `auth` section to copy
there is no configuration: a region would serve every image to anyone, so
that takes `anonymous=True`, said on purpose. Each region gets an `http.secret`
of its own (never the primary's: a region's secret must not open the primary).

The bucket keys are not written into the file: distribution reads them from
`REGISTRY_STORAGE_S3_ACCESSKEY` and `REGISTRY_STORAGE_S3_SECRETKEY`, which a
deployment sets from the same secret `credentials_ref` names.

`render` writes it as YAML, the format registry operators read (or JSON).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from engine.replicas import ReplicaDefinition
from engine.settings import ConfigError

ACCESS_KEY_ENV = "REGISTRY_STORAGE_S3_ACCESSKEY"
SECRET_KEY_ENV = "REGISTRY_STORAGE_S3_SECRETKEY"  # noqa: S105 -- the name of a variable, not its value


def load_primary_config(path: Path) -> dict[str, Any]:
    """The primary registry's own configuration (YAML or JSON)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the primary's registry configuration {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a registry configuration is a mapping, not {type(doc).__name__}")
    return doc


def registry_config(
    replica: ReplicaDefinition,
    *,
    listen: str = "0.0.0.0:5000",
    primary: dict[str, Any] | None = None,
    http_secret: str | None = None,
    anonymous: bool = False,
    host: str | None = None,
) -> dict[str, Any]:
    """The region's registry configuration. From the primary's it takes `auth` (the same users and tokens),
    `http.tls` (the same certificate paths: mount there a certificate valid for the name clients use in
    this region, see the README's front door) and `http.host` (replaced by `host`, the region's own URL,
    when given: with per-region names it is the region's, with one geo-DNS name the primary's is right)."""
    auth = (primary or {}).get("auth")
    if not auth and not anonymous:
        where = "the primary's configuration has no auth section" if primary else "no --primary-config given"
        raise ConfigError(
            f"{where}: region {replica.region}'s registry would serve every image to anyone. Pass the primary's "
            "configuration (its auth is copied), or --anonymous if the primary is open on purpose"
        )
    endpoint = urlsplit(replica.endpoint)
    s3: dict[str, Any] = {
        "region": replica.s3_region,
        "regionendpoint": replica.endpoint,
        "bucket": replica.bucket,
        "secure": endpoint.scheme == "https",
        "v4auth": True,
        # distribution v3 addresses buckets virtual-host style (<bucket>.<host>) unless told not to; 2.8.2
        # implies path style from regionendpoint and accepts the key too, so one file serves both lines.
        "forcepathstyle": True,
    }
    if replica.prefix:
        s3["rootdirectory"] = "/" + replica.prefix
    # Several instances of one region's registry must share the secret: generate the file once per region.
    http: dict[str, Any] = {"addr": listen, "secret": http_secret or secrets.token_urlsafe(32)}
    primary_http = (primary or {}).get("http") or {}
    if host or primary_http.get("host"):
        http["host"] = host or primary_http["host"]
    if primary_http.get("tls"):
        http["tls"] = primary_http["tls"]
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
        "http": http,
        "storage": {
            "s3": s3,
            "maintenance": {"readonly": {"enabled": True}, "uploadpurging": {"enabled": False}},
            # Clients pull the bytes through the registry, not from a presigned bucket URL.
            "redirect": {"disable": True},
        },
    }
    if auth:
        config["auth"] = auth
    return config


def render(config: dict[str, Any], *, as_json: bool = False) -> str:
    """The configuration as YAML (keys in the order distribution documents them), or as JSON."""
    if as_json:
        return json.dumps(config, indent=2) + "\n"
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
