"""A served VM's console as the one :class:`~engine.console.console.Console`.

:func:`remote_console` attaches to a VM through a :class:`ServiceClient` and puts a
:class:`~engine.console.stream.ConsoleStream` over the attachment: its output is the stream's
:class:`~engine.console.transport.ByteSource`, :class:`AttachmentSink` types through the
service. So ``wait_for``, ``exec``, ``run`` and ``login`` of a served VM are the engine's own,
on the bytes the serve relays (nothing here re-implements them).
"""
from __future__ import annotations

from engine.console.console import Console
from engine.console.stream import DEFAULT_SCROLLBACK, ConsoleStream
from engine.service.client import Attachment, ServiceClient
from engine.service.errors import ServiceError


class AttachmentSink:
    """The :class:`~engine.console.transport.ByteSink` of an attachment: input requests.

    ``write`` only queues; ``drain`` sends what is queued as one ``input`` request. A refused
    or lost request is a :class:`ConnectionError`, which the stream reports as ConsoleClosed.
    Closing detaches.
    """

    def __init__(self, attachment: Attachment) -> None:
        self._attachment = attachment
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        self._pending += data

    async def drain(self) -> None:
        data, self._pending = bytes(self._pending), bytearray()
        if not data:
            return
        try:
            await self._attachment.write(data)
        except ServiceError as err:
            raise ConnectionError(str(err)) from err

    def close(self) -> None:
        """Nothing to do at once: :meth:`wait_closed` detaches (that needs a request)."""

    async def wait_closed(self) -> None:
        await self._attachment.detach()  # idempotent; a lost connection counts as detached


async def remote_console(
    client: ServiceClient,
    vm_id: str,
    *,
    from_start: bool = True,
    write: bool = True,
    scrollback: int = DEFAULT_SCROLLBACK,
) -> Console:
    """Attach to ``vm_id`` and return its console; ``console.stream.close()`` detaches.

    ``from_start`` replays the serve's scrollback first; without ``write`` typing is refused
    by the serve (unless this connection reserved the VM). The serve's scrollback may begin
    after the guest's ready marker, so this console waits for none (``ready_marker=None``:
    ``run`` frames at once, ``login`` takes a ``# ``/``$ `` prompt as success).
    """
    attachment = await client.attach(vm_id, from_start=from_start, write=write)
    stream = ConsoleStream(
        attachment,
        AttachmentSink(attachment),
        scrollback=scrollback,
        ready_marker=None,
        name=f"console of {vm_id} (served)",
        end_reason=lambda: attachment.closed_reason,
    )
    return Console(stream)


__all__ = ["AttachmentSink", "remote_console"]
