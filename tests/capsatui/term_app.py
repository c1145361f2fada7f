"""An app of one :class:`TerminalView` whose guest is a list: what the view writes is kept."""
from __future__ import annotations

from textual.app import App, ComposeResult

from capsatui.widgets.terminal.view import TerminalView


class TermApp(App[None]):
    """The view alone; ``written`` holds every write it made, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    async def _write(self, data: bytes) -> None:
        self.written.append(data)

    def compose(self) -> ComposeResult:
        yield TerminalView(self._write)
