"""ServiceLimits: every bound the pool service puts on its clients, each a named constant.

A client of ``capsa-tui serve`` is another process of the same user, but a buggy or hostile
one must not be able to take the server's memory or CPU from the other clients and the pools.
Each limit below is a module constant (the default) and a :class:`PoolServer` argument of the
same name in lower case, so tests and embedders can set small ones. The choices:

``max_connections`` (64)
    Clients connected at once. Connection N+1 gets a hello refusal of kind
    ``TooManyConnections`` naming the limit, and is closed.
``max_request_bytes`` (64 MiB)
    Request bytes buffered across *all* clients. A partly received frame counts in full from its
    header on (:mod:`engine.service.budget`). A client whose frame would take the total over the
    bound is **closed**, after an error frame of kind ``BufferFull`` naming the limit, rather
    than made to wait: waiting would let a few clients that never finish their frames stall every
    other client forever, while closing fails one request loudly and frees its bytes at once.
    Each connection's socket read buffer (64 KiB) is on top, so the server's worst case is
    ``max_request_bytes + max_connections * 64 KiB``.
``max_frame`` (16 MiB), ``max_depth`` (64)
    One frame's size, and how deep its JSON may nest; either refused with an error frame
    (``ProtocolError`` / ``TooDeep``) and the connection closed.
``max_requests`` (256)
    Requests of one connection running at once; one more is answered at once with an error of
    kind ``Busy`` (its id echoed) and not run.
``max_reply_bytes`` (8 MiB)
    Replies and events queued for one client that is not reading them. One frame always fits in
    an empty queue (a large ``exec`` output still goes out); when a reply does not fit, the
    client has stopped reading while still sending: the connection is **closed** at once, its
    running requests cancelled and its VMs released. Console output waits for the queue to empty
    instead (a slow watcher loses output to the console's scrollback, as before, not its
    connection).
``hello_timeout`` (10 s)
    A connection that has not completed the hello by then gets an error frame of kind
    ``HelloTimeout`` and is closed.
``frame_timeout`` (30 s)
    A frame whose header has arrived must be complete this long after; if not, an error frame
    of kind ``FrameTimeout`` and the connection is closed. Without it, a client that announces
    16 MiB frames and trickles them a byte a minute would hold its share of
    ``max_request_bytes`` for ever (a local client sends 16 MiB in well under a second). Between
    frames a client may be idle as long as it likes.

Every refusal is logged once, as one warning line naming the limit, and counted in
:class:`ServiceStats` (``Busy`` once per connection, not once per request of a flood).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from engine.service.protocol import MAX_DEPTH, MAX_FRAME

MAX_CONNECTIONS = 64
MAX_REQUEST_BYTES = 64 * 1024 * 1024
MAX_REQUESTS = 256
MAX_REPLY_BYTES = 8 * 1024 * 1024
HELLO_TIMEOUT = 10.0
FRAME_TIMEOUT = 30.0


@dataclass(frozen=True)
class ServiceLimits:
    """The bounds one :class:`PoolServer` enforces; see the module docstring for each."""

    max_connections: int = MAX_CONNECTIONS
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_frame: int = MAX_FRAME
    max_depth: int = MAX_DEPTH
    max_requests: int = MAX_REQUESTS
    max_reply_bytes: int = MAX_REPLY_BYTES
    hello_timeout: float = HELLO_TIMEOUT
    frame_timeout: float = FRAME_TIMEOUT

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            number = (int, float) if item.name.endswith("_timeout") else int
            if isinstance(value, bool) or not isinstance(value, number):
                raise ValueError(f"PoolServer: {item.name} must be a number, not {value!r}")
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"PoolServer: {item.name} must be a positive finite number, not {value!r}")
