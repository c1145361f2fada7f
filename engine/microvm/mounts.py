"""Mounting a sandbox's shared folders in its guest, through the agent (:func:`mount_shares`).

A sandbox share is a 9p device tagged ``capsa<N>`` that the engine mounts at the share's guest
path before anyone gets the sandbox: the VmHandle runs this once, on the first agent connection
(cold boot, or a clone after its restore and identity fix-up), and ``agent()``/``wait_ready()``
return only after it. A snapshot template never mounts (9p blocks migration while mounted).
"""
from __future__ import annotations

from collections.abc import Sequence

from engine.agent.client import Agent
from engine.errors import EngineError
from engine.microvm.share import Share

__all__ = ["MountError", "mount_shares", "mount_command", "describe", "MOUNT_TIMEOUT_S"]

MOUNT_TIMEOUT_S = 30.0  # one mount under emulation takes tens of milliseconds; this bounds a wedged one


class MountError(EngineError):
    """A sandbox share could not be mounted in the guest (the VM is failed with this message)."""


def mount_command(share: Share, root: str | None = None) -> list[str]:
    """The guest command that mounts ``share`` at its guest path (argv: no shell parses the
    path), under ``root`` for an OCI sandbox (the image's root in the guest)."""
    assert share.guest_path is not None
    # sh -c with the path and tag as positional arguments: quoting by the argv, not by string building.
    script = 'mkdir -p -- "$2" && exec mount -t 9p -o "$3" -- "$1" "$2"'
    target = (root.rstrip("/") + share.guest_path) if root else share.guest_path
    return ["/bin/sh", "-c", script, "mount-share", share.tag, target, share.mount_options()]


async def mount_shares(agent: Agent, shares: Sequence[Share], timeout: float = MOUNT_TIMEOUT_S,
                       root: str | None = None) -> None:
    """Mount every share with a guest path, in order (inside ``root``, an OCI sandbox's image
    root, if given); MountError naming the host and guest path of the first that fails (its
    guest's own message quoted). The mount runs in the sandbox's system image."""
    for share in shares:
        if share.guest_path is None:
            continue  # a raw VM's share: its guest mounts it (Share.mount_line)
        where = f"share {share.host_path} at {share.guest_path} (tag {share.tag})"
        try:
            result = await agent.exec(mount_command(share, root), timeout=timeout, system=True)
        except EngineError as err:
            raise MountError(f"mounting {where} failed: {err}") from err
        if result.exit_code != 0:
            said = (result.stderr or result.stdout).decode(errors="replace").strip() or f"exit {result.exit_code}"
            raise MountError(f"mounting {where} failed in the guest: {said}")


def describe(shares: Sequence[Share]) -> str:
    """``host -> guest`` of each share (for messages)."""
    return ", ".join(f"{s.host_path} -> {s.guest_path or s.tag}" for s in shares)
