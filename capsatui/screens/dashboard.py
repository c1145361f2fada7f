"""The dashboard: every profile's pool, live, the reserved VMs, and the actions on both.

Redraws are driven by the hub's change callbacks, debounced to at most ``MAX_REDRAWS_PER_S``:
a change arms one ``loop.call_later``; nothing runs (no timer, no polling) while nothing changes.
Cells are updated in place (``DataTable.update_cell``) so a redraw never clears the table.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Header, Input, Label, Sparkline, Static

import engine
from capsatui.hub import Hub, PoolState
from capsatui.widgets.key_footer import KeyFooter
from capsatui.widgets.live_table import LiveTable

MAX_REDRAWS_PER_S = 4

# (key, action, footer label, what it does) — the bindings, the help screen and the command
# palette are all built from this one table so they cannot disagree.
ACTIONS: list[tuple[str, str, str, str]] = [
    ("s", "start", "Start", "Start the selected profile's pool (size from the profile)"),
    ("x", "stop", "Stop", "Stop the selected pool (kills its VMs, reserved ones too)"),
    ("z", "resize", "Resize", "Keep another number of VMs warm in the selected pool (reserved ones stay)"),
    ("r", "reserve", "Reserve", "Reserve a VM of the selected pool (starting it if stopped) and open its console"),
    ("c", "console", "Console", "Reopen the console of the selected reserved VM"),
    ("l", "release", "Release", "Release the selected reserved VM (it is killed; the pool boots a new one)"),
    ("p", "policy", "Policy", "Edit the network policy of the selected pool"),
    ("f", "flow_log", "Flow log", "Open the log of network flows of every VM"),
    ("ctrl+r", "reload", "Reload", "Read the profile files again"),
]

COLUMNS = [
    ("profile", "Profile"), ("state", "State"), ("agent", "Agent"), ("idle", "Idle"), ("booting", "Booting"),
    ("reserved", "Reserved"), ("max", "Max"), ("created", "Created"), ("evicted", "Evicted"),
    ("failed", "Failed"), ("misses", "Misses"), ("p50", "Boot p50"), ("p95", "Boot p95"),
    ("accel", "Accel"), ("error", "Error"),
]  # fmt: skip
RESERVED_COLUMNS = [("vm", "VM"), ("pool", "Pool"), ("pid", "PID"), ("status", "Status"), ("agent", "Agent")]


def agent_cell(has_agent: bool | None, gap: str | None) -> Text:
    """Whether commands run through the guest agent ("agent") or the console's shell."""
    if has_agent is None:
        return Text("-", style="dim")
    if has_agent:
        # A served sandbox runs the agent, but this side reaches only its console.
        return Text("agent, not over serve", style="yellow") if gap else Text("agent", style="green")
    return Text("console (serve)" if gap else "console", style="dim")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def state_label(state: PoolState) -> Text:
    if state.profile is None and not state.running and not state.starting:
        return Text("invalid", style="bold red")
    if state.starting:
        idle = state.stats.idle if state.stats else 0
        return Text(f"starting {idle}/{state.size}", style="yellow")
    if state.running:
        return Text("running", style="green")
    return Text("failed", style="red") if state.error else Text("stopped", style="dim")


def cluster_of(state: PoolState) -> str | None:
    """The cluster network the pool's VMs join, or None (no profile, no network, no cluster)."""
    network = state.profile.network if state.profile is not None else None
    return network.cluster if isinstance(network, engine.UserNatConfig) else None


def row_cells(state: PoolState, accel: str, agent_gap: str | None = None) -> list[Any]:
    """The table cells of one pool, in COLUMNS order."""
    s = state.stats
    error = Text((state.error or "").splitlines()[0][:80] if state.error else "", style="red")
    if s is None:
        max_size = state.profile.max_size if state.profile else "-"
        counts: list[Any] = ["-", "-", "-", max_size, "-", "-", "-", "-", "-", "-"]
    else:
        counts = [s.idle, s.booting, s.reserved, s.max_size, s.created, s.evicted, s.failed, s.misses,
                  _seconds(s.boot_p50_s), _seconds(s.boot_p95_s)]  # fmt: skip
    active = state.running or state.starting
    cluster = cluster_of(state)
    name: Any = state.name if cluster is None else Text.assemble(state.name, (f" [{cluster}]", "cyan"))
    return [name, state_label(state), agent_cell(state.has_agent, agent_gap), *[str(c) for c in counts],
            accel if active else "", error]


def refill_text(stats: engine.PoolStats) -> Text:
    """How the pool makes fresh VMs: snapshot clones (and their state) or cold boots."""
    if stats.snapshot == "off":
        return Text("refill: cold boots\n", style="dim")
    line = Text("refill: snapshot clones, ")
    style = {"ready": "green", "preparing": "yellow", "failed": "red"}.get(stats.snapshot, "")
    label = {"ready": "template ready", "preparing": "building the template", "failed": "off, booting cold"}
    line.append(label.get(stats.snapshot, stats.snapshot), style=style)
    line.append(f"; {stats.waiting_clones} waiting, {stats.fallbacks} cold fallbacks\n")
    if stats.snapshot_error:
        line.append(f"  why: {stats.snapshot_error.splitlines()[0][:200]}\n", style="yellow")
    return line


def detail_text(state: PoolState | None, accel: str) -> Text:
    """The panel under the table: the selected pool's profile, members and last error."""
    if state is None:
        return Text("no profile selected", style="dim")
    text = Text()
    text.append(state.name, style="bold")
    profile = state.profile
    if profile is not None:
        text.append(f"  ({profile.source})  {profile.description}\n")
        text.append(f"{profile.cpus} vCPU, {profile.memory_mb} MiB, {profile.describe_boot()}, ")
        text.append(f"pool size {state.size if state.size is not None else profile.size}, max {profile.max_size}\n")
        cluster = cluster_of(state)
        if cluster is not None:
            text.append(f"cluster network: {cluster} (every VM of the pool joins it; members reach each other)\n",
                        style="cyan")
    else:
        text.append("  (profile file failed to load)\n")
    text.append(f"accelerator: {accel}\n", style="dim")
    if state.has_agent:
        text.append("commands run through the guest agent (ctrl+] r: stdout and stderr apart)\n", style="green")
    if state.stats is not None:
        text.append(refill_text(state.stats))
    if state.members:
        text.append("members:\n")
        for m in state.members:
            text.append(f"  {m.id:<16} {m.state:<9} pid {m.pid or '-':<8} {m.age_s:.0f}s\n")
    elif state.running or state.starting:
        text.append("no VMs yet\n", style="dim")
    if state.error:
        text.append("error:\n", style="bold red")
        text.append(state.error + "\n", style="red")
        if "capsa-tui image build" in state.error:
            text.append("fix: run `capsa-tui image build` in a shell, then start the pool again\n", style="yellow")
    return text


class ResizeScreen(ModalScreen[int | None]):
    """Ask for a new pool size."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    ResizeScreen { align: center middle; }
    ResizeScreen > Vertical { width: 50; height: auto; border: thick $accent; padding: 1 2; background: $surface; }
    """

    def __init__(self, name: str, current: int) -> None:
        super().__init__()
        self.pool_name, self.current = name, current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"New size of pool {self.pool_name} (warm VMs):")
            yield Input(str(self.current), type="integer", id="size")
            yield Label("Enter applies (boots or stops idle VMs; reserved ones stay), Escape cancels", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            self.dismiss(int(event.value))
        except ValueError:
            self.notify("type a whole number", severity="error")

    def action_cancel(self) -> None:
        self.dismiss(None)


class DashboardScreen(Screen[None]):
    """The main screen: the pool table, the selected pool's detail and the reserved VMs."""

    BINDINGS = [Binding(key, action, label) for key, action, label, _ in ACTIONS]
    DEFAULT_CSS = """
    #accel { height: 1; color: $text-muted; padding: 0 1; }
    #pools { height: 1fr; min-height: 6; }
    #lower { height: 14; }
    #detail { width: 2fr; border: round $primary; padding: 0 1; }
    #reserved-box { width: 1fr; border: round $primary; }
    #detail-text { height: 1fr; overflow-y: auto; }
    .spark-label { color: $text-muted; height: 1; }
    Sparkline { height: 1; }
    """

    def __init__(self, hub: Hub, autostart: str | None = "default") -> None:
        super().__init__()
        self.hub = hub
        self.autostart = autostart
        self._states: dict[str, PoolState] = {}
        self._rows: dict[str, list[Any]] = {}
        self._reserved_rows: dict[str, list[Any]] = {}
        self._detail_key: object = None
        self._pending: asyncio.TimerHandle | None = None
        self._last_redraw = 0.0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"accelerator: {self.hub.accel}", id="accel")
        yield self._table("pools", COLUMNS)
        with Horizontal(id="lower"):
            with Vertical(id="detail"):
                yield Static(id="detail-text")
                yield Label("idle VMs (history)", classes="spark-label")
                yield Sparkline([], id="spark-idle")
                yield Label("boot time (last boots)", classes="spark-label")
                yield Sparkline([], id="spark-boot")
            with Vertical(id="reserved-box"):
                yield Label("Reserved VMs  (enter/c: console, l: release)")
                yield self._table("reserved", RESERVED_COLUMNS)
        yield KeyFooter()

    @staticmethod
    def _table(name: str, columns: list[tuple[str, str]]) -> LiveTable:
        # Columns before mounting: the first frame has the headings (added on mount, they cost
        # a second frame, which the profile loading below would hold back).
        table = LiveTable(id=name, cursor_type="row")
        for key, label in columns:
            table.add_column(label, key=key)
        return table

    def on_mount(self) -> None:
        self.hub.subscribe(self._hub_changed)
        self.redraw()
        # After the first two frames (the tables' headings are drawn in the second, once they
        # are measured): loading profiles imports much of the engine (~70 ms of CPU under the
        # GIL) and would hold back the frame the user waits for.
        self.call_after_refresh(lambda: self.call_after_refresh(lambda: self._run(self._startup(), "loading profiles")))

    def on_unmount(self) -> None:
        self.hub.unsubscribe(self._hub_changed)
        if self._pending is not None:
            self._pending.cancel()

    async def _startup(self) -> None:
        await self.hub.reload_profiles()
        if self.autostart and self.hub.profile(self.autostart) is not None:
            await self.hub.start_pool(self.autostart)

    # ----- redrawing -------------------------------------------------------------------------

    def _hub_changed(self) -> None:
        """Called by the hub on every change: arm one delayed redraw unless one is armed."""
        if self._pending is not None:
            return
        delay = max(0.0, self._last_redraw + 1 / MAX_REDRAWS_PER_S - time.monotonic())
        self._pending = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._pending = None
        if self.is_attached:
            self.call_later(self.redraw)

    def redraw(self) -> None:
        """Bring every widget up to date with the hub (changed cells only)."""
        self._last_redraw = time.monotonic()
        states = self.hub.states()
        self._states = {s.name: s for s in states}
        accel = getattr(self.hub, "accel_name", self.hub.accel)
        self._sync(self.query_one("#pools", DataTable), self._rows,
                   {s.name: row_cells(s, accel, self.hub.agent_gap) for s in states}, COLUMNS)  # fmt: skip
        reserved = {
            vm.id: [vm.id, vm.pool_name, str(vm.pid), vm.lost or str(vm.status()),
                    agent_cell(vm.has_agent, self.hub.agent_gap)]
            for vm in self.hub.reserved()
        }
        self._sync(self.query_one("#reserved", DataTable), self._reserved_rows, reserved, RESERVED_COLUMNS)
        self._update_detail()

    @staticmethod
    def _sync(table: DataTable, shown: dict[str, list[Any]], wanted: dict[str, list[Any]],
              columns: list[tuple[str, str]]) -> None:  # fmt: skip
        for key in list(shown):
            if key not in wanted:
                table.remove_row(key)
                del shown[key]
        for key, cells in wanted.items():
            old = shown.get(key)
            if old is None:
                table.add_row(*cells, key=key)
            else:
                for (column, _), before, after in zip(columns, old, cells):
                    if before != after:
                        table.update_cell(key, column, after, update_width=True)
            shown[key] = cells

    def _update_detail(self) -> None:
        state = self._states.get(self.selected_pool() or "")
        key = (state.name, str(detail_text(state, self.hub.accel))) if state else None
        if key != self._detail_key:
            self._detail_key = key
            self.query_one("#detail-text", Static).update(detail_text(state, self.hub.accel))
        idle = [float(v) for v in state.history_idle] if state else []
        boot = list(state.history_boot_s) if state else []
        for widget_id, data in (("#spark-idle", idle), ("#spark-boot", boot)):
            spark = self.query_one(widget_id, Sparkline)
            if list(spark.data or []) != data:
                spark.data = data

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "pools":
            self._update_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "reserved":
            self.action_console()

    # ----- selection -------------------------------------------------------------------------

    def selected_pool(self) -> str | None:
        return self._selected_key(self.query_one("#pools", DataTable))

    def selected_vm(self) -> engine.ReservedVm | None:
        vm_id = self._selected_key(self.query_one("#reserved", DataTable))
        return next((vm for vm in self.hub.reserved() if vm.id == vm_id), None)

    @staticmethod
    def _selected_key(table: DataTable) -> str | None:
        if table.row_count == 0:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # cursor outside the rows while the table changes
            return None

    def _pool_or_warn(self) -> str | None:
        name = self.selected_pool()
        state = self._states.get(name or "")
        if state is None:
            self.notify("select a profile first", severity="warning")
            return None
        if state.profile is None:
            self.notify(f"{name} failed to load: fix the file, then reload (ctrl+r)", severity="error")
            return None
        return name

    # ----- actions ---------------------------------------------------------------------------

    def _run(self, coro: Awaitable[None], what: str) -> None:
        """Run an engine call in a worker; any error becomes a notification, never a crash."""

        async def guarded() -> None:
            try:
                await coro
            except Exception as err:  # noqa: BLE001 - shown to the user, the app goes on
                self.notify(f"{what} failed: {err}", severity="error", timeout=10)

        self.run_worker(guarded(), group="actions", exit_on_error=False)

    def action_start(self) -> None:
        if (name := self._pool_or_warn()) is not None:
            self._run(self.hub.start_pool(name), f"starting {name}")

    def action_stop(self) -> None:
        if (name := self._pool_or_warn()) is not None:
            self._run(self.hub.stop_pool(name), f"stopping {name}")

    def action_resize(self) -> None:
        name = self._pool_or_warn()
        if name is None:
            return
        state = self._states[name]
        current = state.size if state.size is not None else state.profile.size if state.profile else 1

        def chosen(size: int | None) -> None:
            if size is not None:
                self._run(self.hub.resize(name, size), f"resizing {name}")

        self.app.push_screen(ResizeScreen(name, current), chosen)

    def action_reserve(self) -> None:
        name = self._pool_or_warn()
        if name is None:
            return

        async def reserve() -> None:
            state = self._states.get(name)
            if state is not None and not (state.running or state.starting):
                await self.hub.start_pool(name)
            self.notify(f"reserving a VM of {name}…")
            vm = await self.hub.reserve(name)
            await self.open_console(vm)

        self._run(reserve(), f"reserving a VM of {name}")

    def action_console(self) -> None:
        vm = self.selected_vm()
        if vm is None:
            self.notify("no reserved VM selected (r reserves one)", severity="warning")
            return
        self._run(self.open_console(vm), f"opening the console of {vm.id}")

    def action_release(self) -> None:
        vm = self.selected_vm()
        if vm is None:
            self.notify("no reserved VM selected", severity="warning")
            return
        self._run(self.hub.release(vm), f"releasing {vm.id}")

    async def open_console(self, vm: engine.ReservedVm) -> None:
        """Show ``vm``'s console as a tab of the one console screen (its tab again if it has one)."""
        try:
            from capsatui.screens.console import ConsoleHooks, open_console
        except ImportError as err:
            self.notify(f"the console screen is not available ({err}); {vm.id} stays reserved (l releases it)",
                        severity="warning")  # fmt: skip
            return
        console = await vm.console()
        on_release: Callable[[], Awaitable[None]] = lambda: self.hub.release(vm)  # noqa: E731
        agent = vm.agent if vm.has_agent else None
        hooks = ConsoleHooks(reopen=lambda: self.hub.reattach_console(vm), resize=vm.set_console_size)
        await open_console(self.app, f"{vm.id} ({vm.pool_name})", console, on_release, agent, self.hub.agent_gap,
                           hooks=hooks)

    def action_policy(self) -> None:
        name = self._pool_or_warn()
        if name is None:
            return
        try:
            from capsatui.screens.policy_editor import PolicyEditorScreen
        except ImportError as err:
            self.notify(f"the policy editor is not available ({err})", severity="error")
            return
        self.app.push_screen(PolicyEditorScreen(self.hub, name))

    def action_flow_log(self) -> None:
        try:
            from capsatui.screens.flow_log import FlowLogScreen
        except ImportError as err:
            self.notify(f"the flow log is not available ({err})", severity="error")
            return
        self.app.push_screen(FlowLogScreen(self.hub))

    def action_reload(self) -> None:
        async def reload() -> None:
            await self.hub.reload_profiles()
            states = self.hub.states()
            bad = sum(1 for s in states if s.profile is None)
            self.notify(f"profiles reloaded: {len(states) - bad} valid, {bad} with errors")

        self._run(reload(), "reloading profiles")
