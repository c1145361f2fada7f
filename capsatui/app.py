"""CapsaApp: the capsa-tui Textual application (``capsa-tui`` with no arguments runs it).

The app owns a :class:`~capsatui.hub.Hub` and shows the dashboard at once: profiles load and
the autostart pool boots in the background, so the first frame never waits for a VM. Quitting
closes the hub first, so no VM, QEMU process or socket outlives the app.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from capsatui.hub import Hub, make_hub
from capsatui.palette import ActionCommands, Command
from capsatui.screens.dashboard import ACTIONS, DashboardScreen
from capsatui.screens.help import HelpScreen, key_label

if TYPE_CHECKING:
    from capsatui.contexts import Context

# (key, action, label, description) of the app-wide bindings; see ACTIONS for the dashboard's.
APP_ACTIONS: list[tuple[str, str, str, str]] = [
    ("q", "quit", "Quit", "Quit: stop every pool (no VM is left running) and leave"),
    ("question_mark", "help", "Help", "Show the keys of this screen"),
    ("ctrl+t", "toggle_theme", "Theme", "Switch between the light and dark theme"),
]
EXTRA_KEYS = [
    ("up / down", "Select a pool (or a reserved VM in its table)"),
    ("tab", "Move between the pool table and the reserved VMs"),
    ("enter", "On a reserved VM: reopen its console"),
    ("mouse", "Click a row to select it, a footer key to run it"),
]
Sections = list[tuple[str, list[tuple[str, str]]]]


class DashboardCommands(ActionCommands):
    """The command palette's entries: every dashboard and app action."""

    def commands(self) -> list[Command]:
        app = self.app
        assert isinstance(app, CapsaApp)
        entries: list[Command] = []
        for key, action, label, help_text in ACTIONS:
            entries.append((f"{label} ({key_label(key)})", help_text, partial(app.run_action, action, app.dashboard)))
        for key, action, label, help_text in APP_ACTIONS:
            entries.append((f"{label} ({key_label(key)})", help_text, partial(app.run_action, action)))
        return entries


class CapsaApp(App[None]):
    """The capsa-tui app; ``autostart`` names the profile(s) whose pools start at launch (None: none)."""

    TITLE = "capsa-tui"
    BINDINGS = [Binding(key, action, label) for key, action, label, _ in APP_ACTIONS]
    COMMANDS = App.COMMANDS | {DashboardCommands}

    def __init__(self, hub: Hub | None = None, autostart: str | Sequence[str] | None = "default",
                 hosts: Sequence[Context] = ()) -> None:
        super().__init__()
        self.hub = hub if hub is not None else make_hub(hosts)
        names = [autostart] if isinstance(autostart, str) else list(autostart or [])
        self.dashboard = DashboardScreen(self.hub, names[0] if names else None)
        self._start_more = names[1:]  # the dashboard starts the first; the app the others

    def on_mount(self) -> None:
        self.sub_title = "in-process" if self.hub.mode == "local" else f"attached to serve at {self.hub.where}"
        self.push_screen(self.dashboard)
        if self._start_more:
            self.run_worker(self._autostart_more(), group="autostart", exit_on_error=False)

    async def _autostart_more(self) -> None:
        for name in self._start_more:
            if self.hub.profile(name) is None:
                await self.hub.reload_profiles()
            if self.hub.profile(name) is None:
                self.notify(f"no valid profile named {name!r} to start", severity="warning")
                continue
            try:
                await self.hub.start_pool(name)
            except Exception as err:  # noqa: BLE001 - shown to the user, the app goes on
                self.notify(f"starting {name} failed: {err}", severity="error", timeout=10)

    def help_sections(self, screen: Screen[Any] | None = None) -> Sections:
        """The help screen's content: ``screen``'s keys first, then the app-wide ones."""
        screen = self.screen if screen is None else screen
        dashboard = [(key_label(key), text) for key, _, _, text in ACTIONS] + EXTRA_KEYS
        sections: Sections = []
        own = getattr(screen, "help_keys", None)
        if screen is not self.dashboard and callable(own):
            sections.append((getattr(screen, "HELP_TITLE", "This screen"), own()))
        else:
            sections.append(("Dashboard", dashboard))
            from capsatui.screens.console import ConsoleScreen  # here: start-up must not wait for it

            sections.append((ConsoleScreen.HELP_TITLE, ConsoleScreen.help_keys()))
        everywhere = [(key_label(key), text) for key, _, _, text in APP_ACTIONS]
        sections.append(("Everywhere", [*everywhere, ("ctrl+p", "Command palette: every action by name")]))
        return sections

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.help_sections()))

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    async def action_quit(self) -> None:
        # Close before exit: pools belong to this event loop, which ends with the app.
        attached = self.hub.mode != "local"
        self.notify("leaving the serve: its pools run on, your VMs go back" if attached else "stopping every pool…")
        await self.hub.close()
        self.exit()

    async def on_unmount(self) -> None:
        await self.hub.close()  # idempotent; covers ctrl+c and run_test's exit


def run_app(autostart: str | Sequence[str] | None = "default", hosts: Sequence[Context] = ()) -> int:
    """Run the app in this terminal until the user quits; ``hosts`` are the serves to attach to."""
    CapsaApp(autostart=autostart, hosts=hosts).run()
    return 0
