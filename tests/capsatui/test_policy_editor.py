"""The policy editor: edit a profile's rules with keys, save them into its YAML, ask "what if".

The hub here is a small fake (the screens' only window on pools); the policy, the profile file
and its saving are the engine's own.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.widgets import Button, Checkbox, DataTable, Input, Static

import engine
from capsatui.hub import LocalHub
from capsatui.screens.policy_editor import PolicyEditorScreen, explain
from capsatui.widgets.rule_form import RuleForm
from tests.capsatui.screen_text import shown, wait_shown

PROFILE = """\
# A guarded pool: only DNS and HTTPS leave the VM.
name: guarded
description: "test profile"

boot: default
memory_mb: 192

network:
  mode: user_nat
  policy:
    default: deny                                  # keep this comment on the default
    rules:
      - {action: allow, protocol: udp, port: 53}   # DNS through the gateway
      - {action: allow, protocol: tcp, port: 443}  # HTTPS anywhere
# A trailing comment the editor must leave alone.
"""


class FakeHub:
    """Just the hub methods the policy screens call; records applied policies."""

    def __init__(self, profiles: dict[str, engine.Profile]) -> None:
        self.profiles = profiles
        self.applied: list[tuple[str, engine.NetworkPolicy]] = []
        self.events: list[engine.FlowEvent] = []

    def profile(self, name: str) -> engine.Profile | None:
        return self.profiles.get(name)

    def policy(self, name: str) -> engine.NetworkPolicy | None:
        profile = self.profiles.get(name)
        network = profile.network if profile else None
        return network.policy if isinstance(network, engine.UserNatConfig) else None

    mode = "local"
    where = "this host"

    async def set_policy(self, name: str, policy: engine.NetworkPolicy) -> None:
        self.applied.append((name, policy))

    async def save_policy(self, name: str, policy: engine.NetworkPolicy) -> engine.Profile:
        # the real LocalHub writes the file: what the app does in-process
        hub = LocalHub()
        await hub.reload_profiles()
        saved = self.profiles[name] = await hub.save_policy(name, policy)
        return saved

    def recent_events(self) -> list[engine.FlowEvent]:
        return list(self.events)

    async def flow_events(self) -> Any:
        return
        yield  # an async generator that ends at once

    def subscribe(self, callback: Any) -> None:
        pass


class ScreenApp(App[None]):
    """A bare app that shows one screen (the real CapsaApp is not needed to test a screen)."""

    def __init__(self, screen: Any) -> None:
        super().__init__()
        self._first = screen

    def on_mount(self) -> None:
        self.push_screen(self._first)


@pytest.fixture
def profile_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path))
    folder = tmp_path / "profiles"
    folder.mkdir()
    path = folder / "guarded.yaml"
    path.write_text(PROFILE, encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def _guarded_editor() -> AsyncIterator[tuple[ScreenApp, PolicyEditorScreen, Any, DataTable]]:
    """The editor of the profile file ``guarded``, running, with its rules table."""
    editor = PolicyEditorScreen(FakeHub({"guarded": engine.find_profile("guarded")}), "guarded")
    app = ScreenApp(editor)
    async with app.run_test(size=(110, 40)) as pilot:
        await pilot.pause()
        yield app, editor, pilot, editor.query_one("#policy-rules", DataTable)


async def _type(pilot: Any, text: str) -> None:
    await pilot.press(*text)


async def test_add_deny_rule_move_up_save_keeps_comments(profile_file: Path) -> None:
    async with _guarded_editor() as (app, editor, pilot, table):
        assert table.row_count == 2
        await pilot.press("a")
        form = app.screen
        assert isinstance(form, RuleForm)
        # The action select: open it, go down from "allow" to "deny", pick it.
        form.query_one("#rule-action").focus()
        await pilot.press("enter", "down", "enter")
        await pilot.click("#rule-domain")
        await _type(pilot, "*.evil.test")
        await pilot.pause()
        assert form.rule == engine.Rule(engine.PolicyAction.DENY, engine.MatchCriteria.domain("*.evil.test"))
        await pilot.press("enter")  # Enter in a valid form accepts it
        await pilot.pause()
        assert app.screen is editor
        assert [r.describe() for r in editor.policy.rules][-1] == "deny domain *.evil.test"
        assert table.cursor_row == 2
        await pilot.press("u")  # move it up, above the HTTPS allow
        assert editor.policy.rules[1].describe() == "deny domain *.evil.test"
        assert "modified" in str(editor.query_one("#policy-title", Static).render())
        await pilot.press("s")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert "saved to" in str(editor.query_one("#policy-status", Static).render())

    reloaded = engine.load_profile(profile_file)
    assert isinstance(reloaded.network, engine.UserNatConfig)
    assert [r.describe() for r in reloaded.network.policy.rules] == [
        "allow protocol udp and port 53", "deny domain *.evil.test", "allow protocol tcp and port 443"]
    text = profile_file.read_text(encoding="utf-8")
    for comment in ("# A guarded pool", "# keep this comment on the default", "# DNS through the gateway",
                    "# HTTPS anywhere", "# A trailing comment the editor must leave alone."):
        assert comment in text, text
    assert text.index("*.evil.test") < text.index("port: 443")


async def test_what_happens_to_a_denied_name(profile_file: Path) -> None:
    policy = engine.NetworkPolicy.deny_all().allow_dns().deny_domain("*.evil.test").allow_https()
    hub = FakeHub({"guarded": engine.find_profile("guarded")})
    hub.policy = lambda name: policy  # type: ignore[method-assign]  # a running pool's own policy
    editor = PolicyEditorScreen(hub, "guarded")
    app = ScreenApp(editor)
    async with app.run_test(size=(110, 40)) as pilot:
        await pilot.pause()
        await pilot.press("slash")
        await _type(pilot, "x.evil.test")
        await pilot.pause()
        shown = str(editor.query_one("#policy-whatif-result", Static).render())
        assert "DNS x.evil.test: DENY by rule 2: deny domain *.evil.test" in shown, shown
        assert "tcp x.evil.test:443: DENY by rule 2" in shown, shown
        # Apply hands the policy to the pool (the hub's set_policy), file untouched.
        editor.query_one("#policy-rules", DataTable).focus()
        await pilot.press("p")
        await pilot.app.workers.wait_for_complete()
        assert hub.applied == [("guarded", policy)]


def test_explain_addresses_ports_and_restricted() -> None:
    policy = engine.NetworkPolicy.allow_all().log(engine.MatchCriteria.port(22)).deny_port(22)
    lines = explain(policy, "udp 8.8.8.8:53")
    assert lines == ["udp 8.8.8.8:53: answered by the gateway's own resolver, never relayed "
                     "(each name as its DNS line says)"]
    lines = explain(policy, "1.2.3.4:22")
    assert lines == ["tcp 1.2.3.4:22: DENY by rule 2: deny port 22; logged by rule 1"]
    lines = explain(policy, "10.1.2.3:80")
    assert lines[0].startswith("tcp 10.1.2.3:80: DENY: deny 10.1.2.3: private (10.0.0.0/8)")
    assert lines[1].startswith("off-limits address: private")
    assert "not a domain" in explain(policy, "bad_name!")[0] or "type a domain" in explain(policy, "bad_name!")[0]


def test_explain_shows_what_require_names_does_to_a_nameless_connection() -> None:
    policy = engine.NetworkPolicy.deny_all().allow_dns().allow_domain("ok.test")
    lines = explain(policy, "ok.test:22")
    assert lines[0] == "DNS ok.test: ALLOW by rule 2: allow domain ok.test"
    assert lines[1].startswith("tcp ok.test:22: ALLOW by rule 2: allow domain ok.test")
    assert lines[2].startswith("  presenting no name (SSH, TLS without SNI; require names on): DENY")
    assert "allows by name only" in lines[2]
    assert len(explain(policy.with_require_names(False), "ok.test:22")) == 2  # both ways allowed


async def test_rule_form_shows_errors_as_you_type_and_disables_ok(profile_file: Path) -> None:
    form = RuleForm()
    app = ScreenApp(form)
    async with app.run_test(size=(110, 40)) as pilot:
        await pilot.pause()
        ok = form.query_one("#rule-ok", Button)
        assert ok.disabled  # no criteria yet
        assert "no criteria" in str(form.query_one("#rule-error", Static).render())
        await pilot.click("#rule-port")
        await _type(pilot, "99999")
        await pilot.pause()
        error = str(form.query_one("#rule-error", Static).render())
        assert "port: expected a port number 1-65535, found 99999" in error
        assert ok.disabled
        await pilot.press("enter")  # Enter must not accept the invalid rule
        assert app.screen is form
        form.query_one("#rule-port", Input).value = "8080"
        await pilot.pause()
        assert not ok.disabled and str(form.query_one("#rule-error", Static).render()) == ""
        assert form.rule is not None and form.rule.describe() == "allow port 8080"


def test_editor_snapshot(snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path))
    # A fixed path so the title does not change between runs (the file is never written here).
    profile = engine.parse_profile(PROFILE, path=Path("/profiles/guarded.yaml"), source="user")
    policy = (engine.NetworkPolicy.deny_all().allow_dns().deny_domain("*.evil.test").allow_https()
              .log(engine.MatchCriteria.any()).allow_domain("*.debian.org"))
    hub = FakeHub({"guarded": profile})
    hub.policy = lambda name: policy  # type: ignore[method-assign]  # the pool runs this policy

    async def drawn(pilot: Any) -> None:
        # Every rule drawn at its settled column widths (see tests/capsatui/screen_text.py).
        await wait_shown(pilot, r"^ 1 +allow +protocol udp and port 53", r"^ 4 +log +any +records the flow, goes on",
                         r"^ 5 +allow +domain \*\.debian\.org", r"default: .*deny")
        await pilot.pause()

    assert snap_compare(ScreenApp(PolicyEditorScreen(hub, "guarded")), terminal_size=(110, 30), run_before=drawn)


async def test_edit_delete_move_down_then_reopen_the_saved_file(profile_file: Path) -> None:
    async with _guarded_editor() as (app, editor, pilot, table):
        table.focus()
        # Edit rule 2 (the HTTPS allow): the form opens filled in; make it port 8443.
        table.move_cursor(row=1)
        await pilot.press("e")
        form = app.screen
        assert isinstance(form, RuleForm)
        port = form.query_one("#rule-port", Input)
        assert port.value == "443"
        port.focus()
        await pilot.press("ctrl+u", *"8443", "enter")
        await pilot.pause()
        assert app.screen is editor
        assert [r.describe() for r in editor.policy.rules] == [
            "allow protocol udp and port 53", "allow protocol tcp and port 8443"]
        # Move rule 1 down, below it; then delete what is now rule 2 (the DNS allow).
        table.move_cursor(row=0)
        await pilot.press("n")
        assert [r.describe() for r in editor.policy.rules] == [
            "allow protocol tcp and port 8443", "allow protocol udp and port 53"]
        assert table.cursor_row == 1  # the cursor follows the moved rule
        await pilot.press("d")
        assert [r.describe() for r in editor.policy.rules] == ["allow protocol tcp and port 8443"]
        await pilot.press("t")  # the default flips to allow
        assert editor.policy.default is engine.PolicyAction.ALLOW
        await pilot.press("s")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert "saved to" in str(editor.query_one("#policy-status", Static).render())

    # A fresh editor on the reloaded profile shows what was saved; the file kept its comments.
    async with _guarded_editor() as (app, editor, pilot, table):
        assert table.row_count == 1 and "tcp and port 8443" in str(table.get_row_at(0)[2])
        assert editor.policy.default is engine.PolicyAction.ALLOW
    assert "# A trailing comment the editor must leave alone." in profile_file.read_text(encoding="utf-8")


NET_POOL = """\
name: netpool
memory_mb: 192
pool:
  size: 1
  max_size: 1
network:
  mode: user_nat
  policy:
    default: deny   # nothing leaves
"""


@pytest.mark.guest
async def test_apply_to_a_running_pool_changes_its_next_flows(
        boot: engine.LinuxDirectBoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from capsatui.hub import LocalHub
    from tests.waiting import collect, until

    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "netpool.yaml").write_text(NET_POOL, encoding="utf-8")
    hub = LocalHub()
    seen, collector = collect(hub.flow_events())
    try:
        await hub.reload_profiles()
        await hub.start_pool("netpool")
        vm = await hub.reserve("netpool", timeout=90)
        # Its only VM was reserved while the pool started (max_size 1): the pool runs all the same.
        await until(lambda: next(s for s in hub.states() if s.name == "netpool").running, 10, "the pool running")
        console = await vm.console()
        probe = "timeout 5 nc 203.0.113.9 8081 </dev/null"
        await console.run(probe, timeout=30)
        assert any(e.dst == "203.0.113.9" and e.action == "deny" for e in seen)

        editor = PolicyEditorScreen(hub, "netpool")
        app = ScreenApp(editor)
        async with app.run_test(size=(110, 40)) as pilot:
            await pilot.pause()
            await pilot.press("a")
            assert isinstance(app.screen, RuleForm)
            await pilot.click("#rule-ip")
            await pilot.press(*"203.0.113.9", "enter")
            await pilot.pause()
            assert app.screen is editor
            await pilot.press("p")  # apply to the running pool: the file is not written
            assert "applied to pool netpool" in str(editor.query_one("#policy-status", Static).render())
        before = len(seen)
        await console.run(probe, timeout=30)
        await until(lambda: any(e.dst == "203.0.113.9" and e.action == "allow" for e in seen[before:]), 10,
                    "an allowed flow after the apply")
        assert "203.0.113.9" not in (tmp_path / "profiles" / "netpool.yaml").read_text(encoding="utf-8")
        await hub.release(vm)
    finally:
        await hub.close()
    await asyncio.wait_for(collector, 5)


async def test_lint_warns_of_a_shadowed_rule_as_you_edit(profile_file: Path) -> None:
    """``NetworkPolicy.lint`` under the rules: a catch-all moved above a rule hides that rule."""
    async with _guarded_editor() as (app, editor, pilot, table):
        lint = "#policy-lint"
        assert not editor.query_one(lint, Static).display
        await pilot.press("a")
        form = app.screen
        assert isinstance(form, RuleForm)
        form.query_one("#rule-action").focus()
        await pilot.press("enter", "down", "enter")  # deny
        await pilot.click("#rule-any")  # any traffic
        await pilot.pause()
        assert form.rule == engine.Rule(engine.PolicyAction.DENY, engine.MatchCriteria.any())
        await pilot.click("#rule-ok")
        await pilot.pause()
        assert app.screen is editor and table.cursor_row == 2
        assert not editor.query_one(lint, Static).display  # last: it hides nothing
        await pilot.press("u")  # above the HTTPS allow
        await wait_shown(pilot, r"warning: rule 3 \(allow protocol tcp and port 443\) is never reached: "
                                r"rule 2 matches all traffic")
        await pilot.press("n")  # back below it: the warning goes
        await pilot.pause()
        assert not editor.query_one(lint, Static).display
        assert "never reached" not in shown(app)


async def test_require_names_box_toggles_and_saves(profile_file: Path) -> None:
    async with _guarded_editor() as (app, editor, pilot, table):
        assert editor.policy.require_names
        await pilot.press("r")
        await pilot.pause()
        assert not editor.policy.require_names
        assert editor.query_one("#policy-require-names", Checkbox).value is False
        await pilot.press("s")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
    reloaded = engine.load_profile(profile_file)
    assert isinstance(reloaded.network, engine.UserNatConfig)
    assert reloaded.network.policy.require_names is False
    text = profile_file.read_text(encoding="utf-8")
    assert "require_names: false" in text and "# A guarded pool" in text, text
