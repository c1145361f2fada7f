"""LocalHub without the UI: profiles (good and broken), and a real pool's start/reserve/release/stop."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import engine
from tests.waiting import collect, until
from capsatui.hub import LocalHub, PoolState

TEST_PROFILE = "name: t\nmemory_mb: 192\npool:\n  size: 1\n  max_size: 2\n"


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user profile folder holding the small test profile ``t`` (and nothing from $HOME)."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "t.yaml").write_text(TEST_PROFILE)
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path))
    return folder


def state_of(hub: LocalHub, name: str) -> PoolState:
    return next(s for s in hub.states() if s.name == name)


async def test_profiles_good_and_broken(config_dir: Path) -> None:
    (config_dir / "broken.yaml").write_text("name: Bad Name\ncpus: 999\n")
    hub = LocalHub()
    changes: list[int] = []
    hub.subscribe(lambda: changes.append(1))
    await hub.reload_profiles()
    assert changes
    t = state_of(hub, "t")
    assert t.profile is not None and not t.running and t.error is None
    broken = state_of(hub, "broken.yaml")
    assert broken.profile is None and broken.error and "cpus" in broken.error
    assert hub.profile("default") is not None  # bundled profiles are there too
    with pytest.raises(engine.ConfigError):
        await hub.start_pool("broken.yaml")
    with pytest.raises(engine.ConfigError):
        await hub.reserve("t")  # not started
    assert hub.policy("t") is None  # no network
    with pytest.raises(engine.ConfigError):
        await hub.set_policy("t", engine.NetworkPolicy.allow_all())
    await hub.close()


async def test_missing_image_is_an_error_in_place(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*, build: bool = True) -> None:
        assert not build, "the hub must never build the image"
        raise engine.ImageError("the default guest image is not built yet: run `capsa-tui image build`")

    monkeypatch.setattr(engine, "default_image", missing)
    hub = LocalHub()
    await hub.reload_profiles()
    await hub.start_pool("t")
    await until(lambda: not state_of(hub, "t").starting, 10)
    t = state_of(hub, "t")
    assert not t.running and t.error and "capsa-tui image build" in t.error
    await hub.close()


@pytest.mark.guest
async def test_start_reserve_release_stop(boot: engine.LinuxDirectBoot, config_dir: Path) -> None:
    hub = LocalHub()
    await hub.reload_profiles()
    await hub.start_pool("t")
    assert state_of(hub, "t").starting  # returned at once: the pool boots in the background
    await until(lambda: state_of(hub, "t").running, 90.0)
    t = state_of(hub, "t")
    assert t.stats is not None and t.stats.idle == 1 and t.history_boot_s and t.members
    vm = await hub.reserve("t", timeout=60)
    assert hub.reserved() == [vm]
    assert state_of(hub, "t").stats.reserved == 1  # type: ignore[union-attr]
    await hub.release(vm)
    assert hub.reserved() == []
    await until(lambda: state_of(hub, "t").stats.reserved == 0, 90.0)  # type: ignore[union-attr]
    await hub.stop_pool("t")
    t = state_of(hub, "t")
    assert not t.running and not t.starting and t.stats is None
    await hub.close()
    await hub.close()  # idempotent


@pytest.mark.guest
async def test_close_while_starting_leaves_nothing(boot: engine.LinuxDirectBoot, config_dir: Path) -> None:
    hub = LocalHub()
    await hub.reload_profiles()
    await hub.start_pool("t")
    await asyncio.sleep(0.8)  # mid-boot
    await hub.close()
    assert not any(s.running or s.starting for s in hub.states())


NET_PROFILE = """name: n
memory_mb: 192
pool:
  size: 1
  max_size: 1
network:
  mode: user_nat
  policy:
    default: deny
"""


@pytest.mark.guest
async def test_flow_events_of_pool_vms_are_merged(boot: engine.LinuxDirectBoot, config_dir: Path) -> None:
    (config_dir / "n.yaml").write_text(NET_PROFILE)
    hub = LocalHub()
    await hub.reload_profiles()
    assert hub.policy("n") is not None and hub.policy("n").default == engine.PolicyAction.DENY  # type: ignore[union-attr]
    seen, collector = collect(hub.flow_events())
    try:
        await hub.start_pool("n")
        await until(lambda: state_of(hub, "n").running, 90.0)
        vm = await hub.reserve("n", timeout=60)
        console = await vm.console()
        assert (await console.run("timeout 10 nc 203.0.113.5 80 </dev/null", timeout=30)).exit_code != 0
        await until(lambda: any(e.dst == "203.0.113.5" and e.action == "deny" for e in seen), 10)
        assert any(e.vm and e.dst == "203.0.113.5" for e in hub.recent_events())
        allow = engine.NetworkPolicy.allow_all()
        await hub.set_policy("n", allow)  # a running pool: applied to its VMs now
        assert hub.policy("n") == allow
        await hub.release(vm)
    finally:
        await hub.close()
    await asyncio.wait_for(collector, 5)  # closing the hub ends every flow stream
