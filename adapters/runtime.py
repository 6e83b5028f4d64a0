"""What every georep service process shares: signals, its HTTP listener, metrics, retries."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type, wait_exponential_jitter

log = structlog.get_logger(__name__)
T = TypeVar("T")
#: retries logged at info before they are logged as warnings
QUIET_ATTEMPTS = 3


async def metrics_handler(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, so that services drain instead of dying mid-copy."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    return stop


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("process.stopping", signal=sig.name)
    stop.set()


async def start_http(
    app: web.Application,
    host: str,
    port: int,
    *,
    header_timeout_s: float | None = None,
    max_connections: int | None = None,
) -> web.AppRunner:
    """Serve `app`. `header_timeout_s`: a connection that has not sent a whole request (headers) by then, or sits
    idle that long, is closed (a slow-headers client cannot hold it open). `max_connections`: connections past
    that many are closed at once."""
    options: dict[str, Any] = {} if header_timeout_s is None else {"keepalive_timeout": header_timeout_s}
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **options)
    await runner.setup()
    if max_connections is not None and runner.server is not None:
        _limit(runner.server, max_connections)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("http.listening", host=host, port=port)
    return runner


def _limit(server: web.Server, most: int) -> None:
    """Close a new connection while `most` are open (aiohttp has no such setting; its hook is wrapped)."""
    admit = server.connection_made

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        if len(server.connections) >= most:
            log.warning("http.connection_refused", open=len(server.connections), limit=most)
            transport.close()
            return
        admit(handler, transport)

    server.connection_made = connection_made  # type: ignore[method-assign]


async def in_slices(items: Iterable[T], size: int = 250) -> list[T]:
    """`items` as a list, letting other tasks run after every `size` of them.

    For CPU-bound work over a big batch on the event loop (decoding, building rows): done in one go, 5,000
    log records held the loop for about 100 ms, and every HTTP answer waiting on it for as long.
    """
    done: list[T] = []
    for item in items:
        done.append(item)
        if len(done) % size == 0:
            await asyncio.sleep(0)
    return done


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None (with `work` cancelled) if `stop` is set first.

    Lets a long poll or a backoff end as soon as the process is asked to stop,
    instead of when its timeout runs out.
    """
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopped):
            if not pending.done():
                pending.cancel()
        await asyncio.gather(task, stopped, return_exceptions=True)
    if task.done() and not task.cancelled():
        return task.result()
    return None


async def retry_until_stopped(
    work: Callable[[], Coroutine[Any, Any, T]],
    errors: tuple[type[BaseException], ...],
    stop: asyncio.Event,
    event: str,
    *,
    initial_s: float = 0.5,
    max_s: float = 30.0,
) -> T | None:
    """`work()`, retried with jittered exponential backoff on `errors` until it succeeds; None once `stop` is set.

    `work` must be declared `async def`: tenacity awaits only what it recognises as a
    coroutine function (a lambda returning a coroutine would go unawaited).
    """

    async def sleep(seconds: float) -> None:
        await unless_stopped(asyncio.sleep(seconds), stop)

    def warn(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        # A first miss or two is routine (a broker restarting); a run of them is worth a warning.
        say = log.warning if state.attempt_number >= QUIET_ATTEMPTS else log.info
        say(event, attempt=state.attempt_number, error=repr(error), retry_in_s=round(state.upcoming_sleep, 2))

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_exponential_jitter(multiplier=initial_s, max=max_s),
        stop=lambda _: stop.is_set(),
        sleep=sleep,
        before_sleep=warn,
    )
    try:
        return await unless_stopped(retrying(work), stop)
    except RetryError:
        return None
