"""Where each part of a local stack listens, derived from one base port.

Two stacks run side by side when their bases are at least 200 apart (each
SeaweedFS also opens gRPC ports at +10000, so keep bases below 55000).
"""

from __future__ import annotations

from dataclasses import dataclass

GRPC_OFFSET = 10_000
REGION_STRIDE = 20


@dataclass(frozen=True, slots=True)
class Ports:
    base: int

    @property
    def kafka(self) -> int:
        return self.base

    @property
    def kafka_controller(self) -> int:
        return self.base + 1

    @property
    def primary(self) -> int:
        return self.base + 10

    @property
    def webhook(self) -> int:
        return self.base + 20

    @property
    def logstore(self) -> int:
        return self.base + 21

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
