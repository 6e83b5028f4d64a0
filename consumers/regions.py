"""Where a region's settings come from: the replicas topic, or a region pinned in the config file."""

from __future__ import annotations

from pathlib import Path

from adapters.compacted import CompactedView, following, replica_view
from engine.credentials import resolve_credentials
from engine.logconfig import register_secrets
from engine.replicas import ReplicaDefinition
from engine.settings import ConfigError, RegionSettings, Settings


def region_settings(definition: ReplicaDefinition, credentials_dir: Path | None) -> RegionSettings:
    """A replica's bucket settings with its keys resolved here, where they are used."""
    keys = resolve_credentials(definition.credentials_ref, directory=credentials_dir)
    if keys is not None:
        register_secrets([keys.secret_key])
    return RegionSettings(
        endpoint=definition.endpoint,
        bucket=definition.bucket,
        prefix=definition.prefix,
        access_key=None if keys is None else keys.access_key,
        secret_key=None if keys is None else keys.secret_key,
        default_chain=keys is None,
        s3_region=definition.s3_region,
        registry=definition.registry,
    )


def known(settings: Settings, catalog: CompactedView[ReplicaDefinition]) -> str:
    return ", ".join(sorted({*settings.regions, *catalog.values})) or "none"


async def lookup_region(settings: Settings, name: str, role: str) -> tuple[RegionSettings, ReplicaDefinition | None]:
    """A region's settings (and its replica definition, unless pinned in the config file) for a one-shot
    command such as verify; a ConfigError if nobody defined it."""
    if name in settings.regions:
        return settings.region(name), None
    async with following(replica_view(settings.kafka, role, settings.replicas.verifier())) as catalog:
        definition = catalog.values.get(name)
        if definition is None:
            raise ConfigError(
                f"region {name!r} is neither a replica nor in the config file (known: {known(settings, catalog)})"
            )
        return region_settings(definition, settings.replicator.credentials_dir), definition
