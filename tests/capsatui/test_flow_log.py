"""The flow log: live events, filters, denied rows, and "allow this" into the policy editor.

Most tests feed ``engine.FlowEvent`` objects through a fake hub; one boots a real guest whose
``wget`` is denied by its gateway and shows that deny in the log.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Select

import engine
from capsatui.screens.flow_log import FlowLogScreen, allow_rule_for
from capsatui.screens.policy_editor import PolicyEditorScreen
from capsatui.widgets.rule_form import RuleForm
from tests.capsatui.screen_text import wait_shown
from tests.capsatui.test_policy_editor import PROFILE, FakeHub, ScreenApp


@dataclass
class Member:
    pid: int | None
    id: str = "guarded-1"


@dataclass
class State:
    name: str
    members: list[Member] = field(default_factory=list)


class StreamHub(FakeHub):
    """A fake hub whose flow_events() yields what the test puts in its queue."""

    def __init__(self, profiles: dict[str, engine.Profile]) -> None:
        super().__init__(profiles)
        self.queue: asyncio.Queue[engine.FlowEvent] = asyncio.Queue()
        self.pools: list[State] = []

    def states(self) -> list[State]:
        return self.pools

    async def flow_events(self) -> AsyncIterator[engine.FlowEvent]:
        while True:
            yield await self.queue.get()


def event(action: str, domain: str | None, vm: str = "vm-101", dst: str = "203.0.113.5", port: int = 443,
          protocol: str = "tcp") -> engine.FlowEvent:
    rule = {"allow": "allow protocol tcp and port 443", "deny": "default deny", "log": "log any"}[action]
    return engine.FlowEvent(time.time(), vm, protocol, "10.0.2.15", dst, port, domain, rule, action)


def rows(table: DataTable[Any]) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def wait_for(pilot: Any, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting for the screen"
        await pilot.pause(0.05)


@pytest.fixture
def profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> engine.Profile:
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "guarded.yaml").write_text(PROFILE, encoding="utf-8")
    return engine.find_profile("guarded")


async def test_filter_by_action_and_allow_a_denied_domain(profile: engine.Profile) -> None:
    hub = StreamHub({"guarded": profile})
    hub.pools = [State("guarded", [Member(101)])]
    hub.events = [event("allow", "deb.debian.org")]  # the backlog a freshly opened log shows
    log = FlowLogScreen(hub)
    app = ScreenApp(log)
    async with app.run_test(size=(140, 40)) as pilot:
        table = log.query_one("#flow-table", DataTable)
        for e in (event("deny", "x.evil.test"), event("log", None), event("deny", "tracker.test", port=80),
                  event("allow", "github.com")):
            hub.queue.put_nowait(e)
        await wait_for(pilot, lambda: table.row_count == 5)
        assert [r[2] for r in rows(table)] == ["ALLOW", "DENY", "LOG", "DENY", "ALLOW"]
        denied_cell = table.get_row_at(1)[2]
        assert "bold" in str(denied_cell.style) and "red" in str(denied_cell.style)  # denied rows stand out

        # By domain (a part of it, any case), then by VM, then both cleared.
        await pilot.click("#flow-domain")
        await pilot.press(*"EVIL")
        await wait_for(pilot, lambda: [r[5] for r in rows(table)] == ["x.evil.test"])
        await pilot.press("ctrl+u")
        hub.queue.put_nowait(event("allow", "other.test", vm="vm-202"))
        await wait_for(pilot, lambda: table.row_count == 6)
        await pilot.click("#flow-vm")
        await pilot.press(*"202")
        await wait_for(pilot, lambda: [(r[1], r[5]) for r in rows(table)] == [("vm-202", "other.test")])
        await pilot.press("ctrl+u")
        await wait_for(pilot, lambda: table.row_count == 6)

        log.query_one("#flow-action", Select).value = "deny"
        await pilot.pause()
        assert [(r[2], r[5]) for r in rows(table)] == [("DENY", "x.evil.test"), ("DENY", "tracker.test")]
        hub.queue.put_nowait(event("allow", "later.test"))  # new events respect the filter too
        hub.queue.put_nowait(event("deny", "later.evil.test"))
        await wait_for(pilot, lambda: table.row_count == 3)
        assert rows(table)[-1][5] == "later.evil.test"

        table.focus()
        table.move_cursor(row=0)
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleForm))
        form = app.screen
        assert isinstance(form, RuleForm)
        assert form.rule == engine.Rule(engine.PolicyAction.ALLOW, engine.MatchCriteria.domain("x.evil.test"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, PolicyEditorScreen))
        editor = app.screen
        assert isinstance(editor, PolicyEditorScreen)
        assert editor.pool_name == "guarded"  # vm-101 is a member of the guarded pool
        assert editor.policy.rules[-1].describe() == "allow domain x.evil.test"


async def test_unknown_vm_asks_which_pool(profile: engine.Profile) -> None:
    hub = StreamHub({"guarded": profile})
    hub.pools = [State("guarded", [])]
    hub.events = [event("deny", None, vm="vm-999", dst="198.51.100.9", port=22)]
    log = FlowLogScreen(hub)
    app = ScreenApp(log)
    async with app.run_test(size=(140, 40)) as pilot:
        table = log.query_one("#flow-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1)
        await pilot.press("a")
        await pilot.pause()
        await pilot.press("enter")  # the pool picker: the first (only) pool
        await wait_for(pilot, lambda: isinstance(app.screen, RuleForm))
        form = app.screen
        assert isinstance(form, RuleForm)
        assert form.rule is not None and form.rule.describe() == "allow ip 198.51.100.9"


def test_allow_rule_for_a_bare_address_host() -> None:
    e = event("deny", "203.0.113.9", dst="203.0.113.9")
    assert allow_rule_for(e).describe() == "allow ip 203.0.113.9"


class VmHub:
    """A tiny hub over one VM: its network_events() are the whole stream."""

    def __init__(self, vm: engine.VmHandle) -> None:
        self.queue: asyncio.Queue[engine.FlowEvent] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect(vm.network_events()))

    async def _collect(self, events: AsyncIterator[engine.FlowEvent]) -> None:
        # Subscribed at once, so nothing the guest does after this is missed.
        async for e in events:
            self.queue.put_nowait(e)

    def recent_events(self) -> list[engine.FlowEvent]:
        return []

    async def flow_events(self) -> AsyncIterator[engine.FlowEvent]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        self._task.cancel()


@pytest.mark.guest
async def test_real_guest_denied_wget_shows_in_the_log(boot: engine.LinuxDirectBoot) -> None:
    network = (engine.NetworkMode.user_nat().dns_upstream("127.0.0.1:9")
               .policy(engine.NetworkPolicy.deny_all().allow_dns()).build())
    vm = await engine.vm(boot).memory_mb(192).network(network).console_enabled().build()
    hub: VmHub | None = None
    try:
        hub = VmHub(vm)
        await vm.wait_ready(60)
        console = await vm.console()
        log = FlowLogScreen(hub)
        app = ScreenApp(log)
        async with app.run_test(size=(140, 40)) as pilot:
            result = await console.run("timeout 10 wget -qO- http://203.0.113.7/", timeout=40)
            assert result.exit_code != 0, result.output  # denied: no packet left the host
            table = log.query_one("#flow-table", DataTable)

            def denied_row() -> bool:
                return any(r[2] == "DENY" and "203.0.113.7:80" in r[4] for r in rows(table))
            await wait_for(pilot, denied_row)
            log.query_one("#flow-action", Select).value = "deny"
            await pilot.pause()
            assert rows(table) and all(r[2] == "DENY" for r in rows(table))
    finally:
        if hub is not None:
            hub.close()
        await vm.kill()


# 12:00:00 local time on a fixed day, so the time column is the same in every time zone.
NOON = time.mktime((2025, 1, 2, 12, 0, 0, 0, 0, -1))


def test_flow_log_snapshot(snap_compare: Any, profile: engine.Profile) -> None:
    synthetic = [
        engine.FlowEvent(NOON + 0.125, "vm-101", "dns", "10.0.2.15", "10.0.2.3", 53, "deb.debian.org",
                         "allow protocol udp and port 53", "allow", "A allow"),
        engine.FlowEvent(NOON + 0.250, "vm-101", "tcp", "10.0.2.15", "203.0.113.5", 443, "deb.debian.org",
                         "allow protocol tcp and port 443", "allow"),
        engine.FlowEvent(NOON + 1.5, "vm-102", "tcp", "10.0.2.15", "203.0.113.7", 80, None,
                         "default deny", "deny"),
        engine.FlowEvent(NOON + 2.0, "vm-102", "tcp", "10.0.2.15", "198.51.100.9", 443, "x.evil.test",
                         "deny domain *.evil.test", "deny"),
        engine.FlowEvent(NOON + 3.0, "vm-101", "udp", "10.0.2.15", "198.51.100.1", 123, None, "log any", "log"),
    ]
    hub = StreamHub({"guarded": profile})
    hub.events = synthetic[:2]  # the backlog a freshly opened log shows, then the live stream
    log = FlowLogScreen(hub)

    async def shown(pilot: Any) -> None:
        for e in synthetic[2:]:
            hub.queue.put_nowait(e)
        table = log.query_one("#flow-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == len(synthetic) and table.cursor_row == len(synthetic) - 1
                       and "5 events, 2 denied" in str(log.query_one("#flow-status").render()))
        # The drawn rows, each at its settled column widths (see tests/capsatui/screen_text.py).
        await wait_shown(pilot, r"^ 12:00:00\.125 +vm-101 +ALLOW +dns +10\.0\.2\.15 → 10\.0\.2\.3:53 +deb\.debian\.org ",
                         r"^ 12:00:03\.000 +vm-101 +LOG +udp .* log any", "5 events, 2 denied")
        await pilot.pause()

    assert snap_compare(ScreenApp(log), terminal_size=(130, 16), run_before=shown)
