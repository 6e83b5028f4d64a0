"""Ask a registry whether it serves a manifest, by the OCI API (what a pull would see)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from engine.manifests import ACCEPT


async def served_digest(session: aiohttp.ClientSession, registry: str, repository: str, reference: str) -> str | None:
    url = f"http://{registry}/v2/{repository}/manifests/{reference}"
    async with session.head(url, headers={"Accept": ACCEPT}) as response:
        if response.status != 200:
            return None
        return response.headers.get("Docker-Content-Digest")


async def wait_served(
    registry: str, repository: str, reference: str, digest: str, timeout_s: float = 60, interval_s: float = 0.02
) -> float:
    """Seconds until `registry` serves `repository:reference` as `digest`; TimeoutError if it never does."""
    started = time.monotonic()
    deadline = started + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            if await served_digest(session, registry, repository, reference) == digest:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"{registry} did not serve {repository}:{reference} as {digest} in {timeout_s}s")
            await asyncio.sleep(interval_s)
