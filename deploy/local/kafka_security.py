"""Kafka principals and ACLs for georep's roles: one SCRAM user per role, each allowed what its role needs.

    principal               may
    webhook                 write georep.events
    api                     write georep.replicas, georep.backfill, georep.events, georep.api-leader; read every topic;
                            read and describe groups georep.* (the API's leader group, replicator offsets)
    replicator-<region>     read georep.events and georep.replicas; write georep.replication-log,
                            georep.dead-letter, georep.reconcile and georep.events (its repairs); use only
                            its own group georep.replicator.<region>
    admin                   super user: creates topics, principals and ACLs; the operator's CLI

Nothing else is allowed (`allow.everyone.if.no.acl.found=false`): a client without credentials is refused, and
a replicator cannot write a replica definition. aiokafka 0.14 has no client calls for SCRAM users or ACLs, but
ships their protocol messages; this module sends those with the admin's connection. Production sets the same
table through its Kafka operator (deploy/k8s/kafka: Strimzi KafkaUser resources).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactBytes,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

from engine import topics
from engine.settings import KafkaSettings

#: Kafka's protocol codes (org.apache.kafka.common.acl / resource)
_RESOURCE: Final = {"topic": 2, "group": 3}
_PATTERN: Final = {"literal": 3, "prefixed": 4}
_OPERATION: Final = {"read": 3, "write": 4, "describe": 8}
_ALLOW: Final = 3
_SCRAM_SHA_512: Final = 2
SCRAM_ITERATIONS: Final = 8192


@dataclass(frozen=True, slots=True)
class Acl:
    principal: str
    resource: str  # topic | group
    name: str
    operation: str  # read | write | describe
    pattern: str = "literal"

    def __str__(self) -> str:
        pattern = "" if self.pattern == "literal" else f" ({self.pattern})"
        return f"User:{self.principal} may {self.operation} {self.resource} {self.name}{pattern}"


def role_acls(kafka: KafkaSettings, role: str) -> list[Acl]:
    """What `role` (webhook, api, replicator-<region>) may do, and nothing more."""
    if role == "webhook":
        return [Acl(role, "topic", kafka.events_topic, "write")]
    if role == "api":
        writes = [
            Acl(role, "topic", t, "write")
            for t in (kafka.replicas_topic, kafka.backfill_topic, kafka.events_topic, kafka.leader_topic)
        ]
        reads = [Acl(role, "topic", "*", op) for op in ("read", "describe")]
        groups = [Acl(role, "group", topics.GROUP_PREFIX, op, "prefixed") for op in ("read", "describe")]
        return writes + reads + groups
    if role.startswith("replicator-"):
        region = role.removeprefix("replicator-")
        reads = [Acl(role, "topic", t, "read") for t in (kafka.events_topic, kafka.replicas_topic)]
        writes = [
            Acl(role, "topic", t, "write")
            for t in (kafka.log_topic, kafka.dead_letter_topic, kafka.reconcile_topic, kafka.events_topic)
        ]
        return [*reads, *writes, Acl(role, "group", topics.replicator_group(region), "read")]
    raise ValueError(f"no ACLs for role {role!r}: webhook, api or replicator-<region>")


class _ScramResponse(Response):  # type: ignore[misc]  # aiokafka's protocol types are untyped
    API_KEY = 51
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", CompactArray(("user", CompactString("utf-8")), ("error_code", Int16),
                                 ("error_message", CompactString("utf-8")), ("tags", TaggedFields))),
        ("tags", TaggedFields),
    )  # fmt: skip


class _ScramRequestV0(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 51
    API_VERSION = 0
    RESPONSE_TYPE = _ScramResponse
    SCHEMA = Schema(
        ("deletions", CompactArray(("name", CompactString("utf-8")), ("mechanism", Int8), ("tags", TaggedFields))),
        ("upsertions", CompactArray(("name", CompactString("utf-8")), ("mechanism", Int8), ("iterations", Int32),
                                    ("salt", CompactBytes), ("salted_password", CompactBytes), ("tags", TaggedFields))),
        ("tags", TaggedFields),
    )  # fmt: skip


class _ScramRequest(Request[_ScramRequestV0]):  # type: ignore[misc]
    """AlterUserScramCredentials: a user's SCRAM-SHA-512 secret, salted here (the password never travels)."""

    API_KEY = 51

    def __init__(self, user: str, password: str) -> None:
        salt = os.urandom(32)
        salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, SCRAM_ITERATIONS)
        self.upsertion: tuple[object, ...] = (user, _SCRAM_SHA_512, SCRAM_ITERATIONS, salt, salted, {})

    def build(self, cls: Any) -> Any:
        return cls([], [self.upsertion], {})


async def add_principal(admin: AIOKafkaAdminClient, kafka: KafkaSettings, role: str, password: str) -> list[Acl]:
    """Create (or reset) `role`'s SCRAM user and grant its ACLs, with a started admin client of a super user."""
    answer = await admin._send_request(_ScramRequest(role, password))
    for user, code, message, _ in answer.results:
        if code:
            raise for_code(code)(f"SCRAM user {user}: {message}")
    granted = role_acls(kafka, role)
    for acl in granted:
        request = CreateAclsRequest(
            _RESOURCE[acl.resource], acl.name, _PATTERN[acl.pattern], f"User:{acl.principal}", "*",
            _OPERATION[acl.operation], _ALLOW,
        )  # fmt: skip
        response = await admin._send_request(request)
        for code, message in response.creation_responses:
            if code:
                raise for_code(code)(f"{acl}: {message}")
    return granted
