"""What fault tests share: raw access to a region's bucket, and waiting on conditions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from engine.layout import Layout
from tests.faults.conftest import Faults

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

MiB = 1024 * 1024


@asynccontextmanager
async def bucket(faults: Faults, region: str) -> AsyncIterator[S3Client]:
    """A plain S3 client on the region's server, for looking at what is really there."""
    r = faults.regions[region]
    async with aioboto3.Session().client(
        "s3", endpoint_url=r["s3"], aws_access_key_id=r["access_key"], aws_secret_access_key=r["secret_key"],
        region_name="us-east-1", config=AioConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    ) as s3:  # fmt: skip
        yield s3


def layout(faults: Faults, region: str) -> Layout:
    return Layout(faults.regions[region]["prefix"])


async def size_of(s3: S3Client, bucket_name: str, key: str) -> int | None:
    try:
        head = await s3.head_object(Bucket=bucket_name, Key=key)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise
    return int(head["ContentLength"])


async def uploads(s3: S3Client, bucket_name: str, prefix: str = "") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    async for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket_name, Prefix=prefix):
        found += page.get("Uploads", [])
    return found
