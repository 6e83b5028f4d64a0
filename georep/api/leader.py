"""Which georep API process leads: the one Kafka gives the only partition of `georep.api-leader`, in the
consumer group `georep.api`.

Every API process serves reads from its own log store and the topics. Replica changes, backfills and the
restoring of overwritten definitions run on the leader alone: a follower forwards a change to the leader's URL,
which the leader writes to the same compacted topic as it takes over. A leader that stops (SIGTERM) leaves the
group at once; one that dies is replaced when Kafka's session timeout (`SESSION_TIMEOUT_MS`) expires.

Every rebalance first revokes the partition, even from the member that keeps it (the assignment is sticky), so
the leader pauses then: it takes no new change and lets the one under way finish before the rebalance goes on.
If the partition comes back, it goes on leading, its backfills untouched; if not, it steps down (its backfills
are cancelled) before the new leader's assignment completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from prometheus_client import Gauge

from adapters.compacted import CompactedView
from adapters.kafka import KAFKA_ERRORS, Publisher, new_consumer, started
from adapters.runtime import retry_until_stopped, unless_stopped
from engine import topics
from engine.events import Message, utcnow
from engine.settings import KafkaSettings

log = structlog.get_logger(__name__)

#: how long a dead leader keeps its partition: Kafka's floor (group.min.session.timeout.ms) is 6 s
SESSION_TIMEOUT_MS: Final = 6000
HEARTBEAT_MS: Final = 1500
KEY: Final = b"api"

LEADING = Gauge("georep_api_leading", "1 while this georep API process leads (runs replica changes and backfills)")


class ApiLeader(Message):
    """The leader's announcement on georep.api-leader: where followers forward changes to."""

    member: str
    url: str
    since: datetime


class Leadership:
    """Joins the group, tells whether this process leads, and where the leader answers when it does not."""

    def __init__(
        self,
        kafka: KafkaSettings,
        url: str,
        publisher: Publisher,
        on_lead: Callable[[], Awaitable[None]],
        on_step_down: Callable[[], Awaitable[None]],
        on_pause: Callable[[], Awaitable[None]],
    ) -> None:
        self.kafka = kafka
        self.url = url
        self.member = f"{socket.gethostname()}:{os.getpid()}"
        #: takes changes now; false during a rebalance, even for the process that keeps the lead
        self.leading = False
        #: runs the leader's work (backfills, the definitions' guard): from election to stepping down
        self._held = False
        self.announcements: CompactedView[ApiLeader] = CompactedView(
            kafka, kafka.leader_topic, ApiLeader.from_json, "api"
        )
        self._publisher = publisher
        self._on_lead = on_lead
        self._on_step_down = on_step_down
        self._on_pause = on_pause

    def leader_url(self) -> str | None:
        """The URL of the process that leads now, as it announced itself; None if that is this one or unknown."""
        announced = self.announcements.values.get(KEY.decode())
        if self.leading or announced is None or announced.member == self.member:
            return None
        return announced.url

    async def run(self, stop: asyncio.Event) -> None:
        follow = asyncio.create_task(self.announcements.run(stop), name="leader-announcements")
        try:
            consumer = await retry_until_stopped(self._join, KAFKA_ERRORS, stop, "leader.kafka_unavailable")
            if consumer is None:
                return
            try:
                # Polling keeps the membership alive (max.poll.interval); the records themselves are the view's.
                while not stop.is_set():
                    with contextlib.suppress(*KAFKA_ERRORS):
                        await unless_stopped(consumer.getmany(timeout_ms=1000), stop)
            finally:
                # Leaving the group hands the partition over now, not after the session timeout.
                with contextlib.suppress(*KAFKA_ERRORS):
                    await consumer.stop()
                await self._step_down()
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow

    async def _join(self) -> AIOKafkaConsumer:
        consumer = new_consumer(
            self.kafka, "api-leader", self.kafka.leader_topic, group=topics.API_GROUP,
            listener=_Listener(self), session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=HEARTBEAT_MS,
            # Sticky: a process joining (or coming back) does not take the lead from one that has it.
            partition_assignment_strategy=(StickyPartitionAssignor,),
        )  # fmt: skip
        return await started(consumer)

    async def _pause(self) -> None:
        """A rebalance begins (Kafka revokes every partition first, even from the member that will keep it):
        take no new change, and let the one under way finish before the partition can go to anyone else."""
        if self.leading:
            self.leading = False
            await self._on_pause()

    async def _assigned(self, leads: bool) -> None:
        if leads and self._held:
            self.leading = True  # kept the lead through the rebalance (the assignment is sticky)
        elif leads:
            await self._lead()
        else:
            await self._step_down()

    async def _lead(self) -> None:
        self._held = self.leading = True
        LEADING.set(1)
        log.info("leader.elected", member=self.member, url=self.url)
        announcement = ApiLeader(member=self.member, url=self.url, since=utcnow())
        try:
            await self._publisher.publish(
                self.kafka.leader_topic, [(KEY, announcement.to_json())], self.kafka.request_timeout_ms / 1000
            )
        except KAFKA_ERRORS as exc:
            # Followers keep forwarding to the old URL and retrying until this one is written (next election).
            log.warning("leader.announce_failed", error=str(exc))
        await self._on_lead()

    async def _step_down(self) -> None:
        self.leading = False
        if not self._held:
            return
        self._held = False
        LEADING.set(0)
        log.info("leader.stepped_down", member=self.member)
        await self._on_step_down()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, leadership: Leadership) -> None:
        self._leadership = leadership

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self._leadership._pause()

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        await self._leadership._assigned(bool(assigned))
