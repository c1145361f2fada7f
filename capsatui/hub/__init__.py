"""The app's hub: the one model every screen reads and drives (see :mod:`capsatui.hub.base`).

:func:`make_hub` picks the hub: :class:`ServiceHub` when a ``capsa-tui serve`` answers on its
socket, else :class:`LocalHub` (pools in this process).
"""
from __future__ import annotations

import socket

import engine
from capsatui.hub.base import HISTORY, Hub, PoolState
from capsatui.hub.local import BACKLOG, LocalHub
from capsatui.hub.service import NOT_HERE, ServiceHub, ServiceVm


def make_hub() -> Hub:
    """A :class:`ServiceHub` when a ``capsa-tui serve`` answers, else a :class:`LocalHub`.

    Sync and fast on purpose (the app's first frame must not wait): a Unix-socket connect answers
    at once, so it is only probed here; the ServiceHub's client connects on the app's loop when
    the dashboard first calls ``reload_profiles``.
    """
    path = engine.service_socket_path()
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except OSError:
        return LocalHub()
    finally:
        probe.close()
    return ServiceHub(path)


__all__ = ["BACKLOG", "HISTORY", "NOT_HERE", "Hub", "LocalHub", "PoolState", "ServiceHub", "ServiceVm", "make_hub"]
