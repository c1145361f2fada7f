"""A serve on "another host", reached the conventional way: the user's ``ssh`` runs
``capsa-tui serve --stdio`` there (a real OpenSSH server on loopback, tests/service/sshd.py).

The CLI (through a context) and the app's hub reach the serve's pools, consoles and flow log;
the ssh link dropping mid-console is said, the hub reconnects and the VM, held by the serve
for its grace period, is still the user's.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

import engine
from capsatui.hub import ServiceHub
from tests.service.profiles import BLOCKED, guarded
from tests.service.serve_process import ServeProcess, running_serve
from tests.service.sshd import REMOTE_COMMAND, Sshd, sshd  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.guest

REM = guarded("rem", "the remote host's pool")

@pytest.fixture(scope="module")
async def remote(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServeProcess]:
    root = tmp_path_factory.mktemp("remote")
    (root / "profiles").mkdir()
    (root / "profiles" / "rem.yaml").write_text(REM)
    async with running_serve(root, root / "run" / "pool.sock", "--warm", "rem=1", "--grace", "60") as serve:
        yield serve


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "capsatui.cli", *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_reaches_a_remote_serve_through_a_context(remote: ServeProcess, sshd: Sshd,
                                                                tmp_path: Any) -> None:
    env = {**sshd.env, "CAPSA_CONFIG_DIR": str(tmp_path), "CAPSA_SOCKET": str(tmp_path / "no-local.sock")}
    code, _, err = await _cli("context", "add", "box", f"ssh://{sshd.address(None).host}",
                              "--command", REMOTE_COMMAND, "--socket", str(remote.socket), env=env)
    assert code == 0, err
    code, out, err = await _cli("--host", "box", "pool", "status", "--json", env=env)
    assert code == 0, err
    status = json.loads(out)
    assert status["socket"].startswith("ssh://") and [p["name"] for p in status["pools"]] == ["rem"]
    code, out, err = await _cli("--host", "box", "run", "rem", "-v", "--", "echo", "from-$((40+2))", env=env)
    assert code == 0, err
    assert out.strip() == "from-$((40+2))" and "through its console" in err  # each word quoted, as typed
    # a remote with no serve there says so, in the remote's own words ($CAPSA_HOST names the context)
    code, _, err = await _cli("context", "add", "empty", f"ssh://{sshd.address(None).host}",
                              "--command", REMOTE_COMMAND, "--socket", str(tmp_path / "none.sock"), env=env)
    assert code == 0, err
    code, _, err = await _cli("pool", "status", env={**env, "CAPSA_HOST": "empty"})
    assert code != 0 and "no capsa-tui serve is running" in err and "none.sock" in err
    # a remote without capsa-tui on its PATH: ssh's own words
    code, _, err = await _cli("--host", f"ssh://{sshd.address(None).host}", "pool", "status", env=env)
    assert code == 2 and "capsa-tui: command not found" in err


async def test_the_app_hub_over_ssh_reaches_console_and_flows_and_survives_a_dropped_link(
    remote: ServeProcess, sshd: Sshd, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in sshd.env.items():
        monkeypatch.setenv(key, value)
    hub = ServiceHub(sshd.address(remote.socket), label="box")
    try:
        await hub.reload_profiles()
        state = next(s for s in hub.states() if s.name == "rem")
        assert state.running and hub.profile("rem") is not None and hub.where == "box"
        flows = hub.flow_events()
        waiting = asyncio.ensure_future(anext(flows))
        vm = await hub.reserve("rem", timeout=120)
        console = await vm.console()
        await console.run("echo kept > /tmp/mark", timeout=30)
        await console.run(f"timeout 5 wget -qO- http://{BLOCKED}/", timeout=40)
        event = await asyncio.wait_for(waiting, 30)
        assert event.action == "deny" and event.dst == BLOCKED and event.vm == vm.id

        client = hub.require_client()
        assert client._link.process is not None
        client._link.process.kill()  # the ssh link drops mid-console
        await asyncio.wait_for(_until(lambda: any("lost the serve at box" in (s.error or "") for s in hub.states())), 20)
        assert console.closed or await _closes(console)
        await asyncio.wait_for(_until(lambda: hub._client is not None and not any(s.error for s in hub.states())), 60)
        assert vm.lost is None and [v.id for v in hub.reserved()] == [vm.id]  # held for us by the serve
        again = await vm.console()
        assert again is not console
        result = await again.run("cat /tmp/mark", timeout=30)
        assert "kept" in result.output  # the same VM, after the link came back
        await hub.release(vm)
        await flows.aclose()
    finally:
        await hub.close()


async def _closes(console: engine.Console) -> bool:
    await asyncio.wait_for(_until(lambda: console.closed), 10)
    return True


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.05)


async def test_the_app_over_ssh_says_the_link_dropped_mid_console_and_carries_on(
    remote: ServeProcess, sshd: Sshd, monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
) -> None:
    from textual.widgets import DataTable, Static

    from capsatui.app import CapsaApp
    from capsatui.screens.console import ConsoleScreen

    for key, value in sshd.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path))
    hub = ServiceHub(sshd.address(remote.socket), label="box")
    app = CapsaApp(hub=hub, autostart=None)

    def lines() -> list[str]:
        screen = app.screen
        tab = screen.active_tab if isinstance(screen, ConsoleScreen) else None
        return tab.view.all_text().splitlines() if tab is not None else []

    def status() -> str:
        screen = app.screen
        tab = screen.active_tab if isinstance(screen, ConsoleScreen) else None
        return str(tab.query_one(".console-status", Static).render()) if tab is not None else ""

    async with app.run_test(size=(140, 40)) as pilot:
        table = app.dashboard.query_one("#pools", DataTable)
        await _pilot_until(pilot, lambda: any(str(row.value) == "rem" for row in table.rows), 60)
        await _pilot_until(pilot, lambda: any(s.name == "rem" and s.running for s in hub.states()), 60)
        table.move_cursor(row=table.get_row_index("rem"))
        await pilot.press("r")  # reserve: the console opens on the remote VM
        await _pilot_until(pilot, lambda: isinstance(app.screen, ConsoleScreen), 60)
        await _pilot_until(pilot, lambda: any(line.endswith("#") for line in lines()), 30)
        await pilot.press(*"echo", "space", *"before", "enter")
        await _pilot_until(pilot, lambda: "before" in lines(), 30)

        process = hub.require_client()._link.process
        assert process is not None
        process.kill()  # the ssh link drops mid-console
        await _pilot_until(pilot, lambda: any("reconnecting" in line for line in lines()), 20)
        await _pilot_until(pilot, lambda: "reconnected" in status(), 60)
        await pilot.press(*"echo", "space", *"after-$((1+1))", "enter")
        await _pilot_until(pilot, lambda: "after-2" in lines(), 30)  # the same VM, typed into again
        assert [vm.pool_name for vm in hub.reserved()] == ["rem"]
        await pilot.press("ctrl+right_square_bracket", "x")  # release
        await _pilot_until(pilot, lambda: not hub.reserved(), 30)
        await pilot.press("q")


async def _pilot_until(pilot: Any, predicate: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await pilot.pause(0.05)
