"""Where reconciliation gets the primary's repositories: the catalog, Harbor's API, or a configured list; and the
clear error when the primary will not list them.

Harbor cannot run here (it needs Docker), so its API is played by a server that answers the documented shape
(`GET /api/v2.0/projects`, `GET /api/v2.0/projects/{name}/repositories`, `page` and `page_size`, basic auth).
The registry client under test is the real one.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from adapters.registry import RegistryClient
from consumers.reconcile import CatalogClosed, list_repositories
from engine.names import Repository
from engine.settings import PrimarySettings, ReconcileSettings

USER, PASSWORD = "robot$georep", "harbor-robot-secret"
PROJECTS = {f"team-{i}": [f"team-{i}/app-{j}" for j in range(i + 1)] for i in range(4)}  # 1+2+3+4 repositories


def _page(items: list[Any], request: web.Request, *, total: bool) -> web.Response:
    """One page, as Harbor serves it: at most 2 items whatever was asked (a server's own cap), and the total."""
    page, size = int(request.query.get("page", "1")), min(int(request.query.get("page_size", "10")), 2)
    headers = {"X-Total-Count": str(len(items))} if total else {}
    return web.json_response(items[(page - 1) * size : page * size], headers=headers)


def _authorized(request: web.Request) -> bool:
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return request.headers.get("Authorization") == expected


@pytest.fixture
async def harbor() -> AsyncIterator[str]:
    async def projects(request: web.Request) -> web.Response:
        if not _authorized(request):
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        return _page([{"name": name, "project_id": i} for i, name in enumerate(PROJECTS)], request, total=True)

    async def repositories(request: web.Request) -> web.Response:
        if not _authorized(request):
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        names = PROJECTS.get(request.match_info["project"], [])
        # Without X-Total-Count here: the client reads until an empty page.
        return _page([{"name": name, "artifact_count": 1} for name in names], request, total=False)

    async def catalog(_: web.Request) -> web.Response:
        # Harbor answers the catalog only to administrators.
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "unauthorized to list catalog"}]},
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="harbor"'},
        )

    app = web.Application()
    app.router.add_get("/api/v2.0/projects", projects)
    app.router.add_get("/api/v2.0/projects/{project}/repositories", repositories)
    app.router.add_get("/v2/_catalog", catalog)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def listed(url: str, source: ReconcileSettings) -> list[Repository]:
    settings = PrimarySettings(url=url, username=USER, password=SecretStr(PASSWORD))
    async with RegistryClient.session(settings) as session:
        return await list_repositories(source, RegistryClient(settings, session))


async def test_harbor_lists_every_project_and_its_repositories_page_by_page(harbor: str) -> None:
    found = await listed(harbor, ReconcileSettings(repositories="harbor"))
    assert [r.name for r in found] == sorted(name for names in PROJECTS.values() for name in names)


async def test_a_closed_catalog_names_the_settings_that_open_another_way(harbor: str) -> None:
    with pytest.raises(CatalogClosed) as refused:
        await listed(harbor, ReconcileSettings(repositories="catalog"))
    message = str(refused.value)
    assert "/v2/_catalog (HTTP 401)" in message
    assert 'reconcile.repositories = "harbor"' in message
    assert "reconcile.repository_list" in message


async def test_a_configured_list_needs_no_listing_at_all() -> None:
    source = ReconcileSettings(repositories="list", repository_list=("team/b", "team/a"))
    assert [r.name for r in await listed("http://127.0.0.1:9", source)] == ["team/a", "team/b"]
