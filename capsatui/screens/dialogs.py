"""Small modal dialogs the screens share: a form of text fields, a result to read, a one-key menu."""
from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

import engine



class FormModal(ModalScreen[dict[str, str] | None]):
    """A small form: labelled inputs, Enter on the last submits, Escape cancels."""

    DEFAULT_CSS = """
    FormModal { align: center middle; }
    FormModal > Vertical { width: 70; height: auto; border: thick $primary; background: $surface; padding: 1 2; }
    FormModal Horizontal { height: auto; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, fields: list[tuple[str, str, str, bool]]) -> None:
        """``fields``: (name, label, default, is_password)."""
        super().__init__()
        self.form_title = title
        self.fields = fields

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"[b]{self.form_title}[/b]")
            for name, label, default, password in self.fields:
                yield Label(label)
                yield Input(value=default, password=password, id=f"field-{name}")
            with Horizontal():
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        inputs = list(self.query(Input))
        if event.input is inputs[-1]:
            self._done()
        else:
            inputs[inputs.index(event.input) + 1].focus()

    @on(Button.Pressed, "#ok")
    def _done(self) -> None:
        self.dismiss({name: self.query_one(f"#field-{name}", Input).value for name, *_ in self.fields})

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ResultModal(ModalScreen[None]):
    """Shows a helper's result (command output, a match, an error); Escape/Enter closes."""

    DEFAULT_CSS = """
    ResultModal { align: center middle; }
    ResultModal > Vertical { width: 90%; height: 80%; border: thick $primary; background: $surface; padding: 0 1; }
    ResultModal VerticalScroll { height: 1fr; }
    """
    BINDINGS = [Binding("escape,enter,q", "dismiss_result", "Close")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.result_title = title
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"[b]{self.result_title}[/b]", id="result-title")
            with VerticalScroll():
                yield Static(self.text, markup=False, id="result-text")
            yield Button("Close", id="close")

    @on(Button.Pressed, "#close")
    def action_dismiss_result(self) -> None:
        self.dismiss(None)


def exec_status(result: engine.ExecResult) -> str:
    """How an agent exec ended, in a few words: its exit code or the signal that killed it."""
    if result.exit_code is None and result.signal is not None:
        return f"killed by signal {result.signal}"
    return f"exit code {result.exit_code}"


def exec_summary(result: engine.ExecResult) -> str:
    text = f"{exec_status(result)} after {result.duration_s:.2f} s, through the guest agent"
    if result.truncated:
        text += "; the output went past the cap and the rest was dropped"
    return text


class ExecResultModal(ModalScreen[None]):
    """An agent exec's result: a status line, then stdout and stderr in panes of their own."""

    DEFAULT_CSS = """
    ExecResultModal { align: center middle; }
    ExecResultModal > Vertical { width: 90%; height: 85%; border: thick $primary; background: $surface; padding: 0 1; }
    ExecResultModal VerticalScroll { height: 1fr; border: round $panel; }
    ExecResultModal .stream-label { color: $text-muted; }
    """
    BINDINGS = [Binding("escape,enter,q", "dismiss_result", "Close")]

    def __init__(self, title: str, summary: str, stdout: bytes, stderr: bytes) -> None:
        super().__init__()
        self.result_title = title
        self.summary = summary
        # Decoded for the screen only; the bytes stay here as the guest sent them.
        self.stdout, self.stderr = stdout, stderr

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"[b]{escape(self.result_title)}[/b]", id="result-title")
            yield Label(self.summary, markup=False, id="result-summary")
            yield Label(f"stdout ({len(self.stdout)} bytes)", classes="stream-label")
            with VerticalScroll():
                yield Static(self.stdout.decode(errors="replace"), markup=False, id="result-stdout")
            yield Label(f"stderr ({len(self.stderr)} bytes)", classes="stream-label")
            with VerticalScroll():
                yield Static(self.stderr.decode(errors="replace"), markup=False, id="result-stderr")
            yield Button("Close", id="close")

    @on(Button.Pressed, "#close")
    def action_dismiss_result(self) -> None:
        self.dismiss(None)


class HelperMenu(ModalScreen[str | None]):
    """The ``ctrl+]`` menu: press a helper's letter, or pick it from the list."""

    DEFAULT_CSS = """
    HelperMenu { align: center middle; }
    HelperMenu > OptionList { width: 60; height: auto; max-height: 80%; border: thick $primary; }
    """

    def __init__(self, helpers: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.helpers = helpers  # (key, action, label)

    def compose(self) -> ComposeResult:
        yield OptionList(*[Option(f"{key}  {label}", id=action) for key, action, label in self.helpers])

    def on_key(self, event: Any) -> None:
        keys = {key: action for key, action, _ in self.helpers}
        if event.key == "escape":
            event.stop()
            self.dismiss(None)
        elif event.character in keys:
            event.stop()
            self.dismiss(keys[event.character])

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
