"""The console screen: reserved VMs' serial consoles as tabs of live terminals, plus helpers.

Design: one :class:`ConsoleScreen` holds every open console as a tab (a :class:`ConsoleTab`
per VM). The dashboard calls :func:`open_console`, which pushes the app's console screen (or
adds a tab to it). The screen is installed in the app, so detaching (``ctrl+] d``) just pops
it: the terminals keep their state and the VMs stay reserved until released (``ctrl+] x``).

Keys: everything typed goes to the guest raw (F-keys, Tab, Ctrl-C...) except ``ctrl+]``, which
opens the helper menu (each helper has a one-letter key there; the same helpers are in the
command palette, ``ctrl+p``), ``ctrl+pageup``/``ctrl+pagedown`` (switch tabs) and
``shift+pageup``/``shift+pagedown`` (scrollback).
"""
from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Static, TabbedContent, TabPane

import engine
from capsatui.palette import ActionCommands, Command
from capsatui.screens.dialogs import ExecResultModal, FormModal, HelperMenu, ResultModal, exec_status, exec_summary
from capsatui.widgets.key_footer import KeyFooter
from capsatui.widgets.terminal.search import parse_search
from capsatui.widgets.terminal.view import TerminalView

__all__ = ["AgentSource", "ConsoleHooks", "ConsoleScreen", "ConsoleTab", "ExecResultModal", "FormModal", "ResultModal", "open_console"]

SIZE_SETTLE_S = 0.15  # after a resize, when the view's new size is read and sent to the guest

Release = Callable[[], Awaitable[None]] | None
AgentSource = Callable[[], Awaitable[engine.AgentLike]] | None
"""The VM's agent, when it has one this side can reach; the run helper uses it over the console."""


@dataclass(frozen=True)
class ConsoleHooks:
    """What a tab may ask of its VM beyond the console: ``reopen`` gives the VM's console again
    after the link to its serve dropped (None: the VM is no longer ours); ``resize`` tells the
    guest's serial console the view's columns and rows (False: the guest has no agent to tell)."""

    reopen: Callable[[], Awaitable[engine.ConsoleLike | None]] | None = None
    resize: Callable[[int, int], Awaitable[bool]] | None = None

# (key in the ctrl+] menu, action, label) -- the menu, the palette and the help share this.
HELPERS: list[tuple[str, str, str]] = [
    ("l", "login", "Log in (asks user and password)"),
    ("w", "wait_pattern", "Wait for a pattern (with timeout)"),
    ("c", "interrupt", "Send interrupt (Ctrl-C)"),
    ("e", "eof", "Send EOF (Ctrl-D)"),
    ("r", "run_command", "Run a command, show output and exit code"),
    ("s", "save_scrollback", "Save the scrollback to a file"),
    ("f", "search", "Search the scrollback (n/N next/prev, Esc back)"),
    ("y", "copy", "Copy the selection (or the screen)"),
    ("[", "select", "Select with the keyboard (arrows/hjkl, v starts, y copies, esc)"),
    ("v", "paste", "Paste what was last copied (bracketed when the guest asks)"),
    ("t", "stty", "Tell the guest tty this view's size (stty)"),
    ("n", "next_tab", "Next console tab"),
    ("p", "prev_tab", "Previous console tab"),
    ("d", "detach", "Detach (VM stays reserved)"),
    ("x", "release", "Release the VM and close its tab"),
    ("]", "send_escape_key", "Send a literal Ctrl-]"),
    ("?", "app.help", "Help: every key of the console"),
]
# Keys of the terminal view itself, for the help screen.
VIEW_KEYS: list[tuple[str, str]] = [
    ("any other key", "Goes to the guest as a terminal sends it (arrows, Tab, Ctrl-C, F1-F12...)"),
    ("shift+PgUp / PgDn", "Scroll back / forward; then arrows, PgUp/PgDn, n/N (matches), esc or q: live"),
    ("mouse drag", "Select text (copied at once, to the system clipboard by OSC 52); the wheel scrolls back"),
    ("shift+mouse", "Select even while the guest takes the mouse (vi, htop)"),
    ("ctrl+PgUp / PgDn", "Previous / next console tab"),
    ("ctrl+p", "Command palette (every helper is there too)"),
]

_SCREENS: weakref.WeakKeyDictionary[App[Any], ConsoleScreen] = weakref.WeakKeyDictionary()


async def open_console(app: App[Any], title: str, console: engine.ConsoleLike, on_release: Release = None,
                       agent: AgentSource = None, agent_gap: str | None = None, *,
                       hooks: ConsoleHooks | None = None) -> ConsoleScreen:
    """The one entry point for the dashboard: show ``console`` as a tab of the console screen.

    ``agent`` gives the VM's agent (the run helper then shows stdout, stderr and the exit code
    apart); ``agent_gap`` says why a VM that may run one cannot be reached through it; ``hooks``
    reopen the console after a dropped link and give the guest the view's size."""
    screen = _SCREENS.get(app)
    if screen is None or not screen.tabs_alive:
        screen = ConsoleScreen(title, console, on_release, agent, agent_gap, hooks=hooks)
        _SCREENS[app] = screen
        app.install_screen(screen, name=screen.install_name)
        await app.push_screen(screen)
        return screen
    if screen not in app.screen_stack:
        await app.push_screen(screen)
    # Reopening a console that has a live tab shows that tab: a second terminal on the same
    # serial line would only split the user's attention (and the tab keeps its scrollback).
    existing = next((tab for tab in screen.tabs if tab.console is console and tab.closed_reason is None), None)
    if existing is not None:
        screen.show_tab(existing)
    else:
        await screen.add_console(title, console, on_release, agent, agent_gap, hooks=hooks)
    return screen


class ConsoleTab(Vertical):
    """One VM's console: a terminal fed by a reader worker, keystrokes queued to the guest."""

    DEFAULT_CSS = """
    ConsoleTab { height: 1fr; }
    ConsoleTab > .console-status { height: 1; background: $panel; color: $text-muted; }
    ConsoleTab > .console-status.-closed { background: $error; color: $text; }
    """

    def __init__(self, title: str, console: engine.ConsoleLike, on_release: Release,
                 agent: AgentSource = None, agent_gap: str | None = None, *, hooks: ConsoleHooks | None = None) -> None:
        super().__init__()
        self.title = title
        self.console = console
        self.hooks = hooks or ConsoleHooks()
        self._sent_size: tuple[int, int] | None = None
        self._offered_stty = False
        self.on_release = on_release
        self.agent = agent
        self.agent_gap = agent_gap
        self.closed_reason: str | None = None
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._reader: engine.ConsoleReaderLike | None = None  # the reader feeding the view
        self._closed_note = b""
        self.view = TerminalView(self._enqueue, resync=self._recent_output)

    def compose(self) -> ComposeResult:
        yield self.view
        yield Static("ctrl+] helpers · shift+PgUp scrollback · ctrl+PgUp/PgDn tabs · ctrl+p palette",
                     classes="console-status")

    def on_mount(self) -> None:
        self.run_worker(self._pump(), name="console-reader", group="console")
        self.run_worker(self._send(), name="console-writer", group="console")
        self.set_interval(1.0, self._update_status)
        self.set_timer(SIZE_SETTLE_S, self._sync_size)

    def on_resize(self, event: events.Resize) -> None:
        # The view takes its new size in the same refresh: look once it has settled.
        self.set_timer(SIZE_SETTLE_S, self._sync_size)

    def _sync_size(self) -> None:
        """Give the guest's tty the view's size, out of band, whenever it changed."""
        size = (self.view.term.columns, self.view.term.lines)
        if self.hooks.resize is None or self.closed_reason is not None or size == self._sent_size:
            return
        self._sent_size = size
        self.run_worker(self._send_size(*size), group="console-size", exclusive=True, exit_on_error=False)

    async def _send_size(self, cols: int, rows: int) -> None:
        assert self.hooks.resize is not None
        try:
            done = await self.hooks.resize(cols, rows)
        except engine.EngineError:
            done = False  # a sandbox whose agent is not up (yet): the shell can still be told
        if not done and not self._offered_stty:
            self._offered_stty = True  # offered once, on open, rather than hidden in the menu
            self.app.notify(f"{self.title}: its guest cannot be told this view's size ({cols}x{rows}) out of band; "
                            "ctrl+] t types `stty rows/cols` into its shell", timeout=10)

    async def _enqueue(self, data: bytes) -> None:
        # Keystrokes never wait on the guest: a stuck serial line must not stall the UI.
        self._outbox.put_nowait(data)

    async def _send(self) -> None:
        while True:
            data = await self._outbox.get()
            while not self._outbox.empty():  # coalesce a burst (a paste, auto-repeat)
                data += self._outbox.get_nowait()
            try:
                await self.console.write(data)
            except engine.ConsoleError as err:
                self.mark_closed(str(err))

    async def _pump(self) -> None:
        while True:
            try:
                self._reader = self.console.reader(from_start=True)
                async for chunk in self._reader:
                    self.view.feed(chunk)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # ConsoleClosed or a broken stream: say so in place
                self.mark_closed(f"{type(err).__name__}: {err}")
                return
            reason = self.console.close_reason or "the stream ended"
            if not await self._reopened(reason):
                self.mark_closed(reason)
                return

    async def _reopened(self, reason: str) -> bool:
        """After the link to a serve dropped: the VM's console again, if it is still ours."""
        if self.hooks.reopen is None:
            return False
        self.view.feed(f"\r\n\x1b[1;33m[{reason}; reconnecting…]\x1b[0m\r\n".encode())
        self.query_one(".console-status", Static).update(f"link lost: {reason}; reconnecting…")
        try:
            console = await self.hooks.reopen()
        except engine.EngineError as err:
            self.view.feed(f"\x1b[1;31m[not reconnected: {err}]\x1b[0m\r\n".encode())
            return False
        if console is None:
            return False
        self.console = console
        self.view.feed(b"\x1b[1;32m[reconnected: output from while the link was down is not shown]\x1b[0m\r\n")
        self.query_one(".console-status", Static).update(f"reconnected after: {reason}")
        return True

    def _recent_output(self, n: int) -> bytes | None:
        """The newest ``n`` bytes the view was fed, from the console's ring (the view rebuilds its
        screen from them after dropping output in a flood). The reader's offset is exactly what
        has been fed: it advances and the chunk is fed in one event-loop step."""
        reader = self._reader
        if reader is None:
            return None
        end = reader.offset
        start = max(end - n, self.console.start_offset)
        return self.console.read_from(start, max(0, end - start)) + self._closed_note

    def mark_closed(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self._closed_note = f"\r\n\x1b[1;31m[console closed: {reason}]\x1b[0m\r\n".encode()
        self.view.feed(self._closed_note)
        self._update_status()

    def _update_status(self) -> None:
        status = self.query_one(".console-status", Static)
        if self.closed_reason is not None:
            status.update(f"console closed: {self.closed_reason}")
            status.add_class("-closed")
        elif self.view.dropped:
            status.update(f"output flood: {self.view.dropped} bytes skipped, screen redrawn from the"
                          " console log (saved scrollback has them all) · ctrl+] helpers")


class ConsoleCommands(ActionCommands):
    """The console helpers in the command palette (only while the console screen is shown)."""

    def commands(self) -> list[Command]:
        screen = self.screen
        return [(f"Console: {label}", f"ctrl+] {key}", partial(screen.run_action, action))
                for key, action, label in HELPERS]


class ConsoleScreen(Screen[None]):
    """Consoles of reserved VMs as tabs; see the module docstring for the keys."""

    COMMANDS = {ConsoleCommands}
    HELP_TITLE = "Console (everything typed goes to the guest)"
    # The terminal, not the tab bar (the first focusable widget), has the focus from the first
    # frame: keys typed the moment the prompt shows would otherwise be dropped by the tab bar.
    AUTO_FOCUS = "TerminalView"
    BINDINGS = [
        Binding("ctrl+right_square_bracket", "menu", "Helpers (ctrl+])", key_display="^]"),
        Binding("ctrl+pageup", "prev_tab", "Prev tab", show=False),
        Binding("ctrl+pagedown", "next_tab", "Next tab", show=False),
    ]
    DEFAULT_CSS = """
    ConsoleScreen TabPane { padding: 0; }
    ConsoleScreen TabbedContent, ConsoleScreen ContentSwitcher { height: 1fr; }
    """
    _counter = 0

    def __init__(self, title: str, console: engine.ConsoleLike, on_release: Release = None,
                 agent: AgentSource = None, agent_gap: str | None = None, *, hooks: ConsoleHooks | None = None) -> None:
        super().__init__()
        ConsoleScreen._counter += 1
        self.install_name = f"capsa-consoles-{ConsoleScreen._counter}"
        self._initial = [(title, console, on_release, agent, agent_gap, hooks)]
        self._pane_ids = 0
        self.tabs_alive = True

    @classmethod
    def help_keys(cls) -> list[tuple[str, str]]:
        """The console's keys: ctrl+] then a helper's letter, then the terminal's own keys."""
        rows = [("ctrl+]", "The helper menu; then one letter:")]
        rows += [(f"ctrl+] {key}", label) for key, _, label in HELPERS]
        return rows + VIEW_KEYS

    def compose(self) -> ComposeResult:
        with TabbedContent(id="console-tabs"):
            for title, console, on_release, agent, agent_gap, hooks in self._initial:
                yield self._pane(title, console, on_release, agent, agent_gap, hooks=hooks)
        yield KeyFooter()

    def _pane(self, title: str, console: engine.ConsoleLike, on_release: Release,
              agent: AgentSource = None, agent_gap: str | None = None, *, hooks: ConsoleHooks | None = None) -> TabPane:
        self._pane_ids += 1
        tab = ConsoleTab(title, console, on_release, agent, agent_gap, hooks=hooks)
        return TabPane(title, tab, id=f"console-{self._pane_ids}")

    def on_mount(self) -> None:
        self.sub_title = "ctrl+] helpers"
        self.call_after_refresh(self._focus_active)

    def on_screen_resume(self) -> None:
        self.call_after_refresh(self._focus_active)

    async def add_console(self, title: str, console: engine.ConsoleLike, on_release: Release = None,
                          agent: AgentSource = None, agent_gap: str | None = None, *,
                          hooks: ConsoleHooks | None = None) -> ConsoleTab:
        """A new tab for another VM's console; it becomes the active tab."""
        pane = self._pane(title, console, on_release, agent, agent_gap, hooks=hooks)
        tabs = self.query_one(TabbedContent)
        await tabs.add_pane(pane)
        tabs.active = pane.id or ""
        tab = pane.query_one(ConsoleTab)
        tab.view.focus()  # at once, so the next key goes to the new VM, never to the old tab's
        self.call_after_refresh(self._focus_active)
        return tab

    def show_tab(self, tab: ConsoleTab) -> None:
        """Make ``tab`` the active tab."""
        pane = tab.parent
        if isinstance(pane, TabPane) and pane.id:
            self.query_one(TabbedContent).active = pane.id
            self.call_after_refresh(self._focus_active)

    @property
    def tabs(self) -> list[ConsoleTab]:
        return list(self.query(ConsoleTab))

    @property
    def active_tab(self) -> ConsoleTab | None:
        pane = self.query_one(TabbedContent).active_pane
        return pane.query_one(ConsoleTab) if pane is not None else None

    def _focus_active(self) -> None:
        tab = self.active_tab
        if tab is not None:
            tab.view.focus()

    @on(TabbedContent.TabActivated)
    def _tab_changed(self) -> None:
        self.call_after_refresh(self._focus_active)

    # -- helpers --------------------------------------------------------------------------------

    def action_menu(self) -> None:
        def chosen(action: str | None) -> None:
            if action:
                self.call_after_refresh(self.run_action, action)

        self.app.push_screen(HelperMenu(HELPERS), chosen)

    def _ask(self, title: str, fields: list[tuple[str, str, str, bool]],
             then: Callable[[dict[str, str]], Any]) -> None:
        def answered(values: dict[str, str] | None) -> None:
            if values is not None:
                then(values)

        self.app.push_screen(FormModal(title, fields), answered)

    def _show(self, title: str, text: str) -> None:
        self.app.push_screen(ResultModal(title, text))

    def action_login(self) -> None:
        self._ask("Log in", [("user", "User", "root", False), ("password", "Password (empty: none)", "", True)],
                  lambda v: self._login(v["user"], v["password"] or None))

    @work(group="helpers")
    async def _login(self, user: str, password: str | None) -> None:
        tab = self.active_tab
        if tab is None:
            return
        try:
            await tab.console.login(user, password)
        except engine.ConsoleError as err:
            self._show("Login failed", str(err))
        else:
            self.notify(f"logged in as {user}")

    def action_wait_pattern(self) -> None:
        self._ask("Wait for a pattern in new output",
                  [("pattern", "Pattern (text; /regex/ for a regular expression)", "", False),
                   ("timeout", "Timeout (seconds)", "30", False)],
                  lambda v: self._wait(v["pattern"], v["timeout"]))

    @work(group="helpers")
    async def _wait(self, pattern: str, timeout: str) -> None:
        tab = self.active_tab
        if tab is None or not pattern:
            return
        self.notify(f"waiting for {pattern!r}…")
        # A fresh reader: the wait is for output from now on, not for anything in the backlog.
        try:
            what = parse_search(pattern)  # inside: a bad /regex/ is shown, not raised out of the worker
            text = await tab.console.reader().wait_for(what, _seconds(timeout, 30))
        except engine.ConsoleTimeout as err:
            self._show(f"Timed out waiting for {pattern!r}", f"{err}\n\nSeen while waiting:\n{err.seen}")
        except (engine.ConsoleError, ValueError, re.error) as err:
            self._show(f"Waiting for {pattern!r} failed", str(err))
        else:
            self._show(f"Matched {pattern!r}", text[-4000:])

    def action_run_command(self) -> None:
        tab = self.active_tab
        where = "through the guest agent" if tab is not None and tab.agent is not None else "in the guest shell"
        self._ask(f"Run a command {where}",
                  [("command", "Command", "", False), ("timeout", "Timeout (seconds)", "60", False)],
                  lambda v: self._run(v["command"], v["timeout"]))

    @work(group="helpers")
    async def _run(self, command: str, timeout: str) -> None:
        tab = self.active_tab
        if tab is None or not command.strip():
            return
        if tab.agent is not None:
            await self._run_agent(tab.agent, command, _seconds(timeout, 60))
            return
        try:
            result = await tab.console.run(command, _seconds(timeout, 60))
        except engine.ConsoleTimeout as err:
            self._show(f"{command}: timed out (still running; ctrl+] c interrupts)", f"{err}\n\n{err.seen}")
        except engine.ConsoleError as err:
            self._show(f"{command}: failed", str(err))
        else:
            note = f"\n\n({tab.agent_gap})" if tab.agent_gap else ""
            self._show(f"{command} — exit code {result.exit_code}",
                       f"exit code: {result.exit_code} (through the console: stdout and stderr mixed){note}"
                       f"\n\n{result.output}")

    async def _run_agent(self, source: Callable[[], Awaitable[engine.AgentLike]], command: str, timeout: float) -> None:
        # Through the agent the console stays the user's: nothing is typed into their shell.
        try:
            agent = await source()
            result = await agent.exec(command, timeout=timeout)
        except engine.ExecTimeout as err:
            self.app.push_screen(ExecResultModal(
                f"{command}: timed out", f"ran past its {timeout:g} s timeout; its process group was killed",
                err.stdout, err.stderr))
        except engine.EngineError as err:
            self._show(f"{command}: failed", str(err))
        else:
            self.app.push_screen(ExecResultModal(f"{command} — {exec_status(result)}", exec_summary(result),
                                                 result.stdout, result.stderr))

    async def action_interrupt(self) -> None:
        await self._write_helper(b"\x03")

    async def action_eof(self) -> None:
        await self._write_helper(b"\x04")

    async def action_send_escape_key(self) -> None:
        await self._write_helper(b"\x1d")

    async def _write_helper(self, data: bytes) -> None:
        tab = self.active_tab
        if tab is not None:
            await tab._enqueue(data)  # in order with what was typed

    async def action_stty(self) -> None:
        tab = self.active_tab
        if tab is not None:
            await tab._enqueue(f"stty rows {tab.view.term.lines} cols {tab.view.term.columns}\r".encode())

    def action_save_scrollback(self) -> None:
        tab = self.active_tab
        if tab is None:
            return
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", tab.title).strip("-") or "vm"
        default = str(Path.home() / f"capsa-{safe}-{time.strftime('%Y%m%d-%H%M%S')}.log")
        self._ask("Save the scrollback", [("path", "File", default, False)],
                  lambda v: self._save(tab, v["path"]))

    @work(group="helpers")
    async def _save(self, tab: ConsoleTab, path: str) -> None:
        target = Path(path).expanduser()
        data = tab.console.scrollback()
        try:
            await asyncio.to_thread(target.write_bytes, data)
        except OSError as err:
            self._show("Saving the scrollback failed", str(err))
        else:
            self.notify(f"saved {len(data)} bytes to {target}")

    def action_search(self) -> None:
        self._ask("Search the scrollback", [("text", "Text (/regex/ for a regular expression)", "", False)],
                  lambda v: self._search(v["text"]))

    def _search(self, text: str) -> None:
        tab = self.active_tab
        if tab is None or not text:
            return
        try:
            found = tab.view.search(parse_search(text))
        except re.error as err:
            self.notify(f"bad pattern: {err}", severity="error")
            return
        self.notify(f"{found} matches for {text!r} (n/N next/prev, Esc back)" if found else f"no match for {text!r}")

    def action_copy(self) -> None:
        tab = self.active_tab
        if tab is not None and not tab.view.copy_selection():
            self.app.copy_to_clipboard(tab.view.screen_text())
            self.notify("copied the screen")

    def action_select(self) -> None:
        tab = self.active_tab
        if tab is not None:
            tab.view.start_selection()
            self.notify("selecting: arrows/hjkl move, v starts the selection, y or Enter copies, Esc leaves")

    def action_paste(self) -> None:
        tab = self.active_tab
        if tab is None:
            return
        if not self.app.clipboard:
            self.notify("nothing copied yet", severity="warning")
            return
        tab.view.paste(self.app.clipboard)

    def action_next_tab(self) -> None:
        self._cycle(1)

    def action_prev_tab(self) -> None:
        self._cycle(-1)

    def _cycle(self, step: int) -> None:
        tabs = self.query_one(TabbedContent)
        panes = [pane.id for pane in tabs.query(TabPane)]
        if len(panes) > 1 and tabs.active in panes:
            tabs.active = panes[(panes.index(tabs.active) + step) % len(panes)] or ""

    def action_detach(self) -> None:
        """Leave the consoles; the VMs stay reserved and the tabs keep running."""
        if self.is_current:
            self.app.pop_screen()

    @work(group="helpers")
    async def action_release(self) -> None:
        tab = self.active_tab
        if tab is None:
            return
        if tab.on_release is not None:
            try:
                await tab.on_release()
            except Exception as err:  # the engine says why; the tab stays so the user can retry
                self._show("Release failed", f"{type(err).__name__}: {err}")
                return
        tabs = self.query_one(TabbedContent)
        pane = tabs.active_pane
        if len(self.tabs) <= 1:
            self.tabs_alive = False
            # An app worker closes the screen: this worker belongs to the screen, and removing
            # the screen would cancel it half-way (which once took the whole app down).
            self.app.run_worker(_close_screen(self.app, self), name="console-close")
            return
        if pane is not None and pane.id:
            await tabs.remove_pane(pane.id)
        self.call_after_refresh(self._focus_active)


async def _close_screen(app: App[Any], screen: ConsoleScreen) -> None:
    installed = app.is_screen_installed(screen)
    if screen.is_current:
        await app.pop_screen()
    if installed and screen not in app.screen_stack:
        app.uninstall_screen(screen)
        app.call_later(screen.remove)


def _seconds(text: str, default: float) -> float:
    try:
        value = float(text)
    except ValueError:
        return default
    return value if value > 0 else default
