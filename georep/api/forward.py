"""A change sent to an API process that does not lead is forwarded to the one that does.

The leader's URL comes from its announcement on `georep.api-leader` (georep.api.leader). While there is none,
or the one announced does not answer (it just died, the group is electing another), the change waits and is
tried again, up to `FORWARD_WAIT_S`; then it gets 503 `no-leader`, and nothing was changed. A forwarded
request carries `FORWARDED`, so that it is never forwarded twice: a process that received one without
leading answers 503 and the sender tries again.

A change whose answer is lost on the way back (the leader died after doing it) may be tried again by the
sender and then meet its own result: a create answers 409, a delete 404.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import aiohttp
import orjson
import structlog
from aiohttp import web

from georep.api.leader import Leadership

log = structlog.get_logger(__name__)

FORWARDED: Final = "X-Georep-Forwarded"
#: longer than an election after a leader's death (Kafka's session timeout, 6 s, plus a rebalance)
FORWARD_WAIT_S: Final = 30.0
_RETRY_S: Final = 0.5
_PASSED_ON: Final = ("Authorization", "Content-Type")


class Forwarder:
    def __init__(self, leadership: Leadership, wait_s: float = FORWARD_WAIT_S) -> None:
        self.leadership = leadership
        self.wait_s = wait_s
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: web.Request) -> web.Response | None:
        """The leader's answer to `request`; None once this process leads (the caller serves it here)."""
        body = await request.read()
        headers = {name: request.headers[name] for name in _PASSED_ON if name in request.headers}
        deadline = time.monotonic() + self.wait_s
        last = "no georep API process has announced itself as the leader"
        while time.monotonic() < deadline:
            if self.leadership.leading:
                return None
            url = self.leadership.leader_url()
            if url is not None:
                try:
                    status, answer, content_type = await self._send(
                        request.method, url + request.path_qs, body, headers
                    )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = f"the leader at {url} did not answer: {type(exc).__name__}: {exc}"
                else:
                    if status != 503:
                        return web.Response(status=status, body=answer, content_type=content_type)
                    last = f"the leader at {url} answered 503: {answer[:300].decode(errors='replace')}"
            await asyncio.sleep(_RETRY_S)
        log.warning("api.no_leader", path=request.path, waited_s=self.wait_s, last=last)
        return None if self.leadership.leading else _no_leader(f"{last} (waited {self.wait_s:g}s); try again")

    async def _send(self, method: str, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60, connect=3))
        async with self._session.request(method, url, data=body, headers=headers | {FORWARDED: "1"}) as response:
            return response.status, await response.read(), response.content_type


def _no_leader(reason: str) -> web.Response:
    return web.Response(
        status=503, body=orjson.dumps({"error": "no-leader", "reason": reason}), content_type="application/json"
    )
