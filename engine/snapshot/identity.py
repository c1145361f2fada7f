"""The console line that makes a VM restored from a snapshot a machine of its own (no I/O).

A clone resumes as an exact copy of its template: the same kernel random state, clock,
hostname and MAC. The engine types :func:`fixup_line` at the clone's shell prompt right after
the restore: a call of ``capsa_clone``, a function the guest's ``/etc/profile`` defines, so it
runs inside the interactive shell (under software emulation every fork, exec and typed
character right after a restore costs QEMU fresh translation work: the line is kept short and
the function forks only three small programs).

- Host entropy is written to ``/dev/urandom`` and ``capsa-reseed`` (see
  :mod:`engine.reseed_elf`) rekeys the kernel's generator at once.
- ``date -s`` sets the host's time; the hostname and ``/etc/hosts`` take the new name.
- ``ip link`` gives the NIC its new MAC; the address stays, since every VM has a gateway and a
  link of its own, which grants each clone the lease its template held. Except in a cluster
  network, where members share one subnet and the switch gives each its own address: there
  the line also carries that address and the route, and the guest's ``ip`` takes them (three
  small forks, paid by cluster clones only).
- Last, the guest's ready marker: the host hands the clone out once it has seen it.

A template is saved one step further: its shell already sits in ``read`` (:data:`AWAIT_LINE`),
so a clone of it is sent only the arguments, which the kernel's line discipline takes in
without the shell's line editor (what is left of a refill is the restore and this line).

Failures print ``capsa-clone-failed: ...`` before the marker; the engine refuses such a clone.
"""
from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Interface

from engine.errors import ConfigError
from engine.names import HOSTNAME_RE

ERROR_PREFIX = b"capsa-clone-failed: "
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

# How long a clone may take over its fix-up line, and a template's shell over AWAIT_LINE:
# under software emulation the first commands after a restore are slow.
FIXUP_TIMEOUT_S = 20.0


# Typed in a template before it is saved: its clones wake up inside ``read``.
AWAIT_LINE = b"read -r capsa_args; capsa_clone $capsa_args; unset capsa_args\n"


def fixup_line(seed: bytes, epoch: int, hostname: str, mac: str | None, *, awaiting: bool = False,
               address: tuple[IPv4Interface, IPv4Address] | None = None) -> bytes:
    """The line (with its newline) to type at the clone's prompt, or (``awaiting``: a clone of
    a template saved after :data:`AWAIT_LINE`) into its waiting ``read``. ``address``: the
    address (with its prefix) and default route the clone must take instead of its template's
    (a cluster member's own; needs ``mac``)."""
    if len(seed) < 16:
        raise ConfigError("a clone's seed must hold at least 16 bytes of entropy")
    if not HOSTNAME_RE.match(hostname):
        raise ConfigError(f"hostname {hostname!r} is not a valid host name")
    if mac is not None and not _MAC.match(mac):
        raise ConfigError(f"MAC address {mac!r} is not six lower-case hex pairs")
    if address is not None and mac is None:
        raise ConfigError("a clone is re-addressed only with its new MAC")
    words = [] if awaiting else ["capsa_clone"]
    words += [seed.hex(), str(int(epoch)), hostname] + ([mac] if mac else [])
    if address is not None:
        words += [str(address[0]), str(address[1])]
    return (" ".join(words) + "\n").encode()
