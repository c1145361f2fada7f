"""The DEC private modes a guest sets to change what the terminal sends it, and the pure encoders
of those bytes: a paste (bracketed paste, mode 2004) and a mouse report (modes 9, 1000, 1002,
1003; encodings 1005, 1006, 1015). No Textual here: the view turns its events into calls of these.
"""
from __future__ import annotations

from typing import Literal

__all__ = [
    "ALT_SCREEN",
    "ALT_SCREEN_CLEAR",
    "ALT_SCREEN_SAVE_CURSOR",
    "BRACKETED_PASTE",
    "MOUSE_ANY_MOTION",
    "MOUSE_BUTTON_MOTION",
    "MOUSE_ENCODINGS",
    "MOUSE_NORMAL",
    "MOUSE_SGR",
    "MOUSE_TRACKING",
    "MOUSE_URXVT",
    "MOUSE_UTF8",
    "MOUSE_X10",
    "MouseAction",
    "mouse_report",
    "mouse_wanted",
    "paste_bytes",
    "private",
]


def private(mode: int) -> int:
    """How pyte stores DEC private mode ``?N`` in ``Screen.mode`` (shifted apart from ANSI modes)."""
    return mode << 5


ALT_SCREEN = private(47)  # the alternate screen buffer
ALT_SCREEN_CLEAR = private(1047)  # ... cleared when leaving it
ALT_SCREEN_SAVE_CURSOR = private(1049)  # ... cursor saved, buffer cleared on entering; restored on leaving
BRACKETED_PASTE = private(2004)
MOUSE_X10 = private(9)  # presses only, no modifiers
MOUSE_NORMAL = private(1000)  # presses and releases (and the wheel)
MOUSE_BUTTON_MOTION = private(1002)  # ... and motion while a button is down
MOUSE_ANY_MOTION = private(1003)  # ... and any motion
MOUSE_UTF8 = private(1005)  # coordinates as UTF-8 characters (up to 2015)
MOUSE_SGR = private(1006)  # ESC [ < b ; x ; y M|m, no limit, the release says its button
MOUSE_URXVT = private(1015)  # ESC [ b+32 ; x ; y M
# Within each group the modes exclude each other (as in xterm): the newest set wins.
MOUSE_TRACKING = (MOUSE_X10, MOUSE_NORMAL, MOUSE_BUTTON_MOTION, MOUSE_ANY_MOTION)
MOUSE_ENCODINGS = (MOUSE_UTF8, MOUSE_SGR, MOUSE_URXVT)

PASTE_START = "\x1b[200~"
PASTE_END = "\x1b[201~"
# What a paste may not carry: the bracket's ends, also with the 8-bit CSI (U+009B, which an
# application taking 8-bit controls reads as ESC [).
_PASTE_MARKERS = (PASTE_START, PASTE_END, "\x9b200~", "\x9b201~")

MouseAction = Literal["press", "release", "motion"]
LEFT, MIDDLE, RIGHT, NO_BUTTON, WHEEL_UP, WHEEL_DOWN = 0, 1, 2, 3, 64, 65
X10_LIMIT = 255 - 32  # the largest coordinate one byte carries
UTF8_LIMIT = 2047 - 32  # ... one character of at most two UTF-8 bytes


def paste_bytes(text: str, bracketed: bool) -> bytes:
    """The bytes a terminal sends for pasted ``text``: newlines as ``\\r`` (Enter), wrapped in
    ``ESC[200~`` ... ``ESC[201~`` when the guest enabled bracketed paste. Bracket markers inside
    the text are removed (until none is left: removing one must not join the rest into another),
    so a crafted paste cannot end the bracket early and have the rest run as typed."""
    while any(marker in text for marker in _PASTE_MARKERS):
        for marker in _PASTE_MARKERS:
            text = text.replace(marker, "")
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    if bracketed:
        text = PASTE_START + text + PASTE_END
    return text.encode("utf-8", errors="replace")


def mouse_wanted(tracking: int, action: MouseAction, button: int) -> bool:
    """Whether the guest's ``tracking`` mode (one of :data:`MOUSE_TRACKING`, or 0 for none) asks
    for this event. ``button``: 0-2 left/middle/right, 3 none (motion), 64/65 the wheel."""
    if tracking == 0:
        return False
    if action == "press":
        return True
    if action == "release":
        return tracking != MOUSE_X10 and button < WHEEL_UP  # a wheel has no release
    if tracking == MOUSE_ANY_MOTION:
        return True
    return tracking == MOUSE_BUTTON_MOTION and button != NO_BUTTON


def mouse_report(
    button: int,
    x: int,
    y: int,
    action: MouseAction,
    *,
    encoding: int = 0,
    shift: bool = False,
    meta: bool = False,
    ctrl: bool = False,
    x10: bool = False,
) -> bytes:
    """The bytes xterm sends for a mouse event at cell (``x``, ``y``), 0-based (sent 1-based).

    ``button``: 0-2 left/middle/right, 3 none (motion without a button), 64/65 the wheel up/down.
    ``encoding``: one of :data:`MOUSE_ENCODINGS`, or 0 for the X10 bytes (``ESC [ M`` and three
    bytes of value+32, coordinates clamped to 223). ``x10``: mode 9, which reports no modifiers.
    """
    x, y = max(x, 0) + 1, max(y, 0) + 1
    code = button
    if action == "release" and encoding != MOUSE_SGR:
        code = NO_BUTTON  # only SGR says which button was released
    if action == "motion":
        code += 32
    if not x10:
        code += (4 if shift else 0) + (8 if meta else 0) + (16 if ctrl else 0)
    if encoding == MOUSE_SGR:
        return f"\x1b[<{code};{x};{y}{'m' if action == 'release' else 'M'}".encode()
    if encoding == MOUSE_URXVT:
        return f"\x1b[{code + 32};{x};{y}M".encode()
    if encoding == MOUSE_UTF8:
        cells = (chr(32 + code), chr(32 + min(x, UTF8_LIMIT)), chr(32 + min(y, UTF8_LIMIT)))
        return ("\x1b[M" + "".join(cells)).encode("utf-8")
    return b"\x1b[M" + bytes([32 + code, 32 + min(x, X10_LIMIT), 32 + min(y, X10_LIMIT)])
