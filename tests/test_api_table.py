"""README's table of capsa's API stays true: every Python name in it resolves against the
engine's public classes, every "n/a" says why, and every method of capsa's configuration
reference has a row."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import engine

README = Path(__file__).resolve().parents[1] / "README.md"

# The builder, handle, console, pool, sandbox and agent calls of capsa's configuration
# reference (docs "Configuration Reference"), as the table's first column spells them.
CAPSA_CALLS = """
LinuxDirectBootConfig::new .with_root_disk UefiBootConfig::new .with_efi_variable_store DiskImage::new
DiskImage::with_format DiskImage::read_only Capsa::vm .cpus .memory_mb .timeout .console_enabled .network
.share .vsock_listen .vsock_listen_at .vsock_connect .vsock_connect_at .disk .cmdline_arg .cmdline_flag
.cmdline_override .build NetworkMode::None NetworkMode::Nat NetworkMode::UserNat NetworkMode::user_nat
.subnet .forward_tcp .forward_udp .policy NetworkMode::cluster NetworkPolicy::deny_all
NetworkPolicy::allow_all .allow_dns .allow_https .allow_port .allow_ip .allow_ip_range .allow_domain
.deny_domain .rule vm.start vm.stop vm.stop_with_timeout vm.kill vm.wait vm.wait_timeout vm.status
VmStatus::Created VmStatus::Starting VmStatus::Running VmStatus::Stopping VmStatus::Stopped
VmStatus::Failed vm.console vm.vsock_socket vm.vsock_sockets vm.resources vm.guest_os console.wait_for
console.wait_for_timeout console.wait_for_any console.read_available console.write console.write_str
console.write_line console.exec console.run_command console.send_interrupt console.send_eof
console.login console.split Capsa::pool pool.reserve pool.try_reserve pool.available_count
Capsa::sandbox .run .oci sandbox::agent_port sandbox::wait_ready agent.ping agent.exec agent.read_file
agent.write_file agent.exists agent.list_dir agent.info agent.shutdown
""".split()


def _rows() -> list[tuple[str, str, str]]:
    text = README.read_text()
    match = re.search(r"<!-- api-table -->\n(.*?)<!-- /api-table -->", text, re.S)
    assert match, "README.md has no <!-- api-table --> ... <!-- /api-table --> section"
    rows = []
    for line in match.group(1).splitlines()[2:]:  # past the header and its rule
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"README api table row has {len(cells)} cells, not 3: {line}"
        rows.append((cells[0], cells[1], cells[2]))
    return rows


def _call_name(capsa: str) -> str:
    """``vm.stop_with_timeout(Duration)`` -> ``vm.stop_with_timeout``; ``.build()`` of a pool -> ``.build``."""
    code = re.match(r"`([^`(]*)", capsa)
    assert code, f"capsa cell {capsa!r} does not start with a `call`"
    return code.group(1).split(" {")[0]


def resolve(name: str) -> object:
    """``Class.method`` (or ``func().method``) against ``engine``'s public names."""
    parts = name.split(".")
    head = parts[0]
    assert head in engine.__all__, f"{head!r} is not a public name of engine"
    obj: object = getattr(engine, head)
    for part in parts[1:]:
        call = part.endswith("()")
        attr = part[:-2] if call else part
        assert hasattr(obj, attr), f"{name}: {obj!r} has no {attr!r}"
        obj = getattr(obj, attr)
        if call:
            assert callable(obj)
            obj = obj()
    return obj


def test_every_engine_name_in_the_table_resolves() -> None:
    rows = _rows()
    assert len(rows) >= len(CAPSA_CALLS)
    for capsa, ours, notes in rows:
        if ours == "n/a":
            assert notes, f"{capsa}: 'n/a' needs a reason in the notes"
            continue
        name = re.fullmatch(r"`([A-Za-z_][\w.()]*)`", ours)
        assert name, f"{capsa}: engine cell {ours!r} is neither `Name.method` nor n/a"
        resolve(name.group(1))


def test_every_capsa_call_has_a_row() -> None:
    listed = {_call_name(capsa) for capsa, _ours, _notes in _rows()}
    missing = [call for call in CAPSA_CALLS if call not in listed]
    assert missing == []


@pytest.mark.parametrize("bad", ["NoSuchName", "VmHandle.no_such_method", "NetworkMode.user_nat().nope"])
def test_a_wrong_name_fails_to_resolve(bad: str) -> None:
    with pytest.raises(AssertionError):
        resolve(bad)
