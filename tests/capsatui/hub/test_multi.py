"""MultiHub: two serves' pools in one dashboard, each under its host, every action routed to it.

Two real PoolServers (no VMs: their profiles are listed, not started) stand for two hosts.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable

import engine
from capsatui.app import CapsaApp
from capsatui.hub import MultiHub, ServiceHub


def _profile(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"# {name}\nname: {name}\nboot: default\npool: {{size: 1, max_size: 2}}\n")
    return path


@pytest.fixture
async def two_hosts(tmp_path: Path) -> AsyncIterator[MultiHub]:
    servers = []
    hubs: dict[str, ServiceHub] = {}
    for host, names in (("east", ["web", "db"]), ("west", ["web"])):
        paths = [_profile(tmp_path / host, name) for name in names]
        registry = engine.PoolRegistry(profiles=lambda paths=paths: [engine.load_profile(p) for p in paths])
        await registry.reload()
        server = engine.PoolServer(path=tmp_path / host / "pool.sock", registry=registry)
        await server.start()
        servers.append(server)
        hubs[host] = ServiceHub(server.path, label=host)
    multi = MultiHub(dict(hubs))
    try:
        yield multi
    finally:
        await multi.close()
        for server in servers:
            await server.close()


async def test_each_pool_shows_under_its_host_and_actions_go_there(two_hosts: MultiHub) -> None:
    await two_hosts.reload_profiles()
    names = sorted(state.name for state in two_hosts.states())
    assert names == ["east/db", "east/web", "west/web"]
    assert two_hosts.profile("west/web") is not None and two_hosts.profile("west/db") is None
    assert two_hosts.where == "east, west" and "east: " in two_hosts.accel
    with pytest.raises(engine.ServiceError, match="no pool or profile 'db'"):
        await two_hosts.stop_pool("west/db")  # west has no db: the error is west's own
    with pytest.raises(engine.ConfigError, match="no host 'north'"):
        await two_hosts.start_pool("north/web")
    with pytest.raises(engine.ConfigError, match="no host"):
        await two_hosts.reserve("web")  # a bare name says which host it is not


async def test_the_dashboard_lists_both_hosts(two_hosts: MultiHub) -> None:
    app = CapsaApp(hub=two_hosts, autostart=None)
    async with app.run_test(size=(160, 30)) as pilot:
        table: DataTable[Any] = app.dashboard.query_one("#pools", DataTable)
        for _ in range(200):
            if table.row_count == 3:
                break
            await pilot.pause(0.05)
        keys = sorted(str(row.value) for row in table.rows)
        assert keys == ["east/db", "east/web", "west/web"]
        assert "attached to serve at east, west" in app.sub_title
        await pilot.press("q")
    await asyncio.sleep(0)
