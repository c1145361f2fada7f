"""The dashboard against the real engine: fast start, errors in place, a pool's life, quitting."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

import engine
from capsatui.app import CapsaApp
from capsatui.hub import LocalHub
from capsatui.screens.dashboard import DashboardScreen
from capsatui.screens.help import HelpScreen
from tests.capsatui.screen_text import wait_shown

TEST_PROFILE = "name: t\nmemory_mb: 192\npool:\n  size: 1\n  max_size: 2\n"
SIZE = (160, 40)


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "t.yaml").write_text(TEST_PROFILE)
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path))
    return folder


def pools(app: CapsaApp) -> DataTable:
    return app.dashboard.query_one("#pools", DataTable)


def cell(app: CapsaApp, row: str, column: str) -> str:
    return str(pools(app).get_cell(row, column))


async def wait_for(pilot: Pilot, predicate: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)


def has_row(app: CapsaApp, key: str) -> bool:
    try:
        pools(app).get_row_index(key)
        return True
    except Exception:
        return False


async def test_starts_fast_and_shows_broken_profiles_in_place(config_dir: Path) -> None:
    (config_dir / "broken.yaml").write_text("name: Bad Name\ncpus: 999\n")
    app = CapsaApp(autostart=None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: has_row(app, "t") and has_row(app, "broken.yaml"), 5)
        assert isinstance(app.screen, DashboardScreen)
        assert cell(app, "t", "state") == "stopped"
        assert cell(app, "default", "state") == "stopped"
        assert cell(app, "broken.yaml", "state") == "invalid"
        assert "cpus" in str(app.hub.states()[-1].error) and "broken.yaml" in cell(app, "broken.yaml", "error")
        # Actions on the broken row explain themselves instead of crashing.
        pools(app).move_cursor(row=pools(app).get_row_index("broken.yaml"))
        await pilot.press("s")
        await pilot.pause()
        assert app.is_running and cell(app, "broken.yaml", "state") == "invalid"
        for key, module, name in (("p", "policy_editor", "PolicyEditorScreen"), ("f", "flow_log", "FlowLogScreen")):
            pools(app).move_cursor(row=pools(app).get_row_index("t"))
            try:  # written by other helpers: the dashboard must cope with their absence
                screen_type = getattr(__import__(f"capsatui.screens.{module}", fromlist=[name]), name)
            except ImportError:
                screen_type = None
            await pilot.press(key)
            await pilot.pause()
            if screen_type is not None:
                await wait_for(pilot, lambda: isinstance(app.screen, screen_type), 5)
                app.pop_screen()
                await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), 5)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), 5)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), 5)


async def test_missing_image_shown_with_its_fix(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*, build: bool = True) -> None:
        raise engine.ImageError("the default guest image is not built yet: run `capsa-tui image build`")

    monkeypatch.setattr(engine, "default_image", missing)
    app = CapsaApp(autostart="t")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: has_row(app, "t") and cell(app, "t", "state") == "failed", 10)
        assert "capsa-tui image build" in cell(app, "t", "error")


def console_lines(app: CapsaApp) -> list[str]:
    from capsatui.screens.console import ConsoleScreen

    screen = app.screen
    tab = screen.active_tab if isinstance(screen, ConsoleScreen) else None
    return tab.view.all_text().splitlines() if tab is not None else []


@pytest.mark.guest
async def test_pool_life_from_the_dashboard(boot: engine.LinuxDirectBoot, config_dir: Path) -> None:
    from capsatui.screens.console import ConsoleScreen

    app = CapsaApp(autostart="t")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: has_row(app, "t"), 5)
        assert cell(app, "default", "state") == "stopped"  # only the autostart profile starts
        await wait_for(pilot, lambda: cell(app, "t", "idle") == "1")
        assert cell(app, "t", "state") == "running" and cell(app, "t", "created") == "1"
        # The busybox guest has no agent: its commands go through the console.
        assert cell(app, "t", "agent") == "console" and cell(app, "default", "agent") == "console"
        pools(app).move_cursor(row=pools(app).get_row_index("t"))
        await pilot.press("r")
        await wait_for(pilot, lambda: len(app.hub.reserved()) == 1)
        reserved = app.dashboard.query_one("#reserved", DataTable)
        await wait_for(pilot, lambda: reserved.row_count == 1 and cell(app, "t", "reserved") == "1")
        assert str(reserved.get_row_at(0)[-1]) == "console"

        # The console opens on the reserved VM: type a command, see its output rendered.
        await wait_for(pilot, lambda: isinstance(app.screen, ConsoleScreen), 30)
        shown_screen = app.screen
        assert isinstance(shown_screen, ConsoleScreen)
        consoles: ConsoleScreen = shown_screen  # typed once: the lambdas below read it
        await wait_for(pilot, lambda: any(line.endswith("#") for line in console_lines(app)), 30)
        await pilot.press(*"echo", "space", *"hi", "enter")
        await wait_for(pilot, lambda: "hi" in console_lines(app), 30)

        # Detach: back on the dashboard, the VM still reserved.
        await pilot.press("ctrl+right_square_bracket", "d")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), 5)
        assert len(app.hub.reserved()) == 1 and reserved.row_count == 1

        # A second VM opens as a second tab of the same console screen.
        await pilot.press("r")
        await wait_for(pilot, lambda: app.screen is consoles and len(consoles.tabs) == 2
                       and consoles.active_tab is consoles.tabs[1], 60)
        second = consoles.tabs[1]
        assert second.console is not consoles.tabs[0].console
        await pilot.press("ctrl+right_square_bracket", "d")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), 5)
        await wait_for(pilot, lambda: reserved.row_count == 2 and cell(app, "t", "reserved") == "2")

        # Reopening the first VM's console shows its tab again (with its output), not a new one.
        reserved.focus()
        reserved.move_cursor(row=0)
        first_vm = app.dashboard.selected_vm()
        assert first_vm is not None
        await pilot.press("c")
        await wait_for(pilot, lambda: app.screen is consoles and consoles.active_tab is not second, 10)
        assert len(consoles.tabs) == 2 and "hi" in console_lines(app)
        assert consoles.active_tab is not None and consoles.active_tab.console is await first_vm.console()
        await pilot.press("ctrl+right_square_bracket", "d")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), 5)

        reserved.focus()
        await pilot.press("l")
        await wait_for(pilot, lambda: len(app.hub.reserved()) == 1 and reserved.row_count == 1)
        await pilot.press("l")
        await wait_for(pilot, lambda: not app.hub.reserved() and reserved.row_count == 0)
        await wait_for(pilot, lambda: cell(app, "t", "reserved") == "0")
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, 30)
    assert not any(s.running or s.starting for s in app.hub.states())


def dashboard_settled(app: CapsaApp) -> bool:
    """Every profile row, and the detail panel filled for the selected one: the panel is redrawn
    by a debounced refresh that a loaded machine can delay past a bare pause."""
    names = [p.name for p in engine.load_profiles()]
    detail = str(app.dashboard.query_one("#detail-text", Static).render())
    return all(has_row(app, n) for n in names) and any(n in detail for n in names)


def test_snapshot_stopped_profiles(config_dir: Path, monkeypatch: pytest.MonkeyPatch, snap_compare: Any) -> None:
    monkeypatch.setenv("CAPSA_ACCEL", "tcg")  # the accelerator line must not depend on the host

    async def loaded(pilot: Pilot) -> None:
        await wait_for(pilot, lambda: dashboard_settled(app), 10)
        # What the terminal shows, not only the table's data: the rows at their measured widths.
        await wait_shown(pilot, *(rf"^ {name} +stopped " for name in ("default", "login", "t", "tiny", "web")))
        await pilot.pause()

    app = CapsaApp(hub=LocalHub(), autostart=None)
    assert snap_compare(app, terminal_size=(150, 34), run_before=loaded)


def test_snapshot_help(config_dir: Path, monkeypatch: pytest.MonkeyPatch, snap_compare: Any) -> None:
    monkeypatch.setenv("CAPSA_ACCEL", "tcg")

    async def helped(pilot: Pilot) -> None:
        await wait_for(pilot, lambda: dashboard_settled(app), 10)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen.is_current, 10)
        await pilot.pause()

    app = CapsaApp(hub=LocalHub(), autostart=None)
    assert snap_compare(app, terminal_size=(120, 44), run_before=helped)


async def test_help_and_palette_follow_the_screen(config_dir: Path) -> None:
    """Help lists the keys of the screen it is opened on; the palette lists that screen's actions."""
    from capsatui.palette import BindingCommands
    from capsatui.screens.flow_log import FlowLogScreen
    from capsatui.screens.policy_editor import PolicyEditorScreen

    app = CapsaApp(hub=LocalHub(), autostart=None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: has_row(app, "t"), 5)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), 5)
        assert isinstance(app.screen, HelpScreen)
        keys = dict(app.screen.keys)
        assert keys["s"].startswith("Start") and keys["ctrl+] x"].startswith("Release")  # dashboard, console
        assert keys["ctrl+p"].startswith("Command palette") and keys["q"].startswith("Quit")
        await pilot.press("escape")
        pools(app).move_cursor(row=pools(app).get_row_index("t"))
        for key, screen_type, words in (("p", PolicyEditorScreen, ["Add", "Delete", "Up", "Save", "Apply to pool"]),
                                        ("f", FlowLogScreen, ["Allow this (denied) destination", "Filter"])):
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), 5)
            await pilot.press(key)
            await wait_for(pilot, lambda: isinstance(app.screen, screen_type), 5)
            screen = app.screen
            titles = [hit.text async for hit in BindingCommands(screen).discover()]
            for word in words:
                assert any(title and title.startswith(word) for title in titles), (word, titles)
            app.action_help()
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), 5)
            help_screen = app.screen
            assert isinstance(help_screen, HelpScreen)
            assert help_screen.sections[0][0] == screen_type.HELP_TITLE
            assert help_screen.sections[0][1] == screen_type.help_keys()
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is screen, 5)
            await pilot.press("escape")


@pytest.mark.guest
async def test_resize_palette_and_theme(boot: engine.LinuxDirectBoot, config_dir: Path) -> None:
    from capsatui.app import DashboardCommands

    app = CapsaApp(autostart=None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: has_row(app, "t"), 5)
        # Every dashboard action is in the command palette.
        provider = DashboardCommands(app.screen)
        titles = [hit.text async for hit in provider.discover()]
        for word in ("Start", "Stop", "Resize", "Reserve", "Release", "Policy", "Flow log", "Reload",
                     "Theme", "Help", "Quit"):  # fmt: skip
            assert any(title and title.startswith(word) for title in titles), word
        dark = app.current_theme.dark
        await pilot.press("ctrl+t")
        assert app.current_theme.dark != dark
        # Resize to 0: the pool restarts with no warm VM (so no boot is needed here).
        pools(app).move_cursor(row=pools(app).get_row_index("t"))
        await pilot.press("z")
        await pilot.pause()
        await pilot.press("backspace", "0", "enter")
        await wait_for(pilot, lambda: cell(app, "t", "state") == "running", 10)
        assert cell(app, "t", "idle") == "0"
        await pilot.press("x")
        await wait_for(pilot, lambda: cell(app, "t", "state") == "stopped", 10)


def test_refill_text_says_how_fresh_vms_are_made() -> None:
    from capsatui.screens.dashboard import refill_text

    base = engine.PoolStats("p", 1, 2, 1, 0, 0, 0, 1, 0, 0, 0, 0, None, None, None)
    assert refill_text(base).plain == "refill: cold boots\n"
    ready = dataclasses.replace(base, snapshot="ready", waiting_clones=2)
    assert refill_text(ready).plain == "refill: snapshot clones, template ready; 2 waiting, 0 cold fallbacks\n"
    failed = dataclasses.replace(base, snapshot="failed", fallbacks=3, snapshot_error="no template: /dev/shm has 3 MiB free")
    text = refill_text(failed).plain
    assert "off, booting cold; 0 waiting, 3 cold fallbacks" in text and "why: no template: /dev/shm has 3 MiB free" in text


SANDBOX_PROFILE = "name: s\nkind: sandbox\npool:\n  size: 1\n  max_size: 1\n  snapshot: false\n"


@pytest.mark.guest
async def test_sandbox_pool_shows_agent_and_the_helper_runs_through_it(
    sandbox_boot_config: engine.LinuxDirectBoot, config_dir: Path,
) -> None:
    """A kind: sandbox pool from the dashboard: its row and its reserved VM say agent, and the
    console's run helper shows stdout and stderr apart through the agent."""
    from capsatui.screens.console import ConsoleScreen, ExecResultModal
    from capsatui.screens.dialogs import FormModal

    (config_dir / "s.yaml").write_text(SANDBOX_PROFILE)
    app = CapsaApp(autostart="s")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: has_row(app, "s"), 5)
        assert cell(app, "s", "agent") == "agent" and cell(app, "t", "agent") == "console"
        await wait_for(pilot, lambda: cell(app, "s", "idle") == "1", 180)
        assert cell(app, "s", "agent") == "agent"
        pools(app).move_cursor(row=pools(app).get_row_index("s"))
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsoleScreen), 60)
        reserved = app.dashboard.query_one("#reserved", DataTable)
        await wait_for(pilot, lambda: reserved.row_count == 1, 10)  # the dashboard's redraws are paced
        assert str(reserved.get_row_at(0)[-1]) == "agent"
        await pilot.press("ctrl+right_square_bracket", "r")
        await wait_for(pilot, lambda: isinstance(app.screen, FormModal), 10)
        form = app.screen
        assert isinstance(form, FormModal) and "through the guest agent" in form.form_title
        await pilot.press(*[c if c != " " else "space" for c in "echo o1; echo e1 >&2; (exit 9)"], "enter", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ExecResultModal), 120)
        result = app.screen
        assert isinstance(result, ExecResultModal)
        assert "exit code 9" in result.result_title
        assert (result.stdout, result.stderr) == (b"o1\n", b"e1\n")
        await pilot.press("escape")
        await pilot.press("ctrl+right_square_bracket", "x")  # release
        await wait_for(pilot, lambda: not app.hub.reserved(), 30)
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), 10)
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, 60)
    assert not any(s.running or s.starting for s in app.hub.states())
