"""The replicator's registry client against primaries that require credentials: real docker-registry processes.

Two registries of their own (not the shared stack's anonymous primary): one with
htpasswd basic auth, one with token auth whose token server runs in this test.
skopeo pushes into each as a user would, then `RegistryClient` pulls back by digest.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hmac
import json
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import jwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from adapters.registry import RegistryClient
from deploy.local import images, skopeo, stack
from engine.digest import Digest
from engine.errors import NotFoundUpstream, UpstreamUnavailable
from engine.names import Repository
from engine.settings import PrimarySettings

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
BASIC_PORT = 24000
TOKEN_REGISTRY_PORT = 24001
TOKEN_SERVER_PORT = 24002
SERVICE = "georep-test-registry"
ISSUER = "georep-test-token-issuer"
TOKEN_LIFETIME_S = 300
KiB = 1024

# Two accounts, as an operator would set them up: skopeo pushes as one, georep reads as the other,
# so the token server's log tells georep's requests apart from skopeo's.
PUSHER = "pusher"
PULLER = "georep"
PASSWORDS = {PUSHER: secrets.token_urlsafe(18), PULLER: secrets.token_urlsafe(18)}
ALLOWED_ACTIONS = {PUSHER: ("pull", "push"), PULLER: ("pull",)}

APP = Repository.parse("auth/app")
TOOL = Repository.parse("auth/tool")


# -- what was pushed ----------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    repository: Repository
    image: images.Image
    tags: tuple[str, ...]

    @property
    def digest(self) -> Digest:
        return Digest.parse(self.image.manifest.digest)


def _sample() -> dict[Repository, Pushed]:
    app = images.image([images.layer(300 * KiB, "auth-app-0"), images.layer(20 * KiB, "auth-app-1")], label="app")
    tool = images.image([images.layer(10 * KiB, "auth-tool-0")], label="tool")
    return {APP: Pushed(APP, app, ("v1", "v2")), TOOL: Pushed(TOOL, tool, ("v1",))}


async def _push_all(host: str, workdir: Path, pushed: dict[Repository, Pushed]) -> None:
    for item in pushed.values():
        layout = workdir / f"layout-{item.repository.name.replace('/', '_')}"
        images.write_image(layout, "local", item.image)
        for tag in item.tags:
            # In a thread: the bearer registry's token server answers skopeo from this event loop.
            await asyncio.to_thread(
                skopeo.push, layout, "local", f"{host}/{item.repository}:{tag}", creds=f"{PUSHER}:{PASSWORDS[PUSHER]}"
            )


# -- registries -----------------------------------------------------------------


@dataclass
class Primary:
    host: str
    pushed: dict[Repository, Pushed]
    tokens: TokenServer | None = None

    def settings(self, username: str | None = PULLER, password: str | None = None) -> PrimarySettings:
        if username is not None and password is None:
            password = PASSWORDS[username]
        return PrimarySettings(
            url=f"http://{self.host}",
            username=username,
            password=SecretStr(password) if password is not None else None,
            timeout_s=30,
        )

    @asynccontextmanager
    async def client(self, username: str | None = PULLER, password: str | None = None) -> AsyncIterator[RegistryClient]:
        """A fresh client (so an empty token cache) on its own session, as a replicator process starts."""
        settings = self.settings(username, password)
        async with RegistryClient.session(settings) as session:
            yield RegistryClient(settings, session)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As Go's listener does: connections of an earlier run in TIME_WAIT do not make the port taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


@asynccontextmanager
async def _registry(name: str, root: Path, port: int, auth: dict[str, Any], scheme: str) -> AsyncIterator[str]:
    """Run docker-registry with `auth` until the block ends; yields its host:port."""
    # A leftover registry on the port would answer the readiness probe in place of ours.
    if not _port_free(port):
        raise RuntimeError(f"port {port} is taken: is a registry of an earlier run still there?")
    config = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
        "http": {"addr": f"{HOST}:{port}", "secret": secrets.token_urlsafe(24)},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
        "auth": auth,
    }
    config_path = root / "config.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML: distribution reads it as is
    argv = [shutil.which("docker-registry") or "/usr/bin/docker-registry", "serve", str(config_path)]
    log = root / "registry.log"
    proc = stack.spawn({"argv": argv, "env": {}, "log": str(log)})
    try:

        async def challenged() -> bool:
            # Ready means listening with auth on: an anonymous /v2/ gets the expected challenge.
            timeout = aiohttp.ClientTimeout(total=2)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(f"http://{HOST}:{port}/v2/") as r:
                return r.status == 401 and r.headers.get("WWW-Authenticate", "").lower().startswith(scheme)

        await stack.wait_ready(name, proc, challenged, log, timeout_s=30)
        yield f"{HOST}:{port}"
    finally:
        stack.stop_pid(proc.pid, argv)


@pytest.fixture(scope="module")
async def basic_primary(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Primary]:
    root = tmp_path_factory.mktemp("basic-primary")
    # Cost 4, the minimum: distribution checks the bcrypt hash on every request, and the default cost
    # would spend a quarter second of CPU per request on a test machine.
    (root / "htpasswd").write_bytes(
        b"".join(
            user.encode() + b":" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)) + b"\n"
            for user, password in PASSWORDS.items()
        )
    )
    auth = {"htpasswd": {"realm": "georep-test", "path": str(root / "htpasswd")}}
    async with _registry("basic-auth registry", root, BASIC_PORT, auth, "basic") as host:
        primary = Primary(host, _sample())
        await _push_all(host, root, primary.pushed)
        yield primary


@pytest.fixture(scope="module")
async def bearer_primary(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Primary]:
    root = tmp_path_factory.mktemp("bearer-primary")
    tokens = TokenServer()
    (root / "token-ca.pem").write_bytes(tokens.certificate.public_bytes(serialization.Encoding.PEM))
    auth = {
        "token": {
            "realm": f"http://{HOST}:{TOKEN_SERVER_PORT}/token",
            "service": SERVICE,
            "issuer": ISSUER,
            "rootcertbundle": str(root / "token-ca.pem"),
        }
    }
    runner = web.AppRunner(tokens.app())
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, TOKEN_SERVER_PORT).start()
        async with _registry("token-auth registry", root, TOKEN_REGISTRY_PORT, auth, "bearer") as host:
            primary = Primary(host, _sample(), tokens)
            await _push_all(host, root, primary.pushed)
            yield primary
    finally:
        await runner.cleanup()


# -- the token server -------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    user: str | None
    scopes: tuple[str, ...]
    granted: bool


@dataclass
class TokenServer:
    """A docker token server: checks basic credentials, signs a JWT distribution 2.8 verifies.

    distribution trusts a token whose `x5c` header chains to its rootcertbundle; here the
    chain is one self-signed certificate, which is the bundle.
    """

    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    requests: list[TokenRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._token)
        return app

    def asked_by(self, user: str) -> list[TokenRequest]:
        return [r for r in self.requests if r.user == user]

    async def _token(self, request: web.Request) -> web.Response:
        user = _authenticated(request.headers.get("Authorization", ""))
        scopes = tuple(scope for value in request.query.getall("scope", []) for scope in value.split())
        self.requests.append(TokenRequest(user, scopes, granted=user is not None))
        if request.query.get("service") != SERVICE:
            return web.json_response({"errors": [{"code": "UNSUPPORTED", "message": "unknown service"}]}, status=400)
        if user is None:
            return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}, status=401)
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": SERVICE,
            "exp": now + TOKEN_LIFETIME_S,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [entry for scope in scopes if (entry := _grant(user, scope)) is not None],
        }
        chain = [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()]
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"x5c": chain})
        issued_at = dt.datetime.fromtimestamp(now, dt.UTC).isoformat()
        return web.json_response(
            {"token": token, "access_token": token, "expires_in": TOKEN_LIFETIME_S, "issued_at": issued_at}
        )


def _authenticated(header: str) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    expected = PASSWORDS.get(user)
    if expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
        return None
    return user


def _grant(user: str, scope: str) -> dict[str, Any] | None:
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if kind == "registry" and name == "catalog":
        return {"type": "registry", "name": "catalog", "actions": ["*"]}
    if kind != "repository" or not name:
        return None
    allowed = [action for action in actions.split(",") if action in ALLOWED_ACTIONS[user]]
    return {"type": "repository", "name": name, "actions": allowed}


# -- what a replicator does with a primary -------------------------------------------


async def _pull_by_digest(client: RegistryClient, item: Pushed) -> int:
    """Fetch the manifest and stream every blob, checking each against what was pushed; returns requests made."""
    manifest = await client.manifest(item.repository, item.digest)
    assert manifest.digest == item.digest
    assert manifest.raw == item.image.manifest.data
    pushed = {blob.digest: blob.data for blob in item.image.blobs}
    assert [str(d.digest) for d in manifest.blobs] == list(pushed)
    for descriptor in manifest.blobs:
        hasher = descriptor.digest.hasher()
        size = 0
        async with client.blob(item.repository, descriptor.digest) as response:
            async for chunk in response.content.iter_chunked(64 * KiB):
                hasher.update(chunk)
                size += len(chunk)
        assert f"{descriptor.digest.algorithm}:{hasher.hexdigest()}" == str(descriptor.digest)
        assert size == descriptor.size == len(pushed[str(descriptor.digest)])
    return 1 + len(manifest.blobs)


async def _listing(client: RegistryClient, page_size: int) -> tuple[list[Repository], dict[Repository, list[str]]]:
    repositories = [repo async for repo in client.catalog(page_size=page_size)]
    tags = {repo: [tag async for tag in client.tags(repo, page_size=page_size)] for repo in repositories}
    return repositories, tags


def _assert_secret_kept(exc: BaseException, password: str) -> None:
    assert password not in str(exc)
    assert password not in repr(exc)
    assert password not in repr(getattr(exc, "context", {}))


# -- basic auth -----------------------------------------------------------------------


async def test_basic_auth_pulls_manifests_and_blobs_by_digest(basic_primary: Primary) -> None:
    async with basic_primary.client() as client:
        await client.ping()
        for item in basic_primary.pushed.values():
            await _pull_by_digest(client, item)


async def test_basic_auth_lists_catalog_and_tags_across_pages(basic_primary: Primary) -> None:
    async with basic_primary.client() as client:
        # One entry a page: distribution's Link header must be followed to see both repositories.
        repositories, tags = await _listing(client, page_size=1)
    assert repositories == sorted(basic_primary.pushed)
    assert {repo: sorted(found) for repo, found in tags.items()} == {
        repo: sorted(item.tags) for repo, item in basic_primary.pushed.items()
    }


async def test_basic_auth_absent_digest_is_not_found_not_refused(basic_primary: Primary) -> None:
    async with basic_primary.client() as client:
        with pytest.raises(NotFoundUpstream):
            await client.manifest(APP, Digest.of(b"never pushed"))


@pytest.mark.parametrize("password", ["wrong-" + secrets.token_urlsafe(12), None], ids=["wrong-password", "anonymous"])
async def test_basic_auth_refuses_bad_credentials_as_retriable(basic_primary: Primary, password: str | None) -> None:
    username = PULLER if password is not None else None
    async with basic_primary.client(username, password) as client:
        with pytest.raises(UpstreamUnavailable) as refused:
            await client.manifest(APP, basic_primary.pushed[APP].digest)
        # Wrong credentials are an operator's fix: the event must wait, not be dropped.
        assert refused.value.retriable
        assert "401" in str(refused.value)
        if password is not None:
            _assert_secret_kept(refused.value, password)
        with pytest.raises(UpstreamUnavailable):
            [repo async for repo in client.catalog()]


# -- bearer tokens ----------------------------------------------------------------------


async def test_bearer_pulls_through_the_token_flow_with_one_token_per_scope(bearer_primary: Primary) -> None:
    assert bearer_primary.tokens is not None
    before = len(bearer_primary.tokens.asked_by(PULLER))
    item = bearer_primary.pushed[APP]
    async with bearer_primary.client() as client:
        requests = await _pull_by_digest(client, item)
        requests += await _pull_by_digest(client, item)
        tags = [tag async for tag in client.tags(APP)]
    assert sorted(tags) == sorted(item.tags)
    assert requests == 2 * (1 + len(item.image.blobs))
    # All those requests and the tag list needed one scope: the first 401 fetched a token, the rest reused it.
    asked = bearer_primary.tokens.asked_by(PULLER)[before:]
    assert asked == [TokenRequest(PULLER, (f"repository:{APP}:pull",), granted=True)]


async def test_bearer_tokens_are_cached_per_scope(bearer_primary: Primary) -> None:
    assert bearer_primary.tokens is not None
    before = len(bearer_primary.tokens.asked_by(PULLER))
    async with bearer_primary.client() as client:
        for _ in range(2):
            for item in bearer_primary.pushed.values():
                await _pull_by_digest(client, item)
        repositories, _ = await _listing(client, page_size=1)
    assert repositories == sorted(bearer_primary.pushed)
    asked = [r.scopes for r in bearer_primary.tokens.asked_by(PULLER)[before:]]
    # One token per repository, one for the catalog: none fetched twice, whatever the page or pass.
    assert sorted(asked) == sorted(
        [(f"repository:{repo}:pull",) for repo in bearer_primary.pushed] + [("registry:catalog:*",)]
    )


@pytest.mark.parametrize("password", ["wrong-" + secrets.token_urlsafe(12), None], ids=["wrong-password", "anonymous"])
async def test_bearer_refused_token_is_retriable_and_keeps_the_secret(
    bearer_primary: Primary, password: str | None
) -> None:
    assert bearer_primary.tokens is not None
    username = PULLER if password is not None else None
    before = len(bearer_primary.tokens.requests)
    async with bearer_primary.client(username, password) as client:
        with pytest.raises(UpstreamUnavailable) as refused:
            await client.manifest(APP, bearer_primary.pushed[APP].digest)
    assert refused.value.retriable
    if password is not None:
        _assert_secret_kept(refused.value, password)
    # The token server, not the registry, said no: the client followed the challenge to it.
    assert [r.granted for r in bearer_primary.tokens.requests[before:]] == [False]
