"""A form for one network policy rule, validated as the user types (the policy editor's dialog).

The form builds the same plain mapping a profile's YAML holds (``{action: deny, domain:
"*.evil.test"}``) and hands it to ``engine.Rule.from_dict``, so the messages the user sees
while typing are exactly the ones a bad profile file would get, naming the field at fault.
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

import engine

# The criteria the form edits, in the order a user would write them in YAML.
TEXT_FIELDS: tuple[tuple[str, str], ...] = (
    ("domain", "api.example.com or *.example.com"),
    ("ip", "8.8.8.8"),
    ("ip_range", "10.0.0.0/8"),
    ("port", "443"),
    ("port_range", "8000-8100"),
)
FORM_KEYS = frozenset({"any", "protocol", *(name for name, _ in TEXT_FIELDS)})
ACTIONS = [(action.value, action.value) for action in engine.PolicyAction]
PROTOCOLS = [("tcp", "tcp"), ("udp", "udp"), ("icmp", "icmp")]


def rule_values(rule: engine.Rule) -> dict[str, object] | None:
    """The form's field values for ``rule``, or None when its criteria do not fit the form
    (a nested ``all:`` or the same criterion twice: those are edited in the YAML)."""
    data = rule.to_dict()
    if not set(data) - {"action"} <= FORM_KEYS:
        return None
    return data


def build_rule(action: object, texts: dict[str, str], protocol: object, any_traffic: bool) -> engine.Rule:
    """The rule the fields describe; raises engine.PolicyError naming the bad field."""
    data: dict[str, object] = {"action": action if isinstance(action, str) else ""}
    if any_traffic:
        data["any"] = True
    if isinstance(protocol, str):
        data["protocol"] = protocol
    for name, _ in TEXT_FIELDS:
        text = texts.get(name, "").strip()
        if not text:
            continue
        # A port is a number in YAML; anything else goes through as text so the engine's
        # message quotes what the user typed ("found '99999'" reads better than a crash).
        data[name] = int(text) if name == "port" and text.isdigit() else text
    return engine.Rule.from_dict(data)


class RuleForm(ModalScreen["engine.Rule | None"]):
    """Add or edit one rule; dismisses with the new Rule, or None when cancelled."""

    DEFAULT_CSS = """
    RuleForm { align: center middle; }
    RuleForm > Vertical {
        width: 76; height: auto; max-height: 95%; border: thick $accent; background: $surface;
        padding: 0 1;
    }
    RuleForm .field { height: auto; }
    RuleForm .field Label { width: 12; padding: 1 1 0 0; }
    RuleForm .field Input, RuleForm .field Select { width: 1fr; }
    RuleForm #rule-error { color: $error; height: auto; min-height: 1; }
    RuleForm #rule-preview { color: $success; height: auto; min-height: 1; }
    RuleForm #rule-buttons { height: auto; align-horizontal: right; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "ok", "OK", show=False)]

    def __init__(self, rule: engine.Rule | None = None, title: str = "Add a rule") -> None:
        super().__init__()
        self._initial = rule_values(rule) if rule is not None else None
        self._title = title
        self.rule: engine.Rule | None = None  # the valid rule the fields describe, if any

    def compose(self) -> ComposeResult:
        values = self._initial or {"action": "allow"}
        with Vertical():
            yield Static(f"[b]{self._title}[/b]  (all criteria given must match)")
            with Horizontal(classes="field"):
                yield Label("action")
                yield Select(ACTIONS, value=str(values["action"]), allow_blank=False, id="rule-action")
            with Horizontal(classes="field"):
                yield Label("protocol")
                protocol = values.get("protocol")
                yield Select(PROTOCOLS, prompt="any protocol", id="rule-protocol",
                             value=protocol if isinstance(protocol, str) else Select.NULL)
            for name, example in TEXT_FIELDS:
                with Horizontal(classes="field"):
                    yield Label(name)
                    yield Input(str(values.get(name, "")), placeholder=example, id=f"rule-{name}")
            yield Checkbox("any traffic (no other criterion needed)", bool(values.get("any")), id="rule-any")
            yield Static("", id="rule-preview")
            yield Static("", id="rule-error")
            with Horizontal(id="rule-buttons"):
                yield Button("OK", variant="primary", id="rule-ok")
                yield Button("Cancel", id="rule-cancel")

    def on_mount(self) -> None:
        self.validate()
        # Adding a rule starts where a rule usually starts: its domain.
        self.query_one("#rule-domain", Input).focus()

    def validate(self) -> engine.Rule | None:
        """Rebuild the rule from the fields; show the engine's message or a preview."""
        texts = {name: self.query_one(f"#rule-{name}", Input).value for name, _ in TEXT_FIELDS}
        action = self.query_one("#rule-action", Select).value
        protocol = self.query_one("#rule-protocol", Select).value
        any_traffic = self.query_one("#rule-any", Checkbox).value
        error, preview = "", ""
        try:
            self.rule = build_rule(action, texts, protocol, any_traffic)
            preview = f"rule: {self.rule.describe()}"
        except engine.PolicyError as err:
            self.rule, error = None, str(err)
        self.query_one("#rule-error", Static).update(error)
        self.query_one("#rule-preview", Static).update(preview)
        self.query_one("#rule-ok", Button).disabled = self.rule is None
        return self.rule

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.validate()

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.validate()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        self.validate()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_ok()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "rule-ok":
            self.action_ok()
        else:
            self.action_cancel()

    def action_ok(self) -> None:
        # Enter in a field must not accept an invalid rule; the error stays on screen.
        if self.validate() is not None:
            self.dismiss(self.rule)

    def action_cancel(self) -> None:
        self.dismiss(None)
