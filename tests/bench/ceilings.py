"""What this machine can do at most, measured in the same run: results are ratios to these.

- sha256 on one core (hashlib, large chunks);
- reading blobs from the primary registry (plain GETs, nothing written);
- writing to the regions' S3 servers (one multipart upload from memory per
  server, all servers at once: what replication to every region needs).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig

from tests.bench.harness import Bench

MB = 1e6
MiB = 1024 * 1024


def sha256_mb_s(total: int = 512 * MiB, chunk: int = 4 * MiB) -> float:
    data = os.urandom(chunk)
    hasher = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(total // chunk):
        hasher.update(data)
    return total / MB / (time.perf_counter() - started)


async def primary_read_mb_s(bench: Bench, blobs: list[tuple[str, str, int]], concurrency: int = 8) -> float:
    """GET every (repository, digest, size) from the primary, `concurrency` at a time; MB/s."""
    slots = asyncio.Semaphore(concurrency)
    total = 0

    async def get(session: aiohttp.ClientSession, repository: str, digest: str) -> None:
        nonlocal total
        async with slots, session.get(f"http://{bench.primary}/v2/{repository}/blobs/{digest}") as response:
            response.raise_for_status()
            async for chunk in response.content.iter_chunked(MiB):
                total += len(chunk)

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(get(session, repo, digest) for repo, digest, _ in blobs))
    return total / MB / (time.perf_counter() - started)


async def s3_write_mb_s(bench: Bench, size: int = 1024 * MiB, part: int = 16 * MiB, in_flight: int = 4) -> float:
    """One multipart upload of `size` bytes from memory into every region's server at once; MB/s together."""
    body = os.urandom(part)

    async def upload(region: dict[str, str]) -> float:
        async with aioboto3.Session().client(
            "s3", endpoint_url=region["s3"], aws_access_key_id=region["access_key"],
            aws_secret_access_key=region["secret_key"], region_name="us-east-1",
            config=AioConfig(s3={"addressing_style": "path"}, max_pool_connections=in_flight * 2),
        ) as s3:  # fmt: skip
            key = "bench/ceiling/upload"
            created = await s3.create_multipart_upload(Bucket=region["bucket"], Key=key)
            slots = asyncio.Semaphore(in_flight)

            async def put(number: int) -> dict[str, object]:
                async with slots:
                    answer = await s3.upload_part(
                        Bucket=region["bucket"], Key=key, UploadId=created["UploadId"], PartNumber=number, Body=body
                    )
                return {"PartNumber": number, "ETag": answer["ETag"]}

            parts = await asyncio.gather(*(put(n) for n in range(1, size // part + 1)))
            await s3.complete_multipart_upload(
                Bucket=region["bucket"], Key=key, UploadId=created["UploadId"], MultipartUpload={"Parts": parts}
            )
            finished = time.perf_counter()
            await s3.delete_object(Bucket=region["bucket"], Key=key)
            return finished

    started = time.perf_counter()
    finished = await asyncio.gather(*(upload(region) for region in bench.regions.values()))
    return size * len(bench.regions) / MB / (max(finished) - started)
