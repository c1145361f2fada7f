"""What the real-guest network tests share: a booted VM with its console and flow events.

Each test file builds its own VM (its own network, policy and loopback servers) and runs it
for the module through :func:`running_net_vm`; :meth:`NetVm.sh` runs a guest command.
:func:`serve_stub_resolver` is the DNS upstream those VMs' gateways ask, on loopback.
"""
from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

import engine
from tests.waiting import collect


@dataclass
class NetVm:
    """A running VM, its console and every flow event of its gateway since the last clear."""

    vm: engine.VmHandle
    console: engine.Console
    events: list[engine.FlowEvent]

    async def sh(self, command: str, timeout: float = 60) -> engine.CommandResult:
        return await self.console.run(command, timeout=timeout)


@contextlib.asynccontextmanager
async def running_net_vm(builder: engine.VmBuilder, ready_timeout: float = 90) -> AsyncIterator[NetVm]:
    """Build the VM, follow its flow events, wait for its shell; kill it on exit."""
    vm = await builder.console_enabled().build()
    events, collector = collect(vm.network_events())
    try:
        await vm.wait_ready(ready_timeout)
        yield NetVm(vm, await vm.console(), events)
    finally:
        collector.cancel()
        await vm.kill()


def serve_stub_resolver(sock: socket.socket, address_of: Callable[[str], str | None],
                        questions: list[str] | None = None) -> None:
    """Answer DNS over UDP on the bound ``sock`` in a daemon thread, until it is closed: a name
    ``address_of`` gives an address has that A record (its other types: no data); any other name
    is NXDOMAIN. Every name asked (no final dot) is appended to ``questions``."""

    def serve() -> None:
        while True:
            try:
                data, client = sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True)
            if questions is not None:
                questions.append(name)
            reply = dns.message.make_response(query)
            address = address_of(name)
            if address is None:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A:
                reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", address))
            sock.sendto(reply.to_wire(), client)

    threading.Thread(target=serve, daemon=True).start()
