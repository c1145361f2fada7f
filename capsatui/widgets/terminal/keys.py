"""Keys as a terminal sends them: a Textual key name to the bytes an xterm writes to the guest."""
from __future__ import annotations

__all__ = ["key_to_bytes"]

_CSI_KEYS = {
    "up": "A", "down": "B", "right": "C", "left": "D", "home": "H", "end": "F",
}
_TILDE_KEYS = {"insert": 2, "delete": 3, "pageup": 5, "pagedown": 6}
_FKEYS = {
    "f1": "\x1bOP", "f2": "\x1bOQ", "f3": "\x1bOR", "f4": "\x1bOS", "f5": "\x1b[15~",
    "f6": "\x1b[17~", "f7": "\x1b[18~", "f8": "\x1b[19~", "f9": "\x1b[20~", "f10": "\x1b[21~",
    "f11": "\x1b[23~", "f12": "\x1b[24~",
}
_PLAIN = {
    "enter": "\r", "ctrl+m": "\r", "ctrl+j": "\n", "tab": "\t", "ctrl+i": "\t", "escape": "\x1b",
    "backspace": "\x7f", "ctrl+h": "\x08", "shift+tab": "\x1b[Z", "space": " ",
    "ctrl+space": "\x00", "ctrl+@": "\x00", "ctrl+backslash": "\x1c",
    "ctrl+circumflex_accent": "\x1e", "ctrl+underscore": "\x1f",
}
_MODS = {"shift": 2, "alt": 3, "ctrl": 5}


def key_to_bytes(key: str, character: str | None, app_cursor: bool = False) -> bytes | None:
    """The bytes an xterm sends for a Textual key, or None for a key it cannot express."""
    if key in _PLAIN:
        return _PLAIN[key].encode()
    mods, _, base = key.rpartition("+")
    if base in _CSI_KEYS:
        if not mods:
            return (("\x1bO" if app_cursor else "\x1b[") + _CSI_KEYS[base]).encode()
        code = 1 + sum(_MODS.get(m, 1) - 1 for m in mods.split("+"))
        return f"\x1b[1;{code}{_CSI_KEYS[base]}".encode()
    if base in _TILDE_KEYS and not mods:
        return f"\x1b[{_TILDE_KEYS[base]}~".encode()
    if base in _FKEYS and not mods:
        return _FKEYS[base].encode()
    if mods == "ctrl" and len(base) == 1 and base.isalpha():
        return bytes([ord(base.lower()) - ord("a") + 1])
    if mods == "alt" and character is None and len(base) == 1:
        return b"\x1b" + base.encode()
    if character and (character.isprintable() or len(character) == 1):
        return character.encode("utf-8", errors="replace")
    return None
