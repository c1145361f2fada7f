"""Contexts (``capsatui.contexts``): contexts.yaml read and written round trip, every mistake named
by file, line and field, the name rules, the order --host > $CAPSA_HOST > current, and the
``capsa-tui context`` commands run through ``capsatui.cli.main``."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

import engine
from capsatui import contexts
from capsatui.cli import main
from capsatui.contexts import Context


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("CAPSA_HOST", raising=False)
    return tmp_path


def _write(config_dir: Path, text: str) -> Path:
    path = config_dir / "contexts.yaml"
    path.write_text(text)
    return path


def _error(config_dir: Path, text: str) -> str:
    path = _write(config_dir, text)
    with pytest.raises(engine.ConfigError) as caught:
        contexts.load_contexts()
    message = str(caught.value)
    assert str(path) in message  # every mistake names the file
    return message


# --- the file -------------------------------------------------------------------------------

def test_the_file_is_beside_the_user_profiles_folder(config_dir: Path) -> None:
    assert contexts.contexts_path() == config_dir / "contexts.yaml"
    assert dict(engine.profile_dirs())["user"].parent == config_dir


def test_no_file_means_no_contexts_and_this_host(config_dir: Path) -> None:
    file = contexts.load_contexts()
    assert file.contexts == {} and file.current is None and file.current_context() is None
    assert file.get("local") == contexts.LOCAL_CONTEXT and file.get("local").is_local


def test_reads_every_field(config_dir: Path) -> None:
    _write(config_dir, "current: box\ncontexts:\n  box:\n    host: ssh://me@box:2222\n"
                       "    command: ~/venv/bin/capsa-tui\n    socket: /run/user/1000/capsa-tui/pool.sock\n"
                       "  here:\n    host: unix:///tmp/x/pool.sock\n")
    file = contexts.load_contexts()
    assert file.current == "box"
    assert file.contexts["box"] == Context("box", "ssh://me@box:2222", "~/venv/bin/capsa-tui",
                                           "/run/user/1000/capsa-tui/pool.sock")
    assert file.contexts["here"] == Context("here", "unix:///tmp/x/pool.sock")


def test_add_keeps_the_users_comments_and_writes_0600(config_dir: Path) -> None:
    path = _write(config_dir, "# my hosts, by hand\ncontexts:\n  box:  # the big one\n"
                              "    host: ssh://me@box   # over the VPN\n")
    contexts.add_context(Context("lab", "ssh://me@lab", socket="/run/lab.sock"), use=True)
    text = path.read_text()
    assert "# my hosts, by hand" in text and "# the big one" in text and "# over the VPN" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    file = contexts.load_contexts()
    assert file.current == "lab"
    assert list(file.contexts) == ["box", "lab"]
    assert file.contexts["lab"] == Context("lab", "ssh://me@lab", None, "/run/lab.sock")
    assert [p.name for p in config_dir.iterdir()] == ["contexts.yaml"]  # no temp file left behind


def test_add_creates_the_folder_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path / "new" / "cfg"))
    contexts.add_context(Context("box", "ssh://box"))
    path = tmp_path / "new" / "cfg" / "contexts.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert contexts.load_contexts().contexts == {"box": Context("box", "ssh://box")}


def test_use_and_remove(config_dir: Path) -> None:
    contexts.add_context(Context("box", "ssh://box"))
    contexts.add_context(Context("lab", "ssh://lab"))
    assert contexts.use_context("lab").current == "lab"
    assert contexts.remove_context("box") is False  # not the current one
    assert contexts.load_contexts().current == "lab"
    assert contexts.remove_context("lab") is True
    file = contexts.load_contexts()
    assert file.contexts == {} and file.current is None
    contexts.add_context(Context("box", "ssh://box"), use=True)
    assert contexts.use_context("local").current is None
    assert "current" not in (config_dir / "contexts.yaml").read_text()


def test_add_refuses_a_name_in_use_and_bad_hosts(config_dir: Path) -> None:
    contexts.add_context(Context("box", "ssh://box"))
    with pytest.raises(engine.ConfigError, match="a context named 'box' exists"):
        contexts.add_context(Context("box", "ssh://other"))
    with pytest.raises(engine.ServiceError, match="http://box"):
        contexts.add_context(Context("web", "http://box"))
    assert list(contexts.load_contexts().contexts) == ["box"]


def test_use_and_remove_unknown_names_list_the_known_ones(config_dir: Path) -> None:
    contexts.add_context(Context("box", "ssh://box"))
    with pytest.raises(engine.ConfigError, match=r"no context named 'nope' \(known: local, box\)"):
        contexts.use_context("nope")
    with pytest.raises(engine.ConfigError, match="no context named 'nope'"):
        contexts.remove_context("nope")
    with pytest.raises(engine.ConfigError, match="this host"):
        contexts.remove_context("local")


def test_a_broken_file_is_never_edited(config_dir: Path) -> None:
    broken = "contexts:\n  box:\n    host: ftp://box\n"
    path = _write(config_dir, broken)
    with pytest.raises(engine.ConfigError, match="line 3"):
        contexts.add_context(Context("lab", "ssh://lab"))
    assert path.read_text() == broken


def test_the_address_is_the_service_address(config_dir: Path) -> None:
    address = Context("box", "ssh://me@box:2222", "~/bin/capsa-tui", "/run/s.sock").address()
    assert (address.kind, address.host, address.user, address.port) == ("ssh", "box", "me", 2222)
    assert address.command == "~/bin/capsa-tui" and address.path == Path("/run/s.sock")
    assert Context("here", "unix:///tmp/a.sock").address() == engine.ServiceAddress.local("/tmp/a.sock")
    assert contexts.LOCAL_CONTEXT.address() == engine.ServiceAddress.local()


# --- mistakes, each named by file, line and field -------------------------------------------

def test_a_bad_host_names_its_line_and_field(config_dir: Path) -> None:
    message = _error(config_dir, "# hosts\ncontexts:\n  ok:\n    host: ssh://box\n  box:\n    host: ftp://box\n")
    assert "contexts.yaml line 6, contexts.box.host: " in message and "ftp://box" in message


def test_a_missing_host_names_the_context(config_dir: Path) -> None:
    message = _error(config_dir, "contexts:\n  box:\n    command: capsa-tui\n")
    assert "line 3, contexts.box.host: missing" in message


def test_an_empty_host_names_its_line(config_dir: Path) -> None:
    message = _error(config_dir, "contexts:\n  box:\n    socket: /s\n    host:\n")
    assert "line 4, contexts.box.host: missing" in message


def test_a_wrong_type_names_the_field(config_dir: Path) -> None:
    message = _error(config_dir, "contexts:\n  box:\n    host: ssh://box\n    socket: [a, b]\n")
    assert "line 4, contexts.box.socket: expected a non-empty string, found a list" in message


def test_unknown_fields_are_named(config_dir: Path) -> None:
    message = _error(config_dir, "contexts:\n  box:\n    host: ssh://box\n    hots: x\ncurent: box\n")
    assert "line 4, contexts.box.hots: unknown field" in message
    assert "line 5, curent: unknown field" in message


def test_every_mistake_is_reported_at_once(config_dir: Path) -> None:
    message = _error(config_dir, "contexts:\n  a:\n    host: nope\n  b:\n    host: ssh://\n")
    assert "line 3, contexts.a.host" in message and "line 5, contexts.b.host" in message


def test_current_must_name_a_context(config_dir: Path) -> None:
    message = _error(config_dir, "contexts:\n  box:\n    host: ssh://box\ncurrent: bxo\n")
    assert "line 4, current: no context named 'bxo' (known: local, box)" in message


def test_current_local_is_this_host(config_dir: Path) -> None:
    _write(config_dir, "current: local\n")
    assert contexts.load_contexts().current is None


def test_bad_names_in_the_file(config_dir: Path) -> None:
    message = _error(config_dir, "contexts:\n  Box:\n    host: ssh://box\n  local:\n    host: local\n")
    assert "line 2, contexts.Box: bad name" in message
    assert "line 4, contexts.local: bad name: 'local' is reserved" in message


def test_the_wrong_shapes(config_dir: Path) -> None:
    assert "line 1: expected a mapping" in _error(config_dir, "- a\n- b\n")
    assert "line 1, contexts: expected a mapping of names" in _error(config_dir, "contexts: [box]\n")
    assert "line 2, contexts.box: expected a mapping with host" in _error(config_dir, "contexts:\n  box: ssh://box\n")


def test_invalid_yaml_names_its_line(config_dir: Path) -> None:
    assert "line 3: invalid YAML" in _error(config_dir, "contexts:\n  box:\n    host: ssh: //box\n  x: 1\n")


def test_an_empty_file_is_no_contexts(config_dir: Path) -> None:
    _write(config_dir, "# nothing yet\n")
    assert contexts.load_contexts().contexts == {}


# --- names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["box", "b", "0box", "my-box_2", "a" * 32])
def test_good_names(name: str) -> None:
    contexts.check_name(name)


@pytest.mark.parametrize("name, why", [
    ("local", "reserved for this host"),
    ("Box", "lower-case"),
    ("-box", "starting with a letter or digit"),
    ("_box", "starting with a letter or digit"),
    ("my box", "lower-case"),
    ("box.lan", "lower-case"),
    ("", "lower-case"),
    ("a" * 33, "at most 32 characters, found 33"),
])
def test_bad_names(name: str, why: str) -> None:
    with pytest.raises(engine.ConfigError, match=why):
        contexts.check_name(name)
    with pytest.raises(engine.ConfigError, match=why):
        contexts.add_context(Context(name, "ssh://box"))


# --- which host: --host > $CAPSA_HOST > current ---------------------------------------------

@pytest.fixture
def three(config_dir: Path) -> None:
    for name in ("box", "lab", "env"):
        contexts.add_context(Context(name, f"ssh://{name}"))
    contexts.use_context("box")


def test_nothing_chosen_is_this_host(config_dir: Path) -> None:
    assert contexts.resolve_host(None) == []


def test_the_current_context_when_nothing_else(three: None) -> None:
    assert [c.name for c in contexts.resolve_host(None)] == ["box"]
    assert [c.name for c in contexts.resolve_host([])] == ["box"]


def test_capsa_host_beats_the_current_context(three: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSA_HOST", "env")
    assert [c.name for c in contexts.resolve_host(None)] == ["env"]
    monkeypatch.setenv("CAPSA_HOST", "ssh://me@elsewhere")
    assert contexts.resolve_host(None) == [Context("ssh://me@elsewhere", "ssh://me@elsewhere")]
    monkeypatch.setenv("CAPSA_HOST", "local")
    assert contexts.resolve_host(None) == [contexts.LOCAL_CONTEXT]


def test_host_options_beat_capsa_host(three: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSA_HOST", "env")
    chosen = contexts.resolve_host(["lab", "ssh://me@other:22", "local", "lab", "/tmp/x.sock"])
    assert [c.name for c in chosen] == ["lab", "ssh://me@other:22", "local", "/tmp/x.sock"]
    assert chosen[0] == Context("lab", "ssh://lab")
    assert [c.name for c in contexts.resolve_host("lab")] == ["lab"]


def test_unknown_names_say_where_they_came_from(three: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(engine.ConfigError, match=r"--host 'nope': .*no context named 'nope'.*ssh://user@host"):
        contexts.resolve_host(["nope"])
    monkeypatch.setenv("CAPSA_HOST", "nope")
    with pytest.raises(engine.ConfigError, match=r"\$CAPSA_HOST 'nope'"):
        contexts.resolve_host(None)
    with pytest.raises(engine.ConfigError, match=r"--host 'ftp://box': .*ftp://"):
        contexts.resolve_host(["ftp://box"])


def test_a_host_url_does_not_need_the_file(config_dir: Path) -> None:
    _write(config_dir, "contexts: [broken\n")
    assert [c.host for c in contexts.resolve_host(["ssh://box"])] == ["ssh://box"]
    with pytest.raises(engine.ConfigError, match="invalid YAML"):
        contexts.resolve_host(["box"])


# --- the commands ---------------------------------------------------------------------------

def test_cli_add_use_list_rm(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["context", "add", "box", "ssh://me@box:22", "--command", "/opt/capsa/bin/capsa-tui",
                 "--socket", "/run/x.sock"]) == 0
    assert main(["context", "add", "lab", "ssh://lab", "--use"]) == 0
    assert "current context: lab" in capsys.readouterr().out
    assert main(["context", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["current"] == "lab" and listing["env_override"] is None
    assert listing["file"] == str(config_dir / "contexts.yaml")
    assert listing["contexts"] == [
        {"name": "local", "host": "local", "current": False},
        {"name": "box", "host": "ssh://me@box:22", "command": "/opt/capsa/bin/capsa-tui", "socket": "/run/x.sock",
         "current": False},
        {"name": "lab", "host": "ssh://lab", "current": True},
    ]
    assert main(["context", "use", "box"]) == 0
    assert main(["context", "rm", "box"]) == 0
    out = capsys.readouterr().out
    assert "it was the current context" in out
    assert contexts.load_contexts().current is None
    assert list(contexts.load_contexts().contexts) == ["lab"]


def test_cli_list_marks_the_current_one(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["context", "add", "box", "ssh://me@box", "--use"])
    main(["context", "add", "lab", "ssh://lab"])
    capsys.readouterr()
    assert main(["context", "list"]) == 0
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line
            for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["box"].startswith("*") and not rows["lab"].startswith("*") and not rows["local"].startswith("*")


def test_cli_list_says_capsa_host_overrides(config_dir: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    main(["context", "add", "box", "ssh://me@box", "--use"])
    monkeypatch.setenv("CAPSA_HOST", "ssh://other")
    capsys.readouterr()
    assert main(["context", "list"]) == 0
    assert "$CAPSA_HOST=ssh://other is set: it overrides the current context (box)" in capsys.readouterr().out
    assert main(["context", "use", "local"]) == 0
    assert "overrides the current context" in capsys.readouterr().out


def test_cli_errors_are_one_message_and_status_2(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["context", "add", "Bad", "ssh://box"]) == 2
    assert "capsa-tui: error: context name 'Bad'" in capsys.readouterr().err
    assert main(["context", "add", "box", "box"]) == 2
    assert "cannot use 'box' as a service address" in capsys.readouterr().err
    assert main(["context", "use", "nope"]) == 2
    assert "no context named 'nope'" in capsys.readouterr().err
    assert not (config_dir / "contexts.yaml").exists()


def test_the_host_option_repeats(config_dir: Path) -> None:
    from capsatui.cli import _parser

    args = _parser().parse_args(["--host", "box", "--host", "ssh://other", "context", "list"])
    assert args.host == ["box", "ssh://other"]
    assert _parser().parse_args(["context", "list"]).host is None


def test_current_goes_first_in_a_new_file(config_dir: Path) -> None:
    contexts.add_context(Context("box", "ssh://box"), use=True)
    assert (config_dir / "contexts.yaml").read_text().startswith("current: box\n")
