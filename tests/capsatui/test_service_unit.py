"""The systemd user unit of ``capsa-tui serve`` (``capsatui.service_unit``): its text, ExecStart
quoting systemd reads back word for word, no overwriting of a unit we did not write, and
``systemd-analyze verify`` of what is written (when this machine has systemd-analyze)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import engine
from capsatui import service_unit
from capsatui.service_unit import install_unit, quote_exec_word, unit_text

ROOT = Path(__file__).resolve().parents[2]


def _keys(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_unit_runs_serve_and_stops_it_gently() -> None:
    keys = _keys(unit_text(["/home/me/.local/bin/capsa-tui", "serve", "--warm", "default=4,sandbox=2"], {}))
    assert keys["ExecStart"] == ["/home/me/.local/bin/capsa-tui serve --warm default=4,sandbox=2"]
    assert keys["Restart"] == ["on-failure"] and keys["KillSignal"] == ["SIGTERM"]
    assert keys["KillMode"] == ["mixed"]  # SIGTERM to serve alone; it stops its own VMs
    assert int(keys["TimeoutStopSec"][0]) > 30  # past a VM's 30 s stop grace
    assert keys["WantedBy"] == ["default.target"]
    assert "Environment" not in keys and "ListenStream" not in keys


def test_the_first_line_is_the_marker_and_socket_activation_is_explained() -> None:
    text = unit_text(["/usr/bin/capsa-tui", "serve"], {})
    assert text.splitlines()[0].startswith(service_unit.MARKER)
    assert "Not socket-activated" in text and "warm" in text


@pytest.mark.parametrize("word, spelled", [
    ("serve", "serve"),
    ("/opt/my apps/capsa-tui", '"/opt/my apps/capsa-tui"'),
    ("100%", "100%%"),
    ("$HOME", "$$HOME"),
    ('say "hi"', r'"say \"hi\""'),
    (r"a\b", r'"a\\b"'),
    ("", '""'),
    (";", '";"'),
    ("two\nlines", r'"two\nlines"'),
])
def test_exec_words_are_quoted_for_systemd(word: str, spelled: str) -> None:
    assert quote_exec_word(word) == spelled


def test_exec_start_of_a_path_with_a_space_and_a_percent() -> None:
    text = unit_text(["/home/me/my tools/100%/capsa-tui", "serve", "--socket", "/run/a b.sock"], {})
    assert 'ExecStart="/home/me/my tools/100%%/capsa-tui" serve --socket "/run/a b.sock"' in text.splitlines()


def test_environment_lines_are_quoted_and_checked() -> None:
    keys = _keys(unit_text(["/usr/bin/capsa-tui", "serve"], {"CAPSA_SOCKET": "/run/x y.sock", "A": '50%"'}))
    assert keys["Environment"] == [r'"A=50%%\""', '"CAPSA_SOCKET=/run/x y.sock"']
    with pytest.raises(engine.ConfigError, match="'1BAD'"):
        unit_text(["/usr/bin/capsa-tui"], {"1BAD": "x"})


def test_the_program_must_be_an_absolute_path() -> None:
    with pytest.raises(engine.ConfigError, match="'capsa-tui': expected an absolute path"):
        unit_text(["capsa-tui", "serve"], {})
    with pytest.raises(engine.ConfigError, match="absolute path"):
        unit_text([], {})


def test_install_writes_and_replaces_its_own_unit(tmp_path: Path) -> None:
    path = install_unit(["/usr/bin/capsa-tui", "serve"], unit_dir=tmp_path / "systemd" / "user")
    assert path == tmp_path / "systemd" / "user" / "capsa-tui.service"
    assert path.read_text() == unit_text(["/usr/bin/capsa-tui", "serve"], {})
    assert (path.stat().st_mode & 0o777) == 0o644
    install_unit(["/usr/bin/capsa-tui", "serve", "--warm", "default=2"], unit_dir=path.parent)  # ours: replaced
    assert "serve --warm default=2" in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["capsa-tui.service"]  # no temp file left


def test_install_refuses_a_unit_it_did_not_write(tmp_path: Path) -> None:
    path = tmp_path / "capsa-tui.service"
    mine = "[Service]\nExecStart=/opt/capsa/bin/capsa-tui serve\n"
    path.write_text(mine)
    with pytest.raises(engine.ConfigError, match=f"{path} exists and was not written by capsa-tui.*--force"):
        install_unit(["/usr/bin/capsa-tui", "serve"], unit_dir=tmp_path)
    assert path.read_text() == mine
    install_unit(["/usr/bin/capsa-tui", "serve"], unit_dir=tmp_path, force=True)
    assert path.read_text().startswith(service_unit.MARKER)


def test_the_default_folder_follows_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert service_unit.user_unit_dir() == tmp_path / "cfg" / "systemd" / "user"
    assert install_unit(["/usr/bin/capsa-tui", "serve"]) == tmp_path / "cfg" / "systemd" / "user" / "capsa-tui.service"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/cfg")  # the XDG spec says to ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert service_unit.user_unit_dir() == tmp_path / "home" / ".config" / "systemd" / "user"


def test_the_running_command_is_absolute() -> None:
    argv = service_unit.running_command()
    assert os.path.isabs(argv[0]) and os.access(argv[0], os.X_OK)


def test_the_deploy_unit_matches_the_written_one() -> None:
    shipped = _keys((ROOT / "deploy" / "capsa-tui.service").read_text())
    written = _keys(unit_text(["/x/capsa-tui", "serve"], {}))
    assert shipped.pop("ExecStart") == ["%h/.local/bin/capsa-tui serve"]
    written.pop("ExecStart")
    assert shipped == written


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_reads_the_unit_back(tmp_path: Path) -> None:
    # A real program at a path with a space and "%h" (a specifier systemd would expand to the
    # home folder): verify checks that ExecStart's program is executable, so a quoting mistake
    # shows up as a missing file.
    program = tmp_path / "my tools" / "50%h" / "capsa-tui"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    path = install_unit([str(program), "serve", "--warm", "default=4"], environment={"CAPSA_SOCKET": "/run/a b"},
                        unit_dir=tmp_path / "units")
    runtime = tmp_path / "runtime"  # a user manager needs one, and a test run may have none
    runtime.mkdir(mode=0o700)
    res = subprocess.run(["systemd-analyze", "--user", "verify", str(path)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    problems = [line for line in (res.stdout + res.stderr).splitlines() if "capsa-tui.service" in line]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr
