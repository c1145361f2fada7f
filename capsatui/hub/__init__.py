"""The app's hub: the one model every screen reads and drives (see :mod:`capsatui.hub.base`).

:func:`make_hub` picks the hub: for the hosts the user chose (``--host``, ``$CAPSA_HOST``, the
current context) a :class:`ServiceHub` each, shown together by a :class:`MultiHub` when there are
several; with none chosen, a :class:`ServiceHub` when a ``capsa-tui serve`` answers on this host's
socket, else :class:`LocalHub` (pools in this process).
"""
from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

import engine
from capsatui.hub.base import HISTORY, Hub, PoolState
from capsatui.hub.local import BACKLOG, LocalHub
from capsatui.hub.multi import MultiHub
from capsatui.hub.service import ServiceHub, ServiceVm

if TYPE_CHECKING:
    from capsatui.contexts import Context


def make_hub(hosts: Sequence[Context] = ()) -> Hub:
    """The hub for ``hosts`` (see the module docstring); sync and fast on purpose.

    The app's first frame must not wait: a Unix-socket connect answers at once, so it is only
    probed here; every ServiceHub connects on the app's loop when the dashboard first calls
    ``reload_profiles`` (an ssh host takes its time there, with the dashboard already drawn).
    """
    remote = [context for context in hosts if not context.is_local]
    if len(hosts) > 1:
        return MultiHub({context.name: _hub_of(context) for context in hosts})
    if remote:
        return ServiceHub(remote[0].address(), remote[0].name)
    return _this_host()


def _hub_of(context: Context) -> Hub:
    return _this_host() if context.is_local else ServiceHub(context.address(), context.name)


def _this_host() -> Hub:
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


__all__ = ["BACKLOG", "HISTORY", "Hub", "LocalHub", "MultiHub", "PoolState", "ServiceHub", "ServiceVm", "make_hub"]
