"""The console's run-command helper on a real sandbox: through the agent it shows stdout and
stderr in panes of their own and the exit code, and types nothing into the user's shell."""
from __future__ import annotations

import time
from typing import Any

import pytest
from textual.app import App

import engine
from capsatui.screens.console import ConsoleScreen, ExecResultModal, open_console
from capsatui.screens.dialogs import FormModal
from engine.microvm.handle import VmHandle
from tests.sandboxes import running_sandbox


class SandboxConsoleApp(App[None]):
    def __init__(self, vm: VmHandle, console: engine.Console) -> None:
        super().__init__()
        self.vm = vm
        self.vm_console = console

    async def on_mount(self) -> None:
        await open_console(self, "sandbox", self.vm_console, None, self._agent)

    async def _agent(self) -> engine.Agent:
        return await self.vm.agent(120)


async def until(check: Any, pilot: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.1)


async def run_helper(pilot: Any, app: App[None], command: str, timeout: str | None = None) -> ExecResultModal:
    await pilot.press("ctrl+right_square_bracket", "r")
    await until(lambda: isinstance(app.screen, FormModal), pilot)
    form = app.screen
    assert isinstance(form, FormModal) and "through the guest agent" in form.form_title
    await pilot.press(*[c if c != " " else "space" for c in command], "enter")
    if timeout is not None:
        await pilot.press(*["backspace"] * 4, *timeout)
    await pilot.press("enter")
    # The modal is the screen before its panes are mounted: wait for the last of them.
    await until(lambda: isinstance(app.screen, ExecResultModal) and bool(app.screen.query("#result-stderr")),
                pilot, timeout=120)
    result = app.screen
    assert isinstance(result, ExecResultModal)
    return result


def shown(modal: ExecResultModal, widget_id: str) -> str:
    return str(modal.query_one(f"#{widget_id}").render())


@pytest.mark.guest
async def test_run_helper_shows_stdout_stderr_and_exit_code_through_the_agent(
    sandbox_boot_config: engine.LinuxDirectBoot,
) -> None:
    async with running_sandbox(sandbox_boot_config) as vm:
        console = await vm.console()
        app = SandboxConsoleApp(vm, console)
        async with app.run_test(size=(110, 40)) as pilot:
            screen = app.screen
            assert isinstance(screen, ConsoleScreen)
            tab = screen.active_tab
            assert tab is not None
            result = await run_helper(pilot, app, "echo out-line; echo err-line >&2; python3 -c 'print(6*7)'; exit 4")
            assert "exit code 4" in result.result_title
            assert "through the guest agent" in shown(result, "result-summary")
            assert result.stdout == b"out-line\n42\n" and result.stderr == b"err-line\n"
            assert shown(result, "result-stdout").splitlines() == ["out-line", "42"]
            assert shown(result, "result-stderr").splitlines() == ["err-line"]
            # Nothing went to the serial console: the user's shell never saw the command.
            assert "out-line" not in tab.view.all_text()
            await pilot.press("escape")
            assert isinstance(app.screen, ConsoleScreen)

            killed = await run_helper(pilot, app, "kill -TERM $$")
            assert "killed by signal 15" in killed.result_title
            await pilot.press("escape")

            late = await run_helper(pilot, app, "echo early; sleep 60", timeout="2")
            assert "timed out" in late.result_title and "2 s timeout" in shown(late, "result-summary")
            assert late.stdout == b"early\n"
            await pilot.press("escape")
