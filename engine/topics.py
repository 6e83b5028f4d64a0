"""Every Kafka topic and consumer group georep uses, named in this one module.

    topic                     key                    value              kept
    georep.events             <repository>           ReplicationEvent   retention (regions reconcile past it)
    georep.replication-log    <region>/<repository>  ReplicationRecord  retention
    georep.dead-letter        <region>/<repository>  DeadLetter         forever (until redriven)
    georep.replicas           <region>               signed definition  compacted
    georep.backfill           <region>               Checkpoint         compacted
    georep.reconcile          <region>/<partition>   ReconcilePass      compacted
    georep.api-leader         "api"                  ApiLeader          compacted

    group                          who
    georep.replicator.<region>     a region's replicators: they share the events topic's partitions
    georep.redrive.<region>        which of a region's dead letters were put back
    georep.api                     the API processes: the one assigned georep.api-leader's partition leads

Nothing else spells these names (a test checks): the topics are settings
(`kafka.*_topic`) whose defaults are these, and groups come from the functions.
"""

from __future__ import annotations

from typing import Final

EVENTS: Final = "georep.events"
REPLICATION_LOG: Final = "georep.replication-log"
DEAD_LETTER: Final = "georep.dead-letter"
REPLICAS: Final = "georep.replicas"
BACKFILL: Final = "georep.backfill"
RECONCILE: Final = "georep.reconcile"
LEADER: Final = "georep.api-leader"

#: every group georep uses starts with this (ACLs grant by this prefix)
GROUP_PREFIX: Final = "georep."
API_GROUP: Final = "georep.api"


def replicator_group(region: str) -> str:
    return f"georep.replicator.{region}"


def redrive_group(region: str) -> str:
    return f"georep.redrive.{region}"
