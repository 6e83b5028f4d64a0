"""`georep replicate --check`: can this process reach everything it needs?"""

from __future__ import annotations

from adapters.kafka import KAFKA_ERRORS, ClusterProbe
from adapters.registry import RegistryClient
from adapters.store import RegionStore
from consumers.regions import lookup_region
from engine.errors import CatalogUnavailable, GeorepError
from engine.settings import ConfigError, Settings


async def check_region(settings: Settings, region: str) -> list[str]:
    problems: list[str] = []
    probe = ClusterProbe(settings.kafka, f"replicator-{region}")
    try:
        await probe()
    except KAFKA_ERRORS as exc:
        problems.append(f"kafka {settings.kafka.bootstrap_servers}: {type(exc).__name__}: {exc}")
    finally:
        await probe.close()
    async with RegistryClient.session(settings.primary) as session:
        try:
            await RegistryClient(settings.primary, session).ping()
        except GeorepError as exc:
            problems.append(f"primary {settings.primary.url}: {exc}")
    try:
        region_settings, _ = await lookup_region(settings, region, f"check-{region}")
    except (ConfigError, CatalogUnavailable) as exc:
        return [*problems, f"region {region}: {exc}"]
    async with RegionStore.open(region_settings) as store:
        try:
            await store.check()
        except GeorepError as exc:
            problems.append(f"region {region} bucket {region_settings.bucket}: {exc}")
    return problems
