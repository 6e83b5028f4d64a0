"""A region's small-object requests (HEAD, GET, PUT, DELETE of one key) and key listings through obstore, the
Python binding of Rust's `object_store`: the replicator's hot path, and the listings reconciliation makes for
every repository it checks.

A new image costs about a dozen such requests per region. Through aiobotocore each spends about 1 ms of the
replicator's CPU (endpoint rules, user agent, signing, XML) — more than the S3 server spends answering it;
through obstore about a tenth of that (measured: `make bench`, cpu_per_image). aiobotocore keeps what obstore
cannot do: multipart uploads that complete only if the key is absent, listing and aborting open uploads, and
checking the bucket (adapters/store.py). A listing costs aiobotocore more still (about 2.5 ms for a page of a
few keys: it parses every key's timestamp with dateutil), obstore about 0.4 ms.

obstore's own retries are cut to one: the replicator retries a whole event with backoff, as it does for
aiobotocore's failures. A missing key is the builtin FileNotFoundError (an OSError), so it is told apart
before any other OSError becomes StorageUnavailable.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import botocore.session
import obstore
from obstore.exceptions import AlreadyExistsError
from obstore.exceptions import BaseError as ObjectStoreError
from obstore.store import S3Store

from engine.errors import StorageUnavailable
from engine.settings import RegionSettings

if TYPE_CHECKING:
    from obstore import ObjectMeta
    from obstore.store import S3Credential

#: keys per page of a listing: what one ListObjectsV2 request returns at most
LIST_PAGE: Final = 1000

_RETRY: Final[Any] = {
    "max_retries": 1,
    "retry_timeout": timedelta(seconds=60),
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2), "base": 2},
}


def use_io_threads(count: int) -> None:
    """Run obstore's requests on `count` threads. Its Rust runtime (tokio) is built on the first request and
    reads its size from the environment then, so this must come before any request of the process."""
    os.environ["TOKIO_WORKER_THREADS"] = str(count)


class SmallObjects:
    def __init__(self, store: S3Store) -> None:
        self._store = store

    @classmethod
    def for_region(cls, region: RegionSettings, connections: int) -> SmallObjects:
        # Everything said here: obstore would otherwise also read AWS_* variables of the environment.
        options: dict[str, Any] = {
            "endpoint": region.endpoint,
            "region": region.s3_region,
            "virtual_hosted_style_request": False,
            # The bytes were verified against their digest already: no second sha256 of the payload.
            "unsigned_payload": True,
            # One DELETE per key: a bulk POST ?delete for one key would need its XML body hashed too.
            "disable_bulk_delete": True,
        }
        client: Any = {
            "allow_http": region.endpoint.startswith("http://"),
            "pool_max_idle_per_host": str(connections),
            "connect_timeout": "5s",
            "timeout": "60s",
        }
        if region.default_chain:
            return cls(
                S3Store(
                    region.bucket, **options, client_options=client, retry_config=_RETRY,
                    credential_provider=_default_chain,
                )
            )  # fmt: skip
        access_key, secret_key = region.credentials()
        return cls(
            S3Store(
                region.bucket, **options, access_key_id=access_key, secret_access_key=secret_key,
                client_options=client, retry_config=_RETRY,
            )
        )  # fmt: skip

    async def size(self, key: str) -> int | None:
        try:
            with _errors(key):
                meta = await obstore.head_async(self._store, key)
        except FileNotFoundError:
            return None
        return int(meta["size"])

    async def get(self, key: str) -> bytes | None:
        try:
            with _errors(key):
                result = await obstore.get_async(self._store, key)
                return bytes(await result.bytes_async())
        except FileNotFoundError:
            return None

    async def put(self, key: str, body: bytes | bytearray | memoryview, *, if_absent: bool) -> bool:
        """Write `body`; with `if_absent` (`If-None-Match: *`) an existing key is left alone. True if written."""
        try:
            with _errors(key):
                await obstore.put_async(self._store, key, body, mode="create" if if_absent else "overwrite")
        except AlreadyExistsError:
            return False
        return True

    async def delete(self, key: str) -> None:
        with _errors(key):
            await obstore.delete_async(self._store, key)

    async def pages(self, prefix: str) -> AsyncIterator[Sequence[ObjectMeta]]:
        """Every object under `prefix` (a folder: empty, or ending in "/"), a page at a time; each page is
        requested when it is asked for."""
        if prefix and not prefix.endswith("/"):
            # object_store lists path segments: "a/b" would mean "a/b/", not every key that starts with "a/b".
            raise ValueError(f"a listing prefix is a folder and ends in '/': {prefix!r}")
        stream = obstore.list(self._store, prefix or None, chunk_size=LIST_PAGE)
        while True:
            with _errors(prefix or "the bucket"):
                try:
                    page = await anext(stream)
                except StopAsyncIteration:
                    return
            yield page


@contextmanager
def _errors(key: str) -> Iterator[None]:
    """A missing key (FileNotFoundError) and a create that found the key (AlreadyExistsError) reach the caller
    as they are; any other failure becomes StorageUnavailable."""
    try:
        yield
    except (FileNotFoundError, AlreadyExistsError):
        raise
    except (ObjectStoreError, OSError) as exc:
        raise StorageUnavailable(f"object store failed on {key}: {type(exc).__name__}: {exc}", key=key) from exc


async def _default_chain() -> S3Credential:
    """Keys from the AWS SDK's default chain (environment, shared file, web identity / IRSA, container and
    instance roles), as botocore resolves and refreshes them; read off the event loop (a refresh is I/O)."""
    return await asyncio.to_thread(_resolve)


def _resolve() -> S3Credential:
    found = botocore.session.get_session().get_credentials()
    if found is None:
        raise StorageUnavailable("no AWS credentials found by the default chain (credentials_ref aws:default)")
    frozen = found.get_frozen_credentials()
    expiry = getattr(found, "_expiry_time", None)  # refreshable credentials only
    return {
        "access_key_id": frozen.access_key,
        "secret_access_key": frozen.secret_key,
        "token": frozen.token,
        "expires_at": expiry,
    }
