"""A reverse proxy in front of the primary registry that corrupts one blob.

    python -m tests.faults.proxy --listen 127.0.0.1:25090 --upstream http://127.0.0.1:25010 --corrupt sha256:…

Every request is passed through unchanged, except a GET of the blob `--corrupt`,
whose body arrives with one byte flipped (same length, same headers): what a
bad disk or a broken middlebox does. The replicator must notice and write nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


def make_app(upstream: str, corrupt: str) -> web.Application:
    async def forward(request: web.Request) -> web.StreamResponse:
        session = request.app[SESSION]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with session.request(
            request.method, upstream + request.path_qs, headers=headers, data=body or None, allow_redirects=False
        ) as answer:
            payload = await answer.read()
            flip = request.method == "GET" and request.path.endswith(f"/blobs/{corrupt}") and payload
            if flip:
                middle = len(payload) // 2
                payload = payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1 :]
            out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=answer.status, headers=out, body=payload)

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app[SESSION].close()

    app = web.Application(client_max_size=1 << 30)
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--corrupt", required=True, help="digest of the blob whose bytes get flipped")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    web.run_app(make_app(args.upstream.rstrip("/"), args.corrupt), host=host, port=int(port), print=None)


if __name__ == "__main__":
    main()
