"""The agent's frame format, sans-IO and standard library only (the guest imports it too).

A frame is a fixed 12-byte header, a JSON object (the message: its type ``t``, the request
``id`` it belongs to, its fields) and a raw binary body (file data, output, stdin: never
base64)::

    magic b"CF" | version u8 | flags u8 (0) | json length u32 | body length u32 | json | body

Requests, replies, output streams, stdin, signals and file chunks all share one channel this
way; the ``id`` multiplexes them. Lengths are checked before anything is allocated.

A session starts with a hello: ``SYNC`` + a 16-byte nonce, then a ``hello`` frame. The port may
still hold the tail of a dead peer's frame, so a decoder that is not yet synchronised skips
bytes until it sees ``SYNC`` (the host waits for ``SYNC`` + its own nonce, which the agent
echoes), and only then parses frames.
"""
from __future__ import annotations

import json
import struct
TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the guest's start time
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
MAGIC = b"CF"
SYNC = b"\xffCAPSA-AGENT-SYNC\xfe"
NONCE_LEN = 16
HEADER = struct.Struct(">2sBBII")
MAX_JSON = 64 << 10
MAX_BODY = 1 << 20
CHUNK = 256 << 10  # the agent's output and file chunks: eight 32 KiB virtio-serial writes per frame
IN_CHUNK = 64 << 10  # the host's data chunks, and the most the agent takes in one frame's body
# What a new host session sends before its hello: more than any frame body the agent accepts,
# so a frame a dead session left half-sent is completed (with zeros) and then left behind.
PREAMBLE = bytes(IN_CHUNK + HEADER.size)


class WireError(Exception):
    """The bytes on the channel are not our frame format (the message says where)."""


class Frame:
    """One decoded frame: its JSON message and its binary body.

    A plain class, not a dataclass: importing dataclasses costs the guest's start time.
    """

    __slots__ = ("msg", "body")

    def __init__(self, msg: dict[str, Any], body: bytes = b"") -> None:
        self.msg, self.body = msg, body

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frame) and (self.msg, self.body) == (other.msg, other.body)

    def __repr__(self) -> str:
        return f"Frame({self.msg!r}, {self.body[:32]!r}{'...' if len(self.body) > 32 else ''})"

    @property
    def type(self) -> str:
        return str(self.msg.get("t", ""))

    @property
    def id(self) -> int:
        value = self.msg.get("id", 0)
        return value if isinstance(value, int) else -1


def encode(msg: dict[str, Any], body: bytes = b"") -> bytes:
    """One frame's bytes (raises WireError when the message or body is over the bounds)."""
    return encode_head(msg, len(body)) + body


def encode_head(msg: dict[str, Any], body_len: int) -> bytes:
    """A frame's header and message, for a body of ``body_len`` bytes sent after them (a
    large body is then never copied into the frame)."""
    raw = json.dumps(msg, separators=(",", ":")).encode()
    if len(raw) > MAX_JSON:
        raise WireError(f"frame message of {len(raw)} bytes is over the {MAX_JSON} limit")
    if body_len > MAX_BODY:
        raise WireError(f"frame body of {body_len} bytes is over the {MAX_BODY} limit")
    return HEADER.pack(MAGIC, VERSION, 0, len(raw), body_len) + raw


def encode_hello(nonce: bytes, msg: dict[str, Any]) -> bytes:
    """The synchronisation marker, the nonce, then a hello frame."""
    if len(nonce) != NONCE_LEN:
        raise WireError(f"a nonce is {NONCE_LEN} bytes, not {len(nonce)}")
    return SYNC + nonce + encode(msg)


class Decoder:
    """Bytes in any split in, frames out.

    ``want_nonce`` None: start synchronised (tests, or a decoder that already saw the hello).
    ``want_nonce`` b"": skip until any ``SYNC`` + nonce (the guest: any host session may start).
    ``want_nonce`` bytes: skip until ``SYNC`` + exactly these bytes (the host: its own session).
    A ``SYNC`` met between frames restarts the session (``resyncs`` counts them; the guest
    resets its state on each ``hello``). ``nonce`` is the nonce of the last sync seen.
    """

    def __init__(self, want_nonce: bytes | None = None, max_body: int = MAX_BODY) -> None:
        self.want_nonce, self.max_body = want_nonce, max_body
        self.buffer = bytearray()
        self.synced = want_nonce is None
        self.nonce = b""
        self.skipped = 0

    def feed(self, data: bytes | memoryview) -> list[Frame]:
        """Frames completed by ``data`` (raises WireError on a malformed header)."""
        self.buffer += data
        frames: list[Frame] = []
        while True:
            if not self.synced and not self._find_sync():
                return frames
            frame = self._next_frame()
            if frame is None:
                return frames
            frames.append(frame)

    def _find_sync(self) -> bool:
        buf = self.buffer
        marker = SYNC + self.want_nonce if self.want_nonce else SYNC
        at = buf.find(marker)
        if at < 0:
            # Keep only a tail that could still be the start of the marker.
            keep = min(len(buf), len(marker) - 1)
            self.skipped += len(buf) - keep
            del buf[: len(buf) - keep]
            return False
        need = at + len(SYNC) + NONCE_LEN
        if len(buf) < need:
            self.skipped += at
            del buf[:at]
            return False
        self.skipped += at
        self.nonce = bytes(buf[at + len(SYNC):need])
        del buf[:need]
        self.synced = True
        return True

    def _next_frame(self) -> Frame | None:
        buf = self.buffer
        if buf[:1] == SYNC[:1]:
            # A fresh session's marker between frames: wait for all of it, then resync.
            if len(buf) < len(SYNC):
                if SYNC.startswith(bytes(buf)):
                    return None
                raise WireError(f"bad frame start {bytes(buf[:4])!r}")
            if buf.startswith(SYNC):
                self.synced = False
                if not self._find_sync():
                    return None
                return self._next_frame()
        if len(buf) < HEADER.size:
            if MAGIC.startswith(bytes(buf[:2])):
                return None
            raise WireError(f"bad frame magic {bytes(buf[:2])!r}")
        magic, version, flags, json_len, body_len = HEADER.unpack_from(buf)
        if magic != MAGIC:
            raise WireError(f"bad frame magic {magic!r}")
        if version != VERSION:
            raise WireError(f"frame version {version}, this side speaks {VERSION}")
        if flags != 0:
            raise WireError(f"frame flags {flags:#x} are not defined")
        if json_len > MAX_JSON or body_len > self.max_body:
            raise WireError(f"frame of {json_len}+{body_len} bytes is over the limits ({MAX_JSON}+{self.max_body})")
        end = HEADER.size + json_len + body_len
        if len(buf) < end:
            # JSON is ASCII: a 0xff there is a new session's SYNC cutting into a dead one's frame.
            if b"\xff" in buf[HEADER.size:HEADER.size + json_len]:
                raise WireError("a frame's message was cut off by a new session")
            return None
        try:
            msg = json.loads(bytes(buf[HEADER.size:HEADER.size + json_len]))
        except (ValueError, UnicodeDecodeError) as err:
            raise WireError(f"frame message is not JSON: {err}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("t"), str) or not isinstance(msg.get("id", 0), int):
            raise WireError("frame message is not an object with a string 't' and an integer 'id'")
        with memoryview(buf) as view:  # one copy of the body, not a slice and then a copy
            body = bytes(view[HEADER.size + json_len:end])
        del buf[:end]
        return Frame(msg, body)
