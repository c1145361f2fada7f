"""Errors of the netstack's protocol cores."""
from __future__ import annotations
from engine.errors import EngineError

class PacketError(EngineError):
    """A frame or packet is malformed or truncated (the message says which field)."""
