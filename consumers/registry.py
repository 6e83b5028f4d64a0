"""A small asyncio client for the OCI distribution pull API: manifests and blobs.

No well-kept asyncio OCI client exists in Python, so this is ours, and only
what replication needs: GET a manifest by digest, stream a blob, list the
catalog and tags. Auth: anonymous, basic, and bearer tokens obtained from the
realm a 401 challenge names (with the basic credentials, if configured).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog

from engine.digest import Digest
from engine.errors import GeorepError, NotFoundUpstream, UpstreamUnavailable, most_telling
from engine.manifests import ACCEPT, MAX_MANIFEST_BYTES, Manifest, parse_manifest
from engine.names import Repository, Tag
from engine.plan import child_digests
from engine.settings import PrimarySettings

log = structlog.get_logger(__name__)

_CHALLENGE_PARAM: Final = re.compile(r'(\w+)="([^"]*)"')
_NEXT_LINK: Final = re.compile(r'<([^>]*)>[^,]*?;\s*rel="?next"?\s*(?:[;,]|$)', re.IGNORECASE)


class UpstreamRefused(GeorepError):
    """The primary refused a request in a way retrying cannot fix (400, 405, ...)."""

    reason = "upstream-refused"


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    """`Bearer realm="…",service="…",scope="…"` → Challenge('bearer', {...})."""
    scheme, _, rest = header.strip().partition(" ")
    return Challenge(scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest)))


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float


class RegistryClient:
    def __init__(self, settings: PrimarySettings, session: aiohttp.ClientSession) -> None:
        self._base = settings.url
        self._session = session
        # The header value itself: aiohttp 3.14 deprecates BasicAuth and the `auth=` argument.
        self._basic: str | None = None
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else ""
            self._basic = aiohttp.encode_basic_auth(settings.username, password)
        self._tokens: dict[str, _Token] = {}
        self._use_basic = False

    @staticmethod
    def session(settings: PrimarySettings, connections: int = 32) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=settings.timeout_s)
        connector = aiohttp.TCPConnector(limit=connections, ssl=bool(settings.tls_verify))
        return aiohttp.ClientSession(timeout=timeout, connector=connector, raise_for_status=False)

    async def manifest(self, repository: Repository, digest: Digest) -> Manifest:
        """Fetch a manifest by digest and verify it; raises NotFoundUpstream if the primary lacks it."""
        raw, content_type, _ = await self._manifest(repository, str(digest))
        return parse_manifest(raw, digest, content_type)

    async def tagged(self, repository: Repository, tag: Tag) -> Manifest:
        """The manifest `tag` points at now, verified against the digest the primary names for it."""
        raw, content_type, served = await self._manifest(repository, str(tag))
        digest = Digest.parse(served) if served else Digest.of(raw)
        return parse_manifest(raw, digest, content_type)

    async def children(self, repository: Repository, root: Manifest) -> dict[Digest, Manifest]:
        """Every manifest under an index, at any depth, fetched a level at a time; empty for an image."""
        manifests: dict[Digest, Manifest] = {}
        while missing := child_digests(root, manifests):
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self.manifest(repository, d.digest)) for d in missing]
            except BaseExceptionGroup as failures:
                raise most_telling(failures) from None
            manifests.update((m.digest, m) for m in (task.result() for task in tasks))
        return manifests

    async def _manifest(self, repository: Repository, reference: str) -> tuple[bytes, str | None, str | None]:
        """(bytes, Content-Type, Docker-Content-Digest) of a manifest: read whole, or until it is over the limit."""
        path = f"/v2/{repository}/manifests/{reference}"
        async with self._get(path, repository, {"Accept": ACCEPT}) as response:
            # `read(n)` returns what is buffered, which may be part of the body: read until the end or the limit.
            raw = bytearray()
            while len(raw) <= MAX_MANIFEST_BYTES and (chunk := await response.content.read(MAX_MANIFEST_BYTES + 1)):
                raw += chunk
            headers = response.headers
            return bytes(raw), headers.get("Content-Type"), headers.get("Docker-Content-Digest")

    @asynccontextmanager
    async def blob(self, repository: Repository, digest: Digest) -> AsyncIterator[aiohttp.ClientResponse]:
        """The open response for a blob; the caller streams `response.content` and verifies the digest."""
        async with self._get(f"/v2/{repository}/blobs/{digest}", repository, {}) as response:
            yield response

    async def catalog(self, page_size: int = 1000) -> AsyncIterator[Repository]:
        path: str | None = f"/v2/_catalog?n={page_size}"
        while path:
            async with self._get(path, None, {}) as response:
                doc = await response.json(loads=orjson.loads)
                path = _next_page(response)
            for name in doc.get("repositories") or []:
                yield Repository.parse(name)

    async def tags(self, repository: Repository, page_size: int = 1000) -> AsyncIterator[str]:
        path: str | None = f"/v2/{repository}/tags/list?n={page_size}"
        while path:
            async with self._get(path, repository, {}) as response:
                doc = await response.json(loads=orjson.loads)
                path = _next_page(response)
            for tag in doc.get("tags") or []:
                yield str(tag)

    async def ping(self) -> None:
        async with self._get("/v2/", None, {}):
            pass

    @asynccontextmanager
    async def _get(
        self, path: str, repository: Repository | None, headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        scope = f"repository:{repository}:pull" if repository else "registry:catalog:*"
        url = self._base + path
        try:
            response = await self._session.get(url, headers=self._auth_headers(scope) | headers)
            if response.status == 401:
                try:
                    retry = await self._answer_challenge(response, scope)
                finally:
                    response.release()
                if retry:
                    response = await self._session.get(url, headers=self._auth_headers(scope) | headers)
            try:
                _raise_for_status(response, path)
                yield response
            finally:
                response.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"primary registry unreachable: {type(exc).__name__}: {exc}", path=path) from exc

    def _auth_headers(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token is not None and token.expires_at > time.monotonic():
            return {"Authorization": f"Bearer {token.value}"}
        if self._use_basic and self._basic is not None:
            return {"Authorization": self._basic}
        return {}

    async def _answer_challenge(self, response: aiohttp.ClientResponse, scope: str) -> bool:
        """Learn how to authenticate from a 401; True if a retry may now succeed."""
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge.scheme == "basic" and self._basic is not None and not self._use_basic:
            self._use_basic = True
            return True
        if challenge.scheme == "bearer" and "realm" in challenge.params:
            self._tokens[scope] = await self._fetch_token(challenge, scope)
            return True
        return False

    async def _fetch_token(self, challenge: Challenge, scope: str) -> _Token:
        params = {"scope": challenge.params.get("scope", scope)}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        headers = {"Authorization": self._basic} if self._basic is not None else {}
        async with self._session.get(challenge.params["realm"], params=params, headers=headers) as response:
            if response.status != 200:
                raise UpstreamUnavailable(f"token endpoint answered {response.status}", realm=challenge.params["realm"])
            doc: dict[str, Any] = await response.json(loads=orjson.loads, content_type=None)
        value = doc.get("token") or doc.get("access_token")
        if not isinstance(value, str) or not value:
            raise UpstreamUnavailable("token endpoint answered without a token")
        # Renew a little early so a token never expires mid-request.
        lifetime = float(doc.get("expires_in") or 60)
        return _Token(value, time.monotonic() + max(lifetime - 10, 1))


def _raise_for_status(response: aiohttp.ClientResponse, path: str) -> None:
    status = response.status
    if status < 300:
        return
    if status == 404:
        raise NotFoundUpstream(f"primary registry has no {path}", path=path)
    if status in (401, 403):
        # Wrong or missing credentials are fixed by an operator, not by giving up on the event.
        raise UpstreamUnavailable(f"primary registry refused credentials ({status}) for {path}", path=path)
    if status == 429 or status >= 500:
        raise UpstreamUnavailable(f"primary registry answered {status} for {path}", path=path)
    raise UpstreamRefused(f"primary registry answered {status} for {path}", path=path)


def _next_page(response: aiohttp.ClientResponse) -> str | None:
    """The path of the next page from an RFC 5988 `Link: <…>; rel="next"` header."""
    match = _NEXT_LINK.search(response.headers.get("Link", ""))
    if match is None:
        return None
    # distribution sends a path; other registries send an absolute URL, and stopping there would
    # silently truncate a catalog walk. Only the path is kept: requests stay on the configured primary.
    target = urlsplit(match[1])
    path = target.path + (f"?{target.query}" if target.query else "")
    return path if path.startswith("/v2/") else None
