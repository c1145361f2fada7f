"""One relayed TCP flow's record and its host socket: the asyncio protocols the TCP relay hands
``create_connection`` and ``create_server``.

Apart from the relay (``gateway/tcp.py``) because they are a concept of their own, the flow's
state between the guest's connection and the host's socket; the protocols see the relay only
through :class:`HostSocketOwner`, the calls a host socket makes.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from engine.netstack.config import PortForward
from engine.netstack.gateway.budget import Lease
from engine.netstack.gateway.seam import FlowKey
from engine.netstack.inspector import StreamInspector
from engine.netstack.tcp.connection import TcpConnection
from engine.netstack.tcp.segment import TcpSegment

HOST_WRITE_HIGH = 256 * 1024  # host socket write buffer above which guest bytes stop being consumed


@dataclass(eq=False)
class TcpFlow:
    """One relayed connection: the core's state, the host transport and what waits between."""

    key: FlowKey
    conn: TcpConnection | None = None
    host: asyncio.Transport | None = None
    inbound: bool = False
    local_dns: bool = False  # DNS over TCP to port 53 of any address: our resolver answers, no host socket
    dns_pending: int = 0
    outgoing: list[bytes] = field(default_factory=list)  # guest bytes for the host, this loop turn
    bytes_up: int = 0  # guest -> host
    bytes_down: int = 0  # host -> guest
    syn: TcpSegment | None = None
    early: bytearray = field(default_factory=bytearray)  # guest bytes read before the host socket
    guest_eof: bool = False
    backlog: bytearray = field(default_factory=bytearray)  # host bytes the guest window can't take
    host_eof: bool = False
    unconsumed: int = 0
    timer: asyncio.TimerHandle | None = None
    sniff_timer: asyncio.TimerHandle | None = None
    connect_task: asyncio.Task[None] | None = None
    connect_queued: bool = False  # waiting for a connect slot (MAX_CONNECTING), holding no socket
    domain: str | None = None
    closed: bool = False
    inspector: StreamInspector | None = None  # reads every name the guest presents (None: done)
    names: set[str | None] = field(default_factory=set)  # names already decided on this flow


class HostSocketOwner(Protocol):
    """The TCP relay as a flow's host socket sees it."""

    def host_connected(self, flow: TcpFlow, transport: asyncio.Transport) -> None: ...
    def from_host(self, flow: TcpFlow, data: bytes) -> None: ...
    def host_eof(self, flow: TcpFlow) -> None: ...
    def host_lost(self, flow: TcpFlow, exc: Exception | None) -> None: ...
    def host_drained(self, flow: TcpFlow) -> None: ...
    def forward_accepted(self, fwd: PortForward, transport: asyncio.Transport) -> TcpFlow | None: ...


class HostTcp(asyncio.Protocol):
    """The host socket of an outbound flow."""

    def __init__(self, relay: HostSocketOwner, flow: TcpFlow, lease: Lease | None = None) -> None:
        self.relay = relay
        self.flow = flow
        self.lease = lease
        self.has_transport = False

    def made_by_asyncio(self) -> HostTcp:
        """The protocol factory for ``create_connection``: asyncio calls it once the socket is
        connected, right before it wraps the socket in a transport."""
        self.has_transport = True
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay.host_connected(self.flow, transport)  # type: ignore[arg-type]  # asyncio hands a stream protocol a Transport; its signature says BaseTransport

    def data_received(self, data: bytes) -> None:
        self.relay.from_host(self.flow, data)

    def eof_received(self) -> bool:
        self.relay.host_eof(self.flow)
        return True  # keep our write half open: the guest may still send (half close)

    def resume_writing(self) -> None:
        self.relay.host_drained(self.flow)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lease is not None:
            self.lease.release()
        self.relay.host_lost(self.flow, exc)


class ForwardTcp(HostTcp):
    """A host client of a port forward."""

    def __init__(self, relay: HostSocketOwner, fwd: PortForward) -> None:
        self.relay = relay
        self.fwd = fwd
        self.lease = None  # a host client's socket: not the guest's doing, not in the budget
        self.flow = None  # type: ignore[assignment]  # no flow until the relay accepts; methods check

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        flow = self.relay.forward_accepted(self.fwd, transport)  # type: ignore[arg-type]  # asyncio hands a stream protocol a Transport; its signature says BaseTransport
        if flow is not None:
            self.flow = flow
            transport.set_write_buffer_limits(high=HOST_WRITE_HIGH)  # type: ignore[attr-defined]  # asyncio hands a stream protocol a Transport; its signature says BaseTransport

    def data_received(self, data: bytes) -> None:
        if self.flow is not None:
            super().data_received(data)

    def eof_received(self) -> bool:
        if self.flow is not None:
            return super().eof_received()
        return False

    def resume_writing(self) -> None:
        if self.flow is not None:
            super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.flow is not None:
            super().connection_lost(exc)
