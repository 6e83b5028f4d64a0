"""Push and pull the way users do: Debian's skopeo against plain-HTTP loopback registries."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


class SkopeoError(RuntimeError):
    pass


def _run(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(["skopeo", *args], capture_output=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise SkopeoError(f"skopeo {' '.join(args)} failed: {result.stderr.decode(errors='replace').strip()}")
    return result


def push(layout: Path, tag: str, destination: str, *, all_platforms: bool = True, creds: str | None = None) -> None:
    """Copy `oci:layout:tag` to `docker://destination` (host:port/repo:tag); `creds` is `user:password`."""
    extra = ["--all"] if all_platforms else []
    if creds is not None:
        extra.append(f"--dest-creds={creds}")
    _run(
        "--insecure-policy",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        *extra,
        f"oci:{layout}:{tag}",
        f"docker://{destination}",
    )


def copy(source: str, destination: str) -> None:
    """Registry to registry (host:port/repo:tag on both sides); skopeo mounts blobs it can."""
    _run(
        "--insecure-policy",
        "copy",
        "--quiet",
        "--all",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://{source}",
        f"docker://{destination}",
    )


def pull(source: str, layout: Path, tag: str) -> None:
    """Pull every platform of `docker://source` into an OCI layout (skopeo verifies every blob digest)."""
    _run(
        "--insecure-policy",
        "copy",
        "--quiet",
        "--all",
        "--src-tls-verify=false",
        f"docker://{source}",
        f"oci:{layout}:{tag}",
    )


def manifest_digest(reference: str) -> str:
    """The digest of the manifest (or index) `docker://reference` serves, hashed from its raw bytes."""
    raw = _run("inspect", "--raw", "--tls-verify=false", f"docker://{reference}").stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()
