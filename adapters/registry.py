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
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog

from adapters.meter import UNMETERED, Meter
from engine.digest import Digest
from engine.errors import NotFoundUpstream, UpstreamRefused, UpstreamUnavailable, task_group
from engine.manifests import ACCEPT, MAX_MANIFEST_BYTES, Manifest, parse_manifest
from engine.names import Repository, Tag
from engine.plan import child_digests
from engine.settings import PrimarySettings

log = structlog.get_logger(__name__)

_CHALLENGE_PARAM: Final = re.compile(r'(\w+)="([^"]*)"')
_NEXT_LINK: Final = re.compile(r'<([^>]*)>[^,]*?;\s*rel="?next"?\s*(?:[;,]|$)', re.IGNORECASE)


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


#: scopes whose bearer token is kept (one per repository pulled from); the least recently used goes first
TOKEN_CACHE_SIZE: Final = 1024
#: a token is renewed this long before the registry says it expires, so it never expires mid-request
TOKEN_MARGIN_S: Final = 10.0
#: what a token lives when the token server does not say (the distribution token spec's default)
TOKEN_DEFAULT_S: Final = 60.0


class TokenCache:
    """Bearer tokens by scope: bounded (least recently used goes), each honouring its `expires_in`, and one
    fetch per scope at a time, so that many requests answered 401 at once ask the token server once."""

    def __init__(self, size: int = TOKEN_CACHE_SIZE) -> None:
        self.size = size
        self._tokens: OrderedDict[str, _Token] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token is None:
            return None
        if token.expires_at <= time.monotonic():
            del self._tokens[scope]
            return None
        self._tokens.move_to_end(scope)
        return token.value

    def put(self, scope: str, value: str, lifetime_s: float) -> None:
        self._tokens[scope] = _Token(value, time.monotonic() + max(lifetime_s - TOKEN_MARGIN_S, 1.0))
        self._tokens.move_to_end(scope)
        while len(self._tokens) > self.size:
            self._tokens.popitem(last=False)

    def lock(self, scope: str) -> asyncio.Lock:
        lock = self._locks.get(scope)
        if lock is None:
            # Locks of scopes no longer cached are dropped once idle, so they stay bounded too.
            if len(self._locks) >= 2 * self.size:
                for idle in [s for s, known in self._locks.items() if not known.locked() and s not in self._tokens]:
                    del self._locks[idle]
            lock = self._locks[scope] = asyncio.Lock()
        return lock

    def __len__(self) -> int:
        return len(self._tokens)


@dataclass(frozen=True, slots=True)
class Head:
    """What the primary answers to a HEAD of a manifest: enough to compare a tag without fetching it."""

    digest: Digest
    media_type: str | None
    size: int | None


class RegistryClient:
    def __init__(self, settings: PrimarySettings, session: aiohttp.ClientSession, meter: Meter = UNMETERED) -> None:
        self._settings = settings
        #: counts (and, with a rate, spaces out) every request this client makes
        self.meter = meter
        self._base = settings.url
        self._session = session
        # The header value itself: aiohttp 3.14 deprecates BasicAuth and the `auth=` argument.
        self._basic: str | None = None
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else ""
            self._basic = aiohttp.encode_basic_auth(settings.username, password)
        self.tokens = TokenCache()
        self._use_basic = False

    def metered(self, meter: Meter) -> RegistryClient:
        """The same primary, session and tokens, with requests counted and limited by `meter`."""
        view = RegistryClient(self._settings, self._session, meter)
        view.tokens, view._use_basic = self.tokens, self._use_basic
        return view

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
            async with task_group() as group:
                tasks = [group.create_task(self.manifest(repository, d.digest)) for d in missing]
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

    async def head(self, repository: Repository, reference: str) -> Head | None:
        """The digest (and type and size) `reference` names on the primary now, without its bytes; None if absent."""
        path = f"/v2/{repository}/manifests/{reference}"
        try:
            async with self._get(path, repository, {"Accept": ACCEPT}, method="HEAD") as response:
                headers = response.headers
        except NotFoundUpstream:
            return None
        served = headers.get("Docker-Content-Digest")
        if not served:
            raise UpstreamRefused(f"primary registry names no Docker-Content-Digest for {path}", path=path)
        length = headers.get("Content-Length")
        media_type = (headers.get("Content-Type") or "").split(";")[0].strip() or None
        return Head(Digest.parse(served), media_type, int(length) if length and length.isdigit() else None)

    async def harbor_repositories(self, page_size: int = 100) -> AsyncIterator[Repository]:
        """Every repository through Harbor's API (projects, then each project's repositories), for a Harbor
        whose `/v2/_catalog` is for administrators only."""
        async for project in self._harbor_pages("/api/v2.0/projects", page_size):
            name = project.get("name")
            if isinstance(name, str) and name:
                async for repository in self._harbor_pages(f"/api/v2.0/projects/{name}/repositories", page_size):
                    if isinstance(repository.get("name"), str):
                        yield Repository.parse(repository["name"])

    async def _harbor_pages(self, path: str, page_size: int) -> AsyncIterator[dict[str, Any]]:
        """Every item of a paged Harbor list. Harbor may cap the page size below what was asked, so a short page
        is not the end: the total it announces (X-Total-Count) is, or else an empty page."""
        page, seen = 1, 0
        while True:
            async with self._get(f"{path}?page={page}&page_size={page_size}", None, {}, basic=True) as response:
                items = await response.json(loads=orjson.loads)
                total = response.headers.get("X-Total-Count", "")
            if not isinstance(items, list):
                raise UpstreamRefused(f"Harbor answered {path} with something that is not a list", path=path)
            for item in items:
                if isinstance(item, dict):
                    yield item
            seen += len(items)
            if not items or (total.isdigit() and seen >= int(total)):
                return
            page += 1

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
        self,
        path: str,
        repository: Repository | None,
        headers: dict[str, str],
        *,
        method: str = "GET",
        basic: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        scope = f"repository:{repository}:pull" if repository else "registry:catalog:*"
        url = self._base + path

        async def send() -> aiohttp.ClientResponse:
            auth = {"Authorization": self._basic} if basic and self._basic else self._auth_headers(scope)
            async with self.meter:
                return await self._session.request(method, url, headers=auth | headers)

        try:
            response = await send()
            if response.status == 401 and not basic:
                try:
                    retry = await self._answer_challenge(response, scope)
                finally:
                    response.release()
                if retry:
                    response = await send()
            try:
                _raise_for_status(response, path)
                yield response
            finally:
                response.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"primary registry unreachable: {type(exc).__name__}: {exc}", path=path) from exc

    def _auth_headers(self, scope: str) -> dict[str, str]:
        token = self.tokens.get(scope)
        if token is not None:
            return {"Authorization": f"Bearer {token}"}
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
            async with self.tokens.lock(scope):
                if self.tokens.get(scope) is None:  # another request of this scope may have fetched it meanwhile
                    value, lifetime = await self._fetch_token(challenge, scope)
                    self.tokens.put(scope, value, lifetime)
            return True
        return False

    async def _fetch_token(self, challenge: Challenge, scope: str) -> tuple[str, float]:
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
        expires_in = doc.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else TOKEN_DEFAULT_S
        return value, lifetime


def _raise_for_status(response: aiohttp.ClientResponse, path: str) -> None:
    status = response.status
    if status < 300:
        return
    if status == 404:
        raise NotFoundUpstream(f"primary registry has no {path}", path=path)
    if status in (401, 403):
        # Wrong or missing credentials are fixed by an operator, not by giving up on the event.
        raise UpstreamUnavailable(
            f"primary registry refused credentials ({status}) for {path}", path=path, status=status
        )
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
