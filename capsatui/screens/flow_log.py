"""The flow log: every allow, deny and log decision of every VM's gateway, live.

Events come from ``hub.recent_events()`` (the backlog) and then ``hub.flow_events()`` in a
worker. The worker only queues them; a 100 ms timer appends the queue to the table in one go,
so a burst of thousands of events costs one repaint, not thousands. The screen keeps at most
``max_rows`` events (the oldest go) and rebuilds the table from them when a filter changes.
Denied flows are bold red; ``a`` on one opens the policy editor with an allow rule for it.
"""
from __future__ import annotations

import time
from collections import deque
from ipaddress import IPv4Address
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Input, Select, Static

import engine
from capsatui.hub.base import Hub
from capsatui.palette import BindingCommands
from capsatui.screens.help import Keys, binding_rows
from capsatui.screens.policy_editor import PolicyEditorScreen
from capsatui.widgets.key_footer import KeyFooter
from capsatui.widgets.live_table import LiveTable

MAX_ROWS = 5000
FLUSH_SECONDS = 0.1
ACTION_FILTERS = [("all actions", "all"), ("allow", "allow"), ("deny", "deny"), ("log", "log")]
STYLES = {"deny": "bold red", "log": "yellow", "allow": ""}


def allow_rule_for(event: engine.FlowEvent) -> engine.Rule:
    """An allow rule for what a denied event went to: its domain, else its address."""
    name = event.domain or ""
    try:
        IPv4Address(name)  # a Host header holding a bare address is no domain to allow
        name = ""
    except ValueError:
        pass
    if name:
        try:
            return engine.Rule(engine.PolicyAction.ALLOW, engine.MatchCriteria.domain(name))
        except engine.PolicyError:
            pass  # an odd name (the deny side matches those too); fall back to the address
    return engine.Rule(engine.PolicyAction.ALLOW, engine.MatchCriteria.ip(event.dst))


def pool_of_vm(hub: Hub, vm: str) -> str | None:
    """The pool whose member ran VM ``vm`` (a member's id, as a serve's flows name it, or the
    gateway's own ``vm-<qemu pid>``), if the hub knows."""
    states = getattr(hub, "states", None)
    if states is None:
        return None
    for state in states():
        for member in getattr(state, "members", []):
            if member.id == vm or (member.pid is not None and f"vm-{member.pid}" == vm):
                return str(state.name)
    return None


class FlowLogScreen(Screen[None]):
    """The live stream of network events with filters by VM, action and domain."""

    COMMANDS = {BindingCommands}
    HELP_TITLE = "Flow log (denied flows in bold red)"

    DEFAULT_CSS = """
    FlowLogScreen #flow-filters { height: 3; }
    FlowLogScreen #flow-domain { width: 2fr; }
    FlowLogScreen #flow-vm { width: 1fr; }
    FlowLogScreen #flow-action { width: 20; }
    FlowLogScreen #flow-table { height: 1fr; }
    FlowLogScreen #flow-status { height: 1; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("a", "allow", "Allow this (denied) destination",
                tooltip="On a denied flow: add an allow rule for its domain (or address) in the policy editor"),
        Binding("c", "clear", "Clear", tooltip="Clear the log"),
        Binding("slash", "focus_filter", "Filter", tooltip="Filter by domain (tab: by action, by VM)"),
        Binding("escape", "close", "Back", tooltip="Back to the dashboard"),
    ]

    @classmethod
    def help_keys(cls) -> Keys:
        return [*binding_rows(cls.BINDINGS), ("tab", "Move between the filters (domain, action, VM) and the log")]

    def __init__(self, hub: Hub, max_rows: int = MAX_ROWS) -> None:
        super().__init__()
        self.hub = hub
        self.max_rows = max_rows
        self.events: deque[tuple[int, engine.FlowEvent]] = deque(maxlen=max_rows)
        self._pending: list[engine.FlowEvent] = []
        self._next_id = 0
        self._shown: dict[str, engine.FlowEvent] = {}  # row key -> event, for the rows on screen
        self.total = 0
        self.denied = 0

    def compose(self) -> ComposeResult:
        with Horizontal(id="flow-filters"):
            yield Input(placeholder="domain contains…", id="flow-domain")
            yield Select(ACTION_FILTERS, value="all", allow_blank=False, id="flow-action")
            yield Input(placeholder="VM contains…", id="flow-vm")
        table: DataTable[Any] = LiveTable(id="flow-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("time", "VM", "action", "proto", "src → dst:port", "domain", "rule")
        yield table
        yield Static("", id="flow-status")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.set_interval(FLUSH_SECONDS, self.flush)
        self._follow()
        self.query_one("#flow-table", DataTable).focus()

    @work(exclusive=True, group="flow-log", exit_on_error=False)
    async def _follow(self) -> None:
        # Only queue here: the timer does the (comparatively slow) table work in batches.
        try:
            self._pending.extend(self.hub.recent_events())
            async for event in self.hub.flow_events():
                self._pending.append(event)
        except engine.EngineError as err:  # e.g. the service went away: say so, keep what we have
            self.query_one("#flow-status", Static).update(f"[red]the event stream stopped: {err}[/red]")

    # -- filtering and rows ---------------------------------------------------------------
    def _filters(self) -> tuple[object, str, str]:
        """The filter values, read once per batch (not once per event of a burst)."""
        return (self.query_one("#flow-action", Select).value,
                self.query_one("#flow-domain", Input).value.strip().lower(),
                self.query_one("#flow-vm", Input).value.strip().lower())

    @staticmethod
    def matches(event: engine.FlowEvent, filters: tuple[object, str, str]) -> bool:
        action, domain, vm = filters
        if action != "all" and event.action != action:
            return False
        if domain and domain not in (event.domain or "").lower():
            return False
        return not vm or vm in event.vm.lower()

    @staticmethod
    def cells(event: engine.FlowEvent) -> list[Text]:
        style = STYLES.get(event.action, "")
        when = time.strftime("%H:%M:%S", time.localtime(event.time)) + f".{int(event.time * 1000) % 1000:03d}"
        rule = event.rule + (f" — {event.detail}" if event.detail else "")
        values = [when, event.vm, event.action.upper(), event.protocol,
                  f"{event.src} → {event.dst}:{event.port}", event.domain or "", rule]
        return [Text(value, style=style) for value in values]

    def flush(self) -> None:
        """Move queued events into the log and the table (called by the timer)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        table = self.query_one("#flow-table", DataTable)
        at_end = table.cursor_row >= table.row_count - 1
        filters = self._filters()
        for event in batch:
            self._next_id += 1
            self.events.append((self._next_id, event))
            self.total += 1
            self.denied += event.action == "deny"
            if self.matches(event, filters):
                key = str(self._next_id)
                table.add_row(*self.cells(event), key=key)
                self._shown[key] = event
        self._trim(table)
        if at_end and table.row_count:
            table.move_cursor(row=table.row_count - 1)  # follow the stream unless the user scrolled up
        self._update_status()

    def _trim(self, table: DataTable[Any]) -> None:
        while table.row_count > self.max_rows:
            oldest = next(iter(table.rows))
            table.remove_row(oldest)
            self._shown.pop(str(oldest.value), None)

    def rebuild(self) -> None:
        """Show the kept events that pass the filters (after a filter changed)."""
        table = self.query_one("#flow-table", DataTable)
        table.clear()
        self._shown.clear()
        filters = self._filters()
        for ident, event in self.events:
            if self.matches(event, filters):
                key = str(ident)
                table.add_row(*self.cells(event), key=key)
                self._shown[key] = event
        if table.row_count:
            table.move_cursor(row=table.row_count - 1)
        self._update_status()

    def _update_status(self) -> None:
        shown = self.query_one("#flow-table", DataTable).row_count
        self.query_one("#flow-status", Static).update(
            f"{self.total} events, {self.denied} denied; showing {shown} (last {self.max_rows} kept)")

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id in ("flow-domain", "flow-vm"):
            self.rebuild()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "flow-action":
            self.rebuild()

    # -- actions --------------------------------------------------------------------------
    def selected_event(self) -> engine.FlowEvent | None:
        table = self.query_one("#flow-table", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return self._shown.get(str(key.value))

    def action_allow(self) -> None:
        event = self.selected_event()
        if event is None or event.action != "deny":
            self.notify("select a denied flow to allow its destination", severity="warning")
            return
        # None: the editor asks which pool (the VM may have gone, or come from elsewhere).
        editor = PolicyEditorScreen(self.hub, pool_of_vm(self.hub, event.vm), prefill_rule=allow_rule_for(event))
        self.app.push_screen(editor)

    def action_clear(self) -> None:
        self.events.clear()
        self.total = self.denied = 0
        self.rebuild()

    def action_focus_filter(self) -> None:
        self.query_one("#flow-domain", Input).focus()

    def action_close(self) -> None:
        self.dismiss()
