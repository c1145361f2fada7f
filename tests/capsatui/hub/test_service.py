"""ServiceHub against a real PoolServer: make_hub's choice, states, reserve + console, release, gaps."""
from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import engine
from tests.waiting import pool_settled, until
from capsatui.app import CapsaApp
from capsatui.hub import LocalHub, ServiceHub, make_hub

POOL = "svc"


@pytest.fixture(scope="module")
async def served(boot: engine.LinuxDirectBoot) -> AsyncIterator[tuple[engine.VmPool, engine.PoolServer]]:
    folder = Path(tempfile.mkdtemp(prefix="svchub-"))
    pool = await engine.vm_pool(boot).memory_mb(192).console_enabled().name(POOL).max_size(2).build(1)
    server = engine.PoolServer([pool], folder / "pool.sock")
    try:
        await server.start()
        yield pool, server
    finally:
        await server.close()
        await pool.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def env(served: tuple[engine.VmPool, engine.PoolServer], monkeypatch: pytest.MonkeyPatch,
              tmp_path: Path) -> AsyncIterator[tuple[engine.VmPool, engine.PoolServer]]:
    pool, server = served
    monkeypatch.setenv("CAPSA_SOCKET", str(server.path))
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path / "config"))
    await until(lambda: pool_settled(pool), what="pool settled before the test")
    yield served
    await until(lambda: server.connection_count == 0, 10, "connections closed")
    await until(lambda: pool_settled(pool), what="pool settled after the test")


def _state(hub: ServiceHub):  # type: ignore[no-untyped-def]
    return next(s for s in hub.states() if s.name == POOL)


@pytest.mark.guest
async def test_service_hub_reserve_console_release(env: tuple[engine.VmPool, engine.PoolServer]) -> None:
    hub = make_hub()
    assert isinstance(hub, ServiceHub) and hub.mode == "service"
    try:
        await hub.reload_profiles()  # connects
        state = _state(hub)
        assert state.running and state.stats is not None and state.stats.idle == 1
        assert hub.recent_events() == [] and hub.policy(POOL) is None
        with pytest.raises(engine.ConfigError, match="capsa-tui serve"):
            await hub.start_pool("not-served")
        with pytest.raises(engine.ConfigError, match="start/stop them there"):
            await hub.stop_pool(POOL)
        with pytest.raises(engine.ConfigError):
            await hub.resize(POOL, 2)

        vm = await hub.reserve(POOL, timeout=60)
        assert [v.id for v in hub.reserved()] == [vm.id]
        assert vm.pool_name == POOL and vm.pid is not None and vm.status() == "reserved"
        # No agent over the service protocol yet: the VM says so instead of pretending.
        assert not vm.has_agent and hub.agent_gap is not None and "issue 17" in hub.agent_gap
        with pytest.raises(engine.AgentUnavailable, match="issue 17"):
            await vm.agent()
        console = await vm.console()
        assert isinstance(console, engine.Console)  # the engine's own, over the attachment
        waiting = asyncio.create_task(console.wait_for("via-svc", 30))
        await asyncio.sleep(0)
        await console.write(b"echo via-svc\n")
        assert "via-svc" in await waiting
        result = await console.run("echo $((2+3))", timeout=30)
        assert result.exit_code == 0 and "5" in result.output
        assert b"via-svc" in console.scrollback()
        with pytest.raises(engine.ConsoleTimeout):
            await console.wait_for("never-printed-xyz", 0.3)

        reader = console.reader(from_start=True)
        first = await anext(aiter(reader))
        assert first  # the backlog from the start

        await hub.release(vm)
        assert hub.reserved() == []
        await until(lambda: _state(hub).stats.reserved == 0, 10, "reserved back to 0")  # type: ignore[union-attr]
    finally:
        await hub.close()


async def test_make_hub_without_server_is_local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAPSA_SOCKET", str(tmp_path / "nobody.sock"))
    hub = make_hub()
    try:
        assert isinstance(hub, LocalHub)
    finally:
        await hub.close()


@pytest.mark.guest
async def test_app_title_says_attached(env: tuple[engine.VmPool, engine.PoolServer]) -> None:
    _, server = env
    app = CapsaApp(hub=make_hub(), autostart=None)
    async with app.run_test() as pilot:
        await pilot.pause()
        assert app.hub.mode == "service"
        assert "serve" in app.sub_title and str(server.path) in app.sub_title
        await until(lambda: any(s.name == POOL for s in app.hub.states()), 10, "served pool listed")
        await pilot.press("q")
