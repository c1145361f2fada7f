"""A snapshot clone's identity fix-up, run by the capsa agent (``capsa_agent.py``) on request:
a fresh random seed, clock, MAC and IPv4 address, host name. Standard library only, imported as
a sibling module in the guest.
"""
from __future__ import annotations

import os
import time

BUSYBOX = "/usr/lib/capsa/busybox"
RNDRESEEDCRNG = 0x5207
SIOCSIFHWADDR = 0x8924


def set_identity(msg: dict[str, object]) -> dict[str, str]:
    """A snapshot clone's fix-up; returns {step: why} for each step that failed."""
    import fcntl
    import socket
    import struct
    failed: dict[str, str] = {}
    seed = bytes.fromhex(str(msg.get("seed", "")))
    try:
        with open("/dev/urandom", "wb") as rnd:
            rnd.write(seed)
            rnd.flush()
            fcntl.ioctl(rnd.fileno(), RNDRESEEDCRNG)
    except OSError as err:
        failed["reseed"] = err.strerror or str(err)
    epoch = msg.get("epoch")
    try:
        time.clock_settime(time.CLOCK_REALTIME, float(epoch))  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError, OverflowError) as err:  # a time past time_t: OverflowError
        failed["clock"] = getattr(err, "strerror", None) or str(err)
    mac = msg.get("mac")
    if isinstance(mac, str):
        try:
            raw = bytes(int(part, 16) for part in mac.split(":"))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                fcntl.ioctl(sock.fileno(), SIOCSIFHWADDR, struct.pack("16sH6s8x", b"eth0", 1, raw))
        except (OSError, ValueError) as err:
            failed["mac"] = getattr(err, "strerror", None) or str(err)
    address, router = msg.get("address"), msg.get("router")
    if isinstance(address, str) and isinstance(router, str):
        for args in (["ip", "-4", "addr", "flush", "dev", "eth0"], ["ip", "addr", "add", address, "dev", "eth0"],
                     ["ip", "route", "add", "default", "via", router]):
            try:
                code = os.spawnv(os.P_WAIT, BUSYBOX, [BUSYBOX, *args])
            except OSError as err:
                code, failed["address"] = -1, f"{BUSYBOX}: {err.strerror}"
                break
            if code != 0:
                failed["address"] = f"{' '.join(args)} exited {code}"
                break
    hostname = str(msg.get("hostname", ""))
    try:
        socket.sethostname(hostname)
    except OSError as err:
        failed["hostname"] = err.strerror or str(err)
    try:
        with open("/etc/hosts", "w") as hosts:
            hosts.write(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{hostname}\n")
    except OSError as err:
        failed["hosts"] = err.strerror or str(err)
    return failed
