"""Resolve a replica's `credentials_ref` into S3 keys, where the replicator runs.

The replicas topic is readable by every georep process, so it holds only the
reference; the keys stay in the environment or a mounted secret:

    env:PREFIX      PREFIX_ACCESS_KEY and PREFIX_SECRET_KEY
    file:/path      a JSON file {"access_key": ..., "secret_key": ...}, or a
                    directory holding files `access_key` and `secret_key`
                    (a Kubernetes Secret mounted as a volume)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import orjson
from pydantic import SecretStr

from engine.settings import ConfigError


def resolve_credentials(ref: str, environ: Mapping[str, str] | None = None) -> tuple[str, SecretStr]:
    kind, _, where = ref.partition(":")
    if kind == "env":
        env = os.environ if environ is None else environ
        names = (f"{where}_ACCESS_KEY", f"{where}_SECRET_KEY")
        missing = [name for name in names if not env.get(name)]
        if missing:
            raise ConfigError(f"credentials {ref}: {' and '.join(missing)} not set in this process's environment")
        return env[names[0]], SecretStr(env[names[1]])
    if kind == "file":
        return _from_path(ref, Path(where))
    raise ConfigError(f"credentials {ref!r}: expected env:PREFIX or file:/path")


def _from_path(ref: str, path: Path) -> tuple[str, SecretStr]:
    try:
        if path.is_dir():
            fields = {name: (path / name).read_text().strip() for name in ("access_key", "secret_key")}
        else:
            doc = orjson.loads(path.read_bytes())
            fields = (
                {name: str(doc.get(name) or "") for name in ("access_key", "secret_key")}
                if isinstance(doc, dict)
                else {}
            )
    except (OSError, orjson.JSONDecodeError) as exc:
        # The error names the file, never its content.
        raise ConfigError(f"credentials {ref}: cannot read: {type(exc).__name__}") from None
    if not fields.get("access_key") or not fields.get("secret_key"):
        raise ConfigError(f"credentials {ref}: access_key and secret_key are both required")
    return fields["access_key"], SecretStr(fields["secret_key"])
