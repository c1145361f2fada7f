"""The app attached to a real ``capsa-tui serve`` (protocol v2): pilot tests of the dashboard,
the policy editor and the flow log over the wire, and the hub's faults (a serve that goes and
comes back, a link that drops).

One serve process serves the module: ``svc`` (a busybox VM behind a deny-all gateway, warm) and
``spare`` (started, resized and stopped from the dashboard).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

import engine
from capsatui.app import CapsaApp
from capsatui.hub import LocalHub, ServiceHub, make_hub
from capsatui.screens.flow_log import FlowLogScreen
from capsatui.screens.policy_editor import PolicyEditorScreen
from capsatui.widgets.rule_form import RuleForm
from tests.service.profiles import BLOCKED, guarded, plain
from tests.service.serve_process import ServeProcess, running_serve

SIZE = (160, 40)
SVC = guarded("svc", "the svc pool (this comment must survive the editor's save over the wire)")
SPARE = plain("spare")

@pytest.fixture(scope="module")
async def serve(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServeProcess]:
    root = tmp_path_factory.mktemp("apphub")
    (root / "profiles").mkdir()
    (root / "profiles" / "svc.yaml").write_text(SVC)
    (root / "profiles" / "spare.yaml").write_text(SPARE)
    async with running_serve(root, root / "run" / "pool.sock", "--warm", "svc=1", "--grace", "30") as serve:
        yield serve


@pytest.fixture
def attached(serve: ServeProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ServeProcess:
    monkeypatch.setenv("CAPSA_SOCKET", str(serve.socket))
    # the app's own profiles folder is empty: everything it shows comes from the serve
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path / "app-config"))
    return serve


def pools(app: CapsaApp) -> DataTable[Any]:
    return app.dashboard.query_one("#pools", DataTable)


def cell(app: CapsaApp, row: str, column: str) -> str:
    try:
        return str(pools(app).get_cell(row, column))
    except Exception:  # the row is not drawn yet
        return ""


async def wait_for(pilot: Pilot[Any], predicate: Callable[[], bool], timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await pilot.pause(0.05)


def flow_rows(table: DataTable[Any]) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


@pytest.mark.guest
async def test_the_dashboard_starts_resizes_and_stops_a_served_pool(attached: ServeProcess) -> None:
    hub = make_hub()
    assert isinstance(hub, ServiceHub)
    app = CapsaApp(hub=hub, autostart=None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: cell(app, "svc", "state") == "running", 30, "svc shown running")
        assert "attached to serve" in app.sub_title and str(attached.socket) in app.sub_title
        assert cell(app, "spare", "state") == "stopped" and hub.profile("spare") is not None
        pools(app).move_cursor(row=pools(app).get_row_index("spare"))
        await pilot.press("s")
        await wait_for(pilot, lambda: cell(app, "spare", "state") == "running" and cell(app, "spare", "idle") == "1",
                       what="spare started on the serve")
        await pilot.press("z")
        await pilot.pause()
        await pilot.press("backspace", "0", "enter")
        await wait_for(pilot, lambda: cell(app, "spare", "idle") == "0", 60, "spare resized to 0")
        await pilot.press("x")
        await wait_for(pilot, lambda: cell(app, "spare", "state") == "stopped", 60, "spare stopped")
        await pilot.press("q")
    await attached.wait_logged("event=pool_stopped pool=spare")


@pytest.mark.guest
async def test_a_denied_flow_turns_allowed_after_the_editor_applies_and_saves(attached: ServeProcess) -> None:
    profile_file = attached.config_dir / "profiles" / "svc.yaml"
    hub = make_hub()
    app = CapsaApp(hub=hub, autostart=None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: cell(app, "svc", "state") == "running", 30, "svc shown running")
        vm = await hub.reserve("svc", timeout=120)
        console = await vm.console()
        log = FlowLogScreen(hub)
        await app.push_screen(log)
        table = log.query_one("#flow-table", DataTable)
        result = await console.run(f"timeout 5 wget -qO- http://{BLOCKED}/", timeout=40)
        assert result.exit_code != 0
        await wait_for(pilot, lambda: any(r[2] == "DENY" and f"{BLOCKED}:80" in r[4] for r in flow_rows(table)),
                       30, "the deny in the flow log")
        deny_row = next(i for i, r in enumerate(flow_rows(table)) if r[2] == "DENY" and f"{BLOCKED}:80" in r[4])
        table.move_cursor(row=deny_row)
        table.focus()
        await pilot.press("a")  # allow this destination: the editor opens on svc, the rule prefilled
        await wait_for(pilot, lambda: isinstance(app.screen, RuleForm), 10, "the prefilled rule form")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, PolicyEditorScreen), 10, "back in the editor")
        editor = app.screen
        assert isinstance(editor, PolicyEditorScreen) and editor.pool_name == "svc"
        assert any(BLOCKED in rule.describe() for rule in editor.policy.rules)
        editor.query_one("#policy-rules", DataTable).focus()
        await pilot.press("p")  # apply to the served pool
        await wait_for(pilot, lambda: "applied to pool svc" in str(editor.query_one("#policy-status").render()),
                       20, "applied")
        await pilot.press("s")  # save into the serve's profile file
        await wait_for(pilot, lambda: "saved to" in str(editor.query_one("#policy-status").render()), 20, "saved")
        assert f"on {hub.where}" in str(editor.query_one("#policy-status").render())
        text = profile_file.read_text()
        assert BLOCKED in text and "this comment must survive" in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is log, 10, "back in the flow log")
        await console.run(f"timeout 5 wget -qO- http://{BLOCKED}/", timeout=40)
        await wait_for(pilot, lambda: any(r[2] == "ALLOW" and f"{BLOCKED}:80" in r[4] for r in flow_rows(table)),
                       30, "the same destination allowed")
        await hub.release(vm)
        # the serve runs the saved policy from now on; put the file back for the other tests
        await hub.save_policy("svc", engine.NetworkPolicy.deny_all().allow_dns())
        await hub.set_policy("svc", engine.NetworkPolicy.deny_all().allow_dns())
        await pilot.press("escape")
        await pilot.press("q")


@pytest.mark.guest
async def test_a_served_vms_console_reaches_the_app_and_its_missing_agent_is_said(attached: ServeProcess) -> None:
    hub = ServiceHub(attached.socket)
    try:
        await hub.reload_profiles()
        vm = await hub.reserve("svc", timeout=120)
        assert not vm.has_agent
        with pytest.raises(engine.AgentUnavailable, match="runs no guest agent"):
            await vm.agent()
        console = await vm.console()
        assert isinstance(console, engine.Console)  # the engine's own, over the attachment
        result = await console.run("echo $((2+3))", timeout=30)
        assert result.exit_code == 0 and "5" in result.output
        await hub.release(vm)
        assert hub.reserved() == []
    finally:
        await hub.close()


async def test_the_hub_says_the_serve_went_and_reconnects_when_it_is_back(tmp_path: Path) -> None:
    path = tmp_path / "pool.sock"
    server = engine.PoolServer([], path)
    await server.start()
    hub = ServiceHub(path)
    try:
        await hub.reload_profiles()
        assert not any(s.error for s in hub.states())
        await server.close()
        await asyncio.wait_for(_until(lambda: any("lost the serve" in (s.error or "") for s in hub.states())), 10)
        server = engine.PoolServer([], path)
        await server.start()
        await asyncio.wait_for(_until(lambda: not any(s.error for s in hub.states())), 15)
        assert server.connection_count == 1
    finally:
        await hub.close()
        await server.close()


async def test_make_hub_without_server_is_local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAPSA_SOCKET", str(tmp_path / "nobody.sock"))
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path))
    hub = make_hub()
    try:
        assert isinstance(hub, LocalHub)
    finally:
        await hub.close()


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.05)
