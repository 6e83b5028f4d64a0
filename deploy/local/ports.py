"""Where each part of a local stack listens: every port inside [base, base + 200), so stacks whose bases are
200 or more apart never collide.

    base + 0, 1           Kafka node 0: clients (SASL_SSL), controller (mutual TLS)
    base + 2, 3 / 4, 5    Kafka nodes 1 and 2, when the stack runs three (KAFKA_BROKERS=3)
    base + 10             the primary registry
    base + 20, 21         georep's webhook, the georep API
    base + 22, 23, 24     more georep API processes, when the stack runs them (API_PROCESSES=2)
    base + 25, 26         more webhook processes, when the stack runs them
    base + 30 + i         region i's replicator (health, metrics)
    base + 50 + i         region i's read-only registry
    base + 100 + 20 i     region i's SeaweedFS: S3 (+0), master (+1), filer (+2), volume (+3), admin (+4),
                          and their gRPC ports (+10 .. +14)
"""

from __future__ import annotations

from dataclasses import dataclass

REGION_STRIDE = 20
#: SeaweedFS's gRPC ports, from each server's own port; inside the region's block (weed's default is +10000,
#: which lands on the ports of a stack 10,000 above)
GRPC_OFFSET = 10
SPAN = 200


@dataclass(frozen=True, slots=True)
class Ports:
    base: int

    def kafka_node(self, index: int) -> tuple[int, int]:
        """(client port, controller port) of Kafka node `index`."""
        return self.base + 2 * index, self.base + 2 * index + 1

    @property
    def kafka(self) -> int:
        return self.kafka_node(0)[0]

    @property
    def primary(self) -> int:
        return self.base + 10

    def webhook(self, index: int = 0) -> int:
        return self.base + 20 if index == 0 else self.base + 24 + index

    def logstore(self, index: int = 0) -> int:
        return self.base + 21 + index

    def replicator(self, index: int) -> int:
        return self.base + 30 + index

    def registry(self, index: int) -> int:
        return self.base + 50 + index

    def seaweed(self, index: int) -> dict[str, int]:
        """The ports of one `weed mini`: S3 first, then every internal server it runs."""
        first = self.base + 100 + REGION_STRIDE * index
        http = {"s3": first, "master": first + 1, "filer": first + 2, "volume": first + 3, "admin": first + 4}
        grpc = {f"{name}.grpc": port + GRPC_OFFSET for name, port in http.items()}
        return http | grpc
