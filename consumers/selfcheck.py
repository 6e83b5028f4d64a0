"""`georep replicate --check`: can this process reach everything it needs?"""

from __future__ import annotations

from aiokafka.errors import KafkaError

from consumers.catalog import CatalogUnavailable
from consumers.regions import lookup_region
from consumers.registry import RegistryClient
from consumers.store import RegionStore
from engine.errors import GeorepError
from engine.settings import ConfigError, Settings
from producers.kafka import ensure_topics


async def check_region(settings: Settings, region: str) -> list[str]:
    problems: list[str] = []
    try:
        await ensure_topics(settings.kafka)
    except (KafkaError, OSError) as exc:
        problems.append(f"kafka {settings.kafka.bootstrap_servers}: {type(exc).__name__}: {exc}")
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
