"""The policy editor: a profile's network policy as an ordered table of rules, edited in place.

Every edit makes a new immutable ``engine.NetworkPolicy``; "save" writes it into the profile's
YAML through the hub (``hub.save_policy``: this host's file, or the serve's on its host; the
user's comments survive; a bundled profile becomes a user copy) and "apply" hands it to the
running pool (``hub.set_policy``), whose VMs decide new flows by it at once. The "what happens to X?" box asks the same ``evaluate`` /
``evaluate_name`` the gateway does, so it cannot disagree with it; the warnings under the rules
are ``NetworkPolicy.lint``'s, redrawn on every edit. The "require names" box is the policy's
``require_names``: ticked, a connection that presents no name (SSH, TLS without SNI) gets no
domain allow.
"""
from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Checkbox, DataTable, Input, Label, OptionList, Select, Static

import engine
from capsatui.hub.base import Hub
from capsatui.palette import BindingCommands
from capsatui.screens.help import Keys, binding_rows
from capsatui.widgets.key_footer import KeyFooter
from capsatui.widgets.live_table import LiveTable
from capsatui.widgets.rule_form import RuleForm, rule_values

# What the box assumes for a domain's address: TEST-NET-3 (RFC 5737) is public and routes
# nowhere, so it stands for "whatever public address the name resolves to".
PLACEHOLDER_IP = "203.0.113.1"
DEFAULT_PORTS = {"tcp": 443, "udp": 53}
_TARGET = re.compile(r"^(?:(?P<proto>tcp|udp)(?:://|/|\s+))?(?P<host>[^\s:]+)(?::(?P<port>\d+))?$", re.I)


def _decided_by(policy: engine.NetworkPolicy, decision: engine.Decision) -> str:
    verdict = decision.action.value.upper()
    if decision.rule_index is None:
        why = decision.rule_text or f"default {policy.default.value}"
        line = f"{verdict} by the default ({why})" if why.startswith("default") else f"{verdict}: {why}"
    else:
        line = f"{verdict} by rule {decision.rule_index + 1}: {decision.rule_text}"
    if decision.logged:
        line += "; logged by rule " + ", ".join(str(i + 1) for i in decision.logged)
    return line


def explain(policy: engine.NetworkPolicy, query: str, protected: tuple[IPv4Network, ...] = ()) -> list[str]:
    """Lines answering "what happens to X?" for a domain, an IP, ``host:port``, with ``tcp``/``udp``."""
    match = _TARGET.match(query.strip())
    if not match:
        return ["type a domain, an IP, ip:port or domain:port (optionally after tcp or udp)"]
    proto = (match["proto"] or "tcp").lower()
    host, port_text = match["host"], match["port"]
    port = int(port_text) if port_text else DEFAULT_PORTS[proto]
    if not 1 <= port <= 65535:
        return [f"port {port} is not 1-65535"]
    assumed = "" if port_text else f" (port {port} assumed; write {host}:PORT for another)"
    lines: list[str] = []
    try:
        ip, domains = IPv4Address(host), frozenset[str]()
    except ValueError:
        try:
            name = str(engine.DomainPattern.exact(host))
        except engine.PolicyError as err:
            return [f"not a domain or IPv4 address: {err.detail}"]
        lines.append(f"DNS {name}: {_decided_by(policy, policy.evaluate_name(name))}")
        ip, domains = IPv4Address(PLACEHOLDER_IP), frozenset({name})
        assumed += f" ({PLACEHOLDER_IP} stands for the address {name} resolves to)"
    if port == 53:
        # The gateway answers port 53 at every address itself (engine.netstack.gateway): no flow.
        return [*lines, f"{proto} {host}:53: answered by the gateway's own resolver, never relayed "
                        "(each name as its DNS line says)"]
    # A client that names its host (TLS SNI, HTTP Host) is what the box shows first.
    sni = next(iter(domains)) if domains and proto == "tcp" else None
    flow = engine.Flow(engine.Protocol(proto), ip, port, domains=domains, sni_or_host=sni)
    decision = policy.evaluate(flow, protected=protected)
    lines.append(f"{proto} {host}:{port}: {_decided_by(policy, decision)}{assumed}")
    if sni is not None:
        nameless = policy.evaluate(engine.Flow(engine.Protocol(proto), ip, port, domains=domains,
                                               sni_or_host=policy.presented_name(None)), protected=protected)
        if nameless.action is not decision.action:
            switch = "on" if policy.require_names else "off"
            lines.append(f"  presenting no name (SSH, TLS without SNI; require names {switch}): "
                         f"{_decided_by(policy, nameless)}")
    if decision.restricted:
        lines.append(f"off-limits address: {decision.restricted} (allowed only by a rule naming it)")
    return lines


def rule_notes(policy: engine.NetworkPolicy) -> list[str]:
    """The table's note per rule: why a rule may not do what it seems to (``NetworkPolicy.lint``)."""
    notes = ["records the flow, goes on" if r.action is engine.PolicyAction.LOG else "" for r in policy.rules]
    for warning in policy.lint():
        notes[warning.rule] = warning.note
    return notes


class PoolPicker(ModalScreen["str | None"]):
    """Asks which pool's policy to edit (when the flow log could not tell)."""

    DEFAULT_CSS = """
    PoolPicker { align: center middle; }
    PoolPicker > Vertical { width: 60; height: auto; max-height: 80%; border: thick $accent;
                            background: $surface; padding: 0 1; }
    """
    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self._names = names

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("[b]Which pool's policy?[/b]")
            yield OptionList(*self._names, id="pool-choice")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self._names[event.option_index])

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class PolicyEditorScreen(Screen[None]):
    """Edit, check, save and apply one pool's network policy."""

    COMMANDS = {BindingCommands}
    HELP_TITLE = "Policy editor (rules are tried in order; the first match decides)"

    DEFAULT_CSS = """
    PolicyEditorScreen #policy-title { height: auto; padding: 0 1; background: $boost; }
    PolicyEditorScreen #policy-top { height: 3; }
    PolicyEditorScreen #policy-top Label { padding: 1 1 0 1; }
    PolicyEditorScreen #policy-default { width: 16; }
    PolicyEditorScreen #policy-require-names { border: none; height: 3; padding: 1 1 0 1; }
    PolicyEditorScreen #policy-top Button { margin: 0 0 0 1; }
    PolicyEditorScreen #policy-rules { height: 1fr; }
    PolicyEditorScreen #policy-lint { height: auto; padding: 0 1; color: $warning; display: none; }
    PolicyEditorScreen #policy-whatif { height: auto; }
    PolicyEditorScreen #policy-whatif-result { height: auto; padding: 0 1; }
    PolicyEditorScreen #policy-status { height: auto; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("a", "add", "Add", tooltip="Add a rule (a form checked as you type)"),
        Binding("e", "edit", "Edit", tooltip="Edit the selected rule"),
        Binding("d,delete", "delete", "Delete", tooltip="Delete the selected rule"),
        Binding("ctrl+up,u", "move(-1)", "Up", tooltip="Move the selected rule up (it is tried earlier)"),
        Binding("ctrl+down,n", "move(1)", "Down", tooltip="Move the selected rule down"),
        Binding("t", "toggle_default", "Default", tooltip="Switch the default action (allow / deny)"),
        Binding("r", "toggle_require_names", "Names", show=False,
                tooltip="Require a name: a connection presenting none (SSH, TLS without SNI) gets no domain allow"),
        Binding("s,ctrl+s", "save", "Save", tooltip="Save into the profile's YAML (comments kept)"),
        Binding("p", "apply", "Apply to pool", tooltip="Apply to the running pool: new flows follow these rules"),
        Binding("slash,w", "whatif", "What if?", tooltip="What happens to a domain, IP or port? (which rule, why)"),
        Binding("escape", "close", "Back", tooltip="Back (asks once when there are unsaved edits)"),
    ]

    @classmethod
    def help_keys(cls) -> Keys:
        return [*binding_rows(cls.BINDINGS), ("enter", "Edit the selected rule"),
                ("tab", "Move between the default, the buttons, the rules and the what-if box")]

    def __init__(self, hub: Hub, pool_name: str | None, prefill_rule: engine.Rule | None = None) -> None:
        super().__init__()
        self.hub = hub
        self.pool_name = pool_name
        self.prefill_rule = prefill_rule
        self.profile: engine.Profile | None = None
        self.policy = engine.NetworkPolicy.deny_all()
        self.saved_policy = self.policy  # what the file holds, to tell unsaved edits
        self._leaving = False

    def compose(self) -> ComposeResult:
        yield Static("Network policy", id="policy-title")
        with Horizontal(id="policy-top"):
            yield Label("default:")
            yield Select([("deny", "deny"), ("allow", "allow")], value="deny", allow_blank=False, id="policy-default")
            yield Checkbox("require names", value=True, id="policy-require-names")
            yield Button("Add", id="policy-add")
            yield Button("Save", variant="primary", id="policy-save")
            yield Button("Apply to pool", id="policy-apply")
        table: DataTable[Any] = LiveTable(id="policy-rules", cursor_type="row", zebra_stripes=True)
        table.add_columns("#", "action", "criteria", "note")
        yield table
        yield Static("", id="policy-lint")
        with Vertical(id="policy-whatif"):
            yield Input(placeholder="what happens to…  e.g. x.example.com, 1.2.3.4:22, udp 8.8.8.8:53",
                        id="policy-whatif-input")
            yield Static("", id="policy-whatif-result")
        yield Static("", id="policy-status")
        yield KeyFooter()

    def on_mount(self) -> None:
        if self.pool_name is not None:
            self.load(self.pool_name)
            return
        names = self._pool_names()
        self.app.push_screen(PoolPicker(names), self._picked)

    def _pool_names(self) -> list[str]:
        states = getattr(self.hub, "states", None)
        if states is not None:
            return [s.name for s in states()]
        try:
            return [p.name for p in engine.load_profiles()]
        except engine.ProfileError as err:
            return [p.name for p in err.profiles]

    def _picked(self, name: str | None) -> None:
        if name is None:
            self.dismiss()
        else:
            self.load(name)

    # -- model ----------------------------------------------------------------------------
    def load(self, name: str) -> None:
        """Take the pool's current policy (its profile's when it is not running)."""
        self.pool_name = name
        self.profile = self.hub.profile(name)
        policy = self.hub.policy(name)
        network = self.profile.network if self.profile is not None else None
        if policy is None and isinstance(network, engine.UserNatConfig):
            policy = network.policy
        self.policy = self.saved_policy = policy or engine.NetworkPolicy.deny_all()
        if self.profile is not None and not isinstance(network, engine.UserNatConfig):
            self.status("this profile has no network; saving switches it to network mode user_nat")
        self.refresh_view()
        self.query_one("#policy-rules", DataTable).focus()
        if self.prefill_rule is not None:
            self._add(self.prefill_rule, self._prefill_index(self.prefill_rule))
            self.prefill_rule = None

    def _prefill_index(self, rule: engine.Rule) -> int | None:
        """Put a new allow just before the deny rule that decides its name, so it wins."""
        data = rule.to_dict()
        if rule.action is engine.PolicyAction.ALLOW and isinstance(data.get("domain"), str):
            decision = self.policy.evaluate_name(str(data["domain"]).removeprefix("*."))
            if decision.action is engine.PolicyAction.DENY and decision.rule_index is not None:
                return decision.rule_index
        return None

    @property
    def protected(self) -> tuple[IPv4Network, ...]:
        network = self.profile.network if self.profile is not None else None
        return (network.subnet,) if isinstance(network, engine.UserNatConfig) else ()

    def set_policy(self, policy: engine.NetworkPolicy, cursor: int | None = None) -> None:
        self.policy = policy
        self._leaving = False  # a new edit re-arms the "unsaved changes" question
        self.refresh_view(cursor)

    def refresh_view(self, cursor: int | None = None) -> None:
        table = self.query_one("#policy-rules", DataTable)
        row = table.cursor_row if cursor is None else cursor
        table.clear()
        for i, (rule, note) in enumerate(zip(self.policy.rules, rule_notes(self.policy))):
            style = {"allow": "green", "deny": "bold red", "log": "yellow"}[rule.action.value]
            table.add_row(str(i + 1), Text(rule.action.value, style=style), rule.criteria.describe(), note, key=str(i))
        if self.policy.rules:
            table.move_cursor(row=max(0, min(row, len(self.policy.rules) - 1)))
        default = self.query_one("#policy-default", Select)
        if default.value != self.policy.default.value:
            default.value = self.policy.default.value
        names = self.query_one("#policy-require-names", Checkbox)
        if names.value != self.policy.require_names:
            names.value = self.policy.require_names
        where = ""
        if self.profile is not None and self.profile.path is not None:
            where = f" — {self.profile.path} ({self.profile.source})"
        dirty = " [b]*modified*[/b]" if self.policy != self.saved_policy else ""
        self.query_one("#policy-title", Static).update(f"Network policy of [b]{self.pool_name}[/b]{where}{dirty}")
        self._update_lint()
        self._update_whatif()

    def status(self, message: str) -> None:
        self.query_one("#policy-status", Static).update(message)

    def _update_lint(self) -> None:
        # Hidden when there is nothing to say: the table keeps the room.
        warnings = self.policy.lint()
        lint = self.query_one("#policy-lint", Static)
        lint.update(Text("\n".join(f"warning: {w}" for w in warnings)))
        lint.display = bool(warnings)

    def _update_whatif(self) -> None:
        query = self.query_one("#policy-whatif-input", Input).value
        lines = explain(self.policy, query, self.protected) if query.strip() else []
        self.query_one("#policy-whatif-result", Static).update(Text("\n".join(lines)))

    def _selected(self) -> int | None:
        table = self.query_one("#policy-rules", DataTable)
        return table.cursor_row if self.policy.rules else None

    # -- actions --------------------------------------------------------------------------
    def _add(self, rule: engine.Rule | None = None, index: int | None = None) -> None:
        def done(new: engine.Rule | None) -> None:
            if new is not None:
                at = len(self.policy.rules) if index is None else index
                self.set_policy(self.policy.with_rule(new, at), at)
        self.app.push_screen(RuleForm(rule, "Add a rule"), done)

    def action_add(self) -> None:
        self._add()

    def action_edit(self) -> None:
        index = self._selected()
        if index is None:
            return
        rule = self.policy.rules[index]
        if rule_values(rule) is None:
            self.notify("this rule's nested criteria are edited in the profile's YAML", severity="warning")
            return

        def done(new: engine.Rule | None) -> None:
            if new is not None:
                self.set_policy(self.policy.replace_rule(index, new), index)
        self.app.push_screen(RuleForm(rule, f"Edit rule {index + 1}"), done)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_edit()

    def action_delete(self) -> None:
        index = self._selected()
        if index is not None:
            self.set_policy(self.policy.without_rule(index), index)

    def action_move(self, step: int) -> None:
        index = self._selected()
        if index is not None and 0 <= index + step < len(self.policy.rules):
            self.set_policy(self.policy.move_rule(index, index + step), index + step)

    def action_toggle_default(self) -> None:
        other = engine.PolicyAction.ALLOW if self.policy.default is engine.PolicyAction.DENY else engine.PolicyAction.DENY
        self.set_policy(self.policy.with_default(other))

    def action_toggle_require_names(self) -> None:
        self.set_policy(self.policy.with_require_names(not self.policy.require_names))

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        if event.checkbox.id == "policy-require-names" and event.value != self.policy.require_names:
            self.set_policy(self.policy.with_require_names(event.value))

    def on_select_changed(self, event: Select.Changed) -> None:
        # A stale event (the Select's own start-up value, arriving after load() set the
        # profile's) no longer matches the Select: only a current value is the user's choice.
        if event.value != event.select.value:
            return
        if event.select.id == "policy-default" and isinstance(event.value, str):
            if event.value != self.policy.default.value:
                self.set_policy(self.policy.with_default(engine.PolicyAction(event.value)))

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "policy-whatif-input":
            self._update_whatif()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        actions = {"policy-add": self.action_add, "policy-save": self.action_save, "policy-apply": self.action_apply}
        if event.button.id in actions:
            actions[event.button.id]()

    def action_whatif(self) -> None:
        self.query_one("#policy-whatif-input", Input).focus()

    def action_save(self) -> None:
        """Write the policy into the profile's YAML (comments kept); say where it went."""
        if self.profile is None:
            self.status(f"[red]no profile named {self.pool_name!r} to save to[/red]")
            return
        self._save(self.profile, self.policy)

    @work(exclusive=True, group="policy-save", exit_on_error=False)
    async def _save(self, profile: engine.Profile, policy: engine.NetworkPolicy) -> None:
        switched = not isinstance(profile.network, engine.UserNatConfig)
        try:
            saved = await self.hub.save_policy(profile.name, policy)
        except (engine.EngineError, OSError) as err:
            self.status(f"[red]not saved: {err}[/red]")
            return
        self.profile, self.saved_policy = saved, policy
        message = f"saved to {saved.path}"
        if self.hub.mode == "service":
            message += f" on {self.hub.where}"
        if profile.source == "bundled":
            message += " (a user copy: it overrides the bundled profile)"
        if switched:
            message += "; the profile's network is now user_nat"
        self.status(message)
        self.refresh_view()

    def action_apply(self) -> None:
        """New flows of the running pool's VMs follow this policy at once (the file is not touched)."""
        if self.pool_name is not None:
            self._apply(self.pool_name, self.policy)

    @work(exclusive=True, group="policy-apply", exit_on_error=False)
    async def _apply(self, name: str, policy: engine.NetworkPolicy) -> None:
        try:
            await self.hub.set_policy(name, policy)
        except engine.EngineError as err:
            self.status(f"[red]not applied: {err}[/red]")
            return
        unsaved = " (not saved yet: press s to keep it)" if policy != self.saved_policy else ""
        states = getattr(self.hub, "states", None)
        state = next((s for s in states() if s.name == name), None) if states else None
        if state is not None and not state.running:
            self.status(f"pool {name} is not running: it will start with this policy{unsaved}")
            return
        self.status(f"applied to pool {name}: new flows follow these rules{unsaved}")

    def action_close(self) -> None:
        if self.policy != self.saved_policy and not self._leaving:
            self._leaving = True
            self.status("[yellow]unsaved changes: press escape again to discard them, s to save[/yellow]")
            return
        self.dismiss()
