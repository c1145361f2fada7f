"""``capsa-tui serve`` without guests: --install-unit writes the unit that runs this very serve,
and bad options are named."""
from __future__ import annotations

from pathlib import Path

import pytest

from capsatui.cli import main


def test_install_unit_runs_the_same_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path / "capsa config"))
    assert main(["serve", "--install-unit", "--warm", "default=4,sandbox=2", "--grace", "30", "--no-lazy"]) == 0
    unit = tmp_path / "config" / "systemd" / "user" / "capsa-tui.service"
    text = unit.read_text()
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert "serve --warm default=4,sandbox=2 --grace 30 --no-lazy" in exec_line
    assert "--install-unit" not in exec_line
    assert f'CAPSA_CONFIG_DIR={tmp_path / "capsa config"}' in text  # the shell's settings go along
    out = capsys.readouterr().out
    assert str(unit) in out and "systemctl --user daemon-reload" in out and "journalctl --user -u capsa-tui" in out
    # a unit someone else wrote is not replaced without --force
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    assert main(["serve", "--install-unit"]) == 2
    assert "was not written by capsa-tui" in capsys.readouterr().err
    assert main(["serve", "--install-unit", "--force"]) == 0
    assert "capsa-tui" in unit.read_text().splitlines()[0]


def test_bad_warm_counts_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--warm", "default=many"])
    assert exit_info.value.code == 2
    assert "'default=many': the count must be a whole number" in capsys.readouterr().err
