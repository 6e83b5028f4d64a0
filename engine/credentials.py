"""Resolve a replica's `credentials_ref` into S3 credentials, where the replicator runs.

The replicas topic is readable by every georep process, so it holds only the reference; the keys stay in the
environment, a mounted secret, or the cloud's own identity:

    env:PREFIX      PREFIX_ACCESS_KEY and PREFIX_SECRET_KEY
    file:/path      a JSON file {"access_key": ..., "secret_key": ...}, or a directory holding files
                    `access_key` and `secret_key` (a Kubernetes Secret mounted as a volume). The path must lie
                    under the configured directory (`replicator.credentials_dir`) and name regular files of at
                    most MAX_FILE_BYTES: a definition cannot make a replicator read /dev/zero or /etc/shadow.
    aws:default     no keys at all: the AWS SDK's default chain finds them (environment, web identity / IRSA,
                    ECS container credentials, EC2 instance profile, the shared credentials file)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson
from pydantic import SecretStr

from engine.settings import ConfigError

MAX_FILE_BYTES: Final = 64 * 1024
DEFAULT_CHAIN: Final = "aws:default"
_FIELDS: Final = ("access_key", "secret_key")


@dataclass(frozen=True, slots=True)
class Keys:
    access_key: str
    secret_key: SecretStr


def resolve_credentials(
    ref: str, environ: Mapping[str, str] | None = None, *, directory: Path | None = None
) -> Keys | None:
    """The keys `ref` names; None for `aws:default` (the SDK's default chain finds them)."""
    kind, _, where = ref.partition(":")
    if ref == DEFAULT_CHAIN:
        return None
    if kind == "env":
        env = os.environ if environ is None else environ
        names = (f"{where}_ACCESS_KEY", f"{where}_SECRET_KEY")
        missing = [name for name in names if not env.get(name)]
        if missing:
            raise ConfigError(f"credentials {ref}: {' and '.join(missing)} not set in this process's environment")
        return Keys(env[names[0]], SecretStr(env[names[1]]))
    if kind == "file":
        return _from_path(ref, Path(where), directory)
    raise ConfigError(f"credentials {ref!r}: expected env:PREFIX, file:/path or {DEFAULT_CHAIN}")


def _confined(ref: str, path: Path, directory: Path | None) -> Path:
    if directory is None:
        raise ConfigError(f"credentials {ref}: file: references need replicator.credentials_dir (where keys may lie)")
    try:
        resolved, root = path.resolve(strict=True), directory.resolve(strict=True)
    except OSError as exc:
        raise ConfigError(f"credentials {ref}: cannot read: {type(exc).__name__}") from None
    if not resolved.is_relative_to(root):
        raise ConfigError(f"credentials {ref}: {path} is not under replicator.credentials_dir ({directory})")
    return resolved


def _read(ref: str, path: Path) -> bytes:
    """A regular file's bytes, at most MAX_FILE_BYTES of them (no device, pipe or socket: they never end)."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"credentials {ref}: {path.name} is not a regular file")
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"credentials {ref}: cannot read: {type(exc).__name__}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"credentials {ref}: {path.name} is larger than {MAX_FILE_BYTES} bytes")
    return data


def _from_path(ref: str, path: Path, directory: Path | None) -> Keys:
    resolved = _confined(ref, path, directory)
    if resolved.is_dir():
        fields = {
            name: _read(ref, resolved / name).decode(errors="replace").strip() for name in ("access_key", "secret_key")
        }
    else:
        try:
            doc = orjson.loads(_read(ref, resolved))
        except orjson.JSONDecodeError:
            # The error names the file, never its content.
            raise ConfigError(f"credentials {ref}: cannot read: not JSON") from None
        fields = (
            {name: str(doc.get(name) or "") for name in ("access_key", "secret_key")} if isinstance(doc, dict) else {}
        )
    if not fields.get("access_key") or not fields.get("secret_key"):
        raise ConfigError(f"credentials {ref}: access_key and secret_key are both required")
    return Keys(fields["access_key"], SecretStr(fields["secret_key"]))
