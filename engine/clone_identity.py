"""The console line that makes a VM restored from a snapshot a machine of its own (no I/O).

A clone resumes as an exact copy of its template: the same kernel random state, clock,
hostname and MAC. The engine types :func:`fixup_line` at the clone's shell prompt right after
the restore. It is one line of shell builtins plus two small programs, typed straight into the
interactive shell rather than run as a script: under software emulation every fork and exec
right after a restore costs tens of milliseconds (QEMU translates the guest's code anew).

- Host entropy is written to ``/dev/urandom`` and ``capsa-reseed`` (see
  :mod:`engine.reseed_elf`) rekeys the kernel's generator at once.
- ``date -s`` sets the host's time; the hostname and ``/etc/hosts`` take the new name.
- ``ip link`` gives the NIC its new MAC; the address stays, since every VM has a gateway and a
  link of its own, which grants each clone the lease its template held.
- Last, the guest's ready marker: the host hands the clone out once it has seen it.

Failures print ``capsa-clone-failed: ...`` before the marker; the engine refuses such a clone.
"""
from __future__ import annotations

import re

from engine.errors import ConfigError

ERROR_PREFIX = b"capsa-clone-failed: "
# Typed with an empty quote inside, so the echo of the typed line never reads as a failure.
_FAIL = "echo capsa-clone''-failed:"
_HOSTNAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# ash's printf turns the escapes into the marker; the typed text itself holds none of it.
_MARKER_PRINTF = r"printf '\033]777;capsa-ready\007'"


def fixup_line(seed: bytes, epoch: int, hostname: str, mac: str | None) -> bytes:
    """The line (with its newline) to type at the clone's prompt."""
    if len(seed) < 16:
        raise ConfigError("a clone's seed must hold at least 16 bytes of entropy")
    if not _HOSTNAME.match(hostname):
        raise ConfigError(f"hostname {hostname!r} is not a valid host name")
    if mac is not None and not _MAC.match(mac):
        raise ConfigError(f"MAC address {mac!r} is not six lower-case hex pairs")
    steps = [
        f"echo {seed.hex()} >/dev/urandom",
        f"{{ /bin/capsa-reseed || {_FAIL} the kernel refused to reseed its random generator; }}",
        f"date -s @{int(epoch)} >/dev/null",
        f"echo {hostname} >/proc/sys/kernel/hostname",
        rf"printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t%s\n' {hostname} >/etc/hosts",
    ]
    if mac is not None:
        steps.append(f"{{ ip link set eth0 address {mac} || {_FAIL} could not set the MAC address; }}")
    steps.append(_MARKER_PRINTF)
    return (";".join(steps) + "\n").encode()
