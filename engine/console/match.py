"""Sans-IO pattern matching and command framing for serial consoles.

Nothing here does I/O or reads a clock: callers feed the bytes they received and get results
back. Two pieces:

* :class:`PatternMatcher` finds the first occurrence of any of several patterns in a byte stream
  that arrives in arbitrary chunks. Matches that straddle chunk boundaries are found.
* :class:`CommandFraming` wraps a shell command in begin/end markers made from a random nonce,
  produces the lines to type, and parses the console stream back into output and exit code.

Memory limit: a matcher keeps at most ``window`` (default 64 KiB) unconsumed bytes. A literal is
always found (the window is at least as long as the longest literal). A regex match must fit in
the window; ``^``/``$`` anchor to the window, not to the stream. A ``str`` regex is matched
against the UTF-8 bytes (its character classes are then ASCII-only).

Streaming trade-offs: a match is reported as soon as it exists in the data received so far.
So a quantifier that could still grow (``\\d+`` at the very end of the data) matches what has
arrived (end such patterns with a terminator: ``\\d+\\n``), and when one pattern occurs inside
another (``#`` in ``a#a``) the inner one wins if it completes first. Apart from these two cases
results do not depend on how the stream is chunked.
"""
from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import ConsoleError

DEFAULT_WINDOW = 64 * 1024
READY_MARKER = b"\x1b]777;capsa-ready\x07"

PatternLike = str | bytes | re.Pattern[bytes] | re.Pattern[str]
_Compiled = bytes | re.Pattern[bytes]


def compile_pattern(pattern: PatternLike) -> _Compiled:
    """Turn a user pattern into a bytes literal or a bytes regex."""
    if isinstance(pattern, str):
        pattern = pattern.encode("utf-8")
    if isinstance(pattern, (bytes, bytearray)):
        if not pattern:
            raise ValueError("an empty pattern would match anywhere")
        return bytes(pattern)
    if isinstance(pattern, re.Pattern):
        if isinstance(pattern.pattern, str):
            # bytes regexes refuse the UNICODE flag that every str regex carries
            return re.compile(pattern.pattern.encode("utf-8"), pattern.flags & ~re.UNICODE)
        return pattern
    raise TypeError(f"pattern must be str, bytes or re.Pattern, not {type(pattern).__name__}")


def describe_pattern(pattern: PatternLike) -> str:
    """Short human form of a pattern for error messages."""
    if isinstance(pattern, re.Pattern):
        return f"re.compile({pattern.pattern!r})"
    return repr(pattern)


@dataclass(frozen=True)
class MatchResult:
    """One match found in the stream.

    ``start``/``end`` are absolute stream offsets (counted from the ``offset`` the matcher was
    created with). ``consumed`` is how many stream bytes this match used up: everything since the
    previous match (or the start) through the end of the match. ``before`` holds the bytes
    between that point and the match, cut to the matcher's window if there were more.
    """

    index: int
    matched: bytes
    before: bytes
    start: int
    end: int
    consumed: int
    groups: tuple[bytes | None, ...] = ()

    @property
    def text(self) -> str:
        """The consumed bytes (before + match) decoded as UTF-8, bad bytes replaced."""
        return (self.before + self.matched).decode("utf-8", errors="replace")


class PatternMatcher:
    """Finds the earliest occurrence of any of several patterns in a chunked byte stream.

    Ties (two patterns matching at the same start) go to the pattern listed first. After a
    match the stream is consumed through the match's end; bytes after it stay buffered and
    ``feed(b"")`` looks for the next match among them.
    """

    def __init__(
        self, patterns: Sequence[PatternLike], *, window: int = DEFAULT_WINDOW, offset: int = 0
    ) -> None:
        if isinstance(patterns, (str, bytes, re.Pattern)):
            raise TypeError("patterns must be a sequence of patterns, not a single pattern")
        if not patterns:
            raise ValueError("at least one pattern is needed")
        self._patterns: list[_Compiled] = [compile_pattern(p) for p in patterns]
        longest = max((len(p) for p in self._patterns if isinstance(p, bytes)), default=0)
        if window < max(longest, 1):
            raise ValueError(f"window {window} is shorter than the longest literal ({longest})")
        self._window = window
        self._buf = bytearray()
        self._buf_start = offset  # absolute offset of _buf[0]
        self._consumed_to = offset  # absolute offset where the next match's "before" begins
        # per literal: no occurrence starts before this buffer index (saves rescanning)
        self._scan_from = [0] * len(self._patterns)

    @property
    def position(self) -> int:
        """Absolute offset just past the last byte fed (or skipped)."""
        return self._buf_start + len(self._buf)

    @property
    def consumed_to(self) -> int:
        """Absolute offset through which the stream has been consumed by matches."""
        return self._consumed_to

    @property
    def pending(self) -> bytes:
        """Unconsumed bytes still held (at most the window)."""
        return bytes(self._buf)

    def feed(self, data: bytes = b"") -> MatchResult | None:
        """Add ``data`` and return the first match among the unconsumed bytes, if any."""
        self._buf += data
        result = self._search()
        if result is None:
            self._trim()
        return result

    def skip(self, count: int) -> None:
        """Record a gap of ``count`` bytes that will never be fed (e.g. dropped by a ring).

        No match can straddle a gap, so the held bytes are discarded too.
        """
        self._buf_start += len(self._buf) + count
        self._buf.clear()
        self._scan_from = [0] * len(self._patterns)

    def _search(self) -> MatchResult | None:
        best: tuple[int, int, int, tuple[bytes | None, ...]] | None = None
        for index, pattern in enumerate(self._patterns):
            found = self._find(index, pattern)
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], found[1], index, found[2])
        if best is None:
            return None
        return self._consume(*best)

    def _find(
        self, index: int, pattern: _Compiled
    ) -> tuple[int, int, tuple[bytes | None, ...]] | None:
        if isinstance(pattern, bytes):
            pos = self._buf.find(pattern, self._scan_from[index])
            if pos < 0:
                self._scan_from[index] = max(0, len(self._buf) - len(pattern) + 1)
                return None
            return pos, pos + len(pattern), ()
        match = pattern.search(self._buf)
        if match is None:
            return None
        return match.start(), match.end(), tuple(
            None if g is None else bytes(g) for g in match.groups()
        )

    def _consume(
        self, start: int, end: int, index: int, groups: tuple[bytes | None, ...]
    ) -> MatchResult:
        result = MatchResult(
            index=index,
            matched=bytes(self._buf[start:end]),
            before=bytes(self._buf[:start]),
            start=self._buf_start + start,
            end=self._buf_start + end,
            consumed=self._buf_start + end - self._consumed_to,
            groups=groups,
        )
        self._drop_head(end)
        self._consumed_to = self._buf_start
        return result

    def _trim(self) -> None:
        excess = len(self._buf) - self._window
        if excess > 0:
            self._drop_head(excess)

    def _drop_head(self, count: int) -> None:
        del self._buf[:count]
        self._buf_start += count
        self._scan_from = [max(0, s - count) for s in self._scan_from]


# --------------------------------------------------------------------------------------------
# Command framing


@dataclass(frozen=True)
class CommandOutcome:
    """What a framed command produced.

    ``output`` is everything the command wrote, verbatim except ``\\r\\n`` -> ``\\n``.
    ``consumed`` counts the stream bytes from the start of framing through the end-marker line.
    ``dropped`` is how many output bytes were discarded because the output exceeded the limit
    (the head is dropped, the tail kept).
    """

    exit_code: int
    output: bytes
    consumed: int
    dropped: int = 0


# Safe to type as is: printable ASCII that is special neither to printf formats nor to single
# quotes. Everything else is shipped as an octal escape, so no control byte ever reaches the
# line editor (a tab would trigger completion, ^C/^U/^W would edit or kill the line).
_PRINTABLE = frozenset(range(0x20, 0x7F))
_FORMAT_SAFE = _PRINTABLE - {ord("\\"), ord("%"), ord("'")}
_END_DIGITS = re.compile(rb"(-?\d+)\r*")


def shell_quote(text: str) -> str:
    """Single-quote ``text`` for a POSIX shell."""
    return "'" + text.replace("'", "'\\''") + "'"


class CommandFraming:
    """Runs one shell command between unforgeable markers and parses its result (sans-IO).

    The line typed is, in short::

        printf 'B%s\\n' NONCE; trap ... INT; eval 'COMMAND'; s=$?; trap - INT; printf 'E%s:%d\\n' NONCE "$s"

    The terminal echoes that line, but the echo only ever contains ``'B%s\\n' NONCE``, never the
    contiguous ``BNONCE``, so markers are found only in real output however the echo is wrapped
    or decorated. The output is what lies between the end of the ``BNONCE`` line and
    ``ENONCE:`` (which may be mid-line when the output lacks a final newline). The INT trap
    prints the end marker when Ctrl-C kills the command (an interactive shell otherwise drops
    the rest of the line) and then re-raises the interrupt so loops still stop. Limit: a Ctrl-C
    that lands while the shell itself owns the terminal, in the instant between two commands of
    the list, is held by the trap until the next foreground job ends (plain ash would abort).

    Commands that are long, multi-line or contain non-printable or non-ASCII characters are first
    written to ``{tmpdir}/.capsa-NONCE`` by short ``printf`` lines (octal escapes, no control
    bytes typed) and then run with ``eval "$(cat F; rm -f F)"``: line editors cap line length
    (busybox ~1 KiB) and the tty's canonical mode caps a line at 4 KiB.
    """

    def __init__(
        self,
        command: str,
        *,
        nonce: str | None = None,
        max_line: int = 700,
        chunk_size: int = 480,
        tmpdir: str = "/tmp",
        max_output: int | None = 64 * 1024 * 1024,
    ) -> None:
        self.command = command
        self.nonce = nonce if nonce is not None else secrets.token_hex(8)
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.nonce):
            raise ValueError("nonce must be alphanumeric")
        self.max_line = max_line
        self.chunk_size = chunk_size
        self.tmpdir = tmpdir
        self.max_output = max_output
        self._begin = f"B{self.nonce}".encode()
        self._end = f"E{self.nonce}:".encode()
        self._buf = bytearray()
        self._fed = 0  # stream bytes accounted for: fed plus skipped
        self._scan = 0  # buffer index where the next marker search starts
        self._body_start: int | None = None  # buffer index just after the begin-marker line
        self._end_at: int | None = None  # buffer index of the end marker once seen
        self._dropped = 0
        self._outcome: CommandOutcome | None = None

    # -- what to type -------------------------------------------------------------------------

    @property
    def temp_path(self) -> str:
        return f"{self.tmpdir}/.capsa-{self.nonce}"

    def lines(self) -> list[bytes]:
        """The lines to write to the console, in order, each ending with ``\\n``."""
        data = self.command.encode("utf-8")
        if all(b in _PRINTABLE for b in data):
            line = self._final_line(f"eval {shell_quote(self.command)}")
            if len(line) <= self.max_line:
                return [line]
        return self._chunk_lines(data) + [self._final_line(self._eval_file())]

    def _final_line(self, run: str) -> bytes:
        n = self.nonce
        # 130 = 128 + SIGINT, stated outright: by the time the trap runs $? may already hold
        # the status of a later command (a loop's condition, say).
        trap = f"trap 'trap - INT; printf \"E%s:130\\n\" {n}; kill -INT $$' INT"
        # The leading space keeps the wrapper out of shells' history where that is supported.
        return (
            f" printf 'B%s\\n' {n}; {trap}; {run}; __capsa_s=$?; trap - INT; "
            f"printf 'E%s:%d\\n' {n} \"$__capsa_s\"\n"
        ).encode()

    def _eval_file(self) -> str:
        path = shell_quote(self.temp_path)
        return f'eval "$(cat {path}; rm -f {path})"'

    def _chunk_lines(self, data: bytes) -> list[bytes]:
        path = shell_quote(self.temp_path)
        lines: list[bytes] = []
        piece: list[str] = []
        size = 0
        for byte in data:
            token = chr(byte) if byte in _FORMAT_SAFE else f"\\{byte:03o}"
            if size + len(token) > self.chunk_size and piece:
                lines.append(self._chunk_line(piece, path, first=not lines))
                piece, size = [], 0
            piece.append(token)
            size += len(token)
        lines.append(self._chunk_line(piece, path, first=not lines))
        return lines

    @staticmethod
    def _chunk_line(piece: list[str], path: str, first: bool) -> bytes:
        redirect = ">" if first else ">>"
        return f" printf '{''.join(piece)}' {redirect}{path}\n".encode()

    # -- what comes back ----------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once the begin marker was seen (the command is running)."""
        return self._body_start is not None

    @property
    def outcome(self) -> CommandOutcome | None:
        return self._outcome

    def feed(self, data: bytes) -> CommandOutcome | None:
        """Feed console bytes; returns the outcome once the end-marker line is complete.

        Bytes after the end-marker line are not consumed (``outcome.consumed`` says where the
        end-marker line ends); once complete, further feeds return the same outcome.
        """
        if self._outcome is not None:
            return self._outcome
        self._buf += data
        self._fed += len(data)
        if self._body_start is None and not self._find_begin():
            return None
        self._outcome = self._find_end()
        return self._outcome

    def skip(self, count: int) -> None:
        """Record ``count`` stream bytes that were lost (a console ring dropped them)."""
        if self._outcome is not None or count <= 0:
            return
        self._fed += count
        if self._body_start is None:
            self._buf.clear()  # markers cannot straddle a gap
        else:
            self._dropped += count
        self._scan = len(self._buf)

    def _find_begin(self) -> bool:
        pos = self._buf.find(self._begin, self._scan)
        if pos < 0:
            # nothing before the begin marker matters: keep just enough to catch a straddle
            keep = len(self._begin) - 1
            self._drop_head(max(0, len(self._buf) - keep))
            self._scan = 0
            return False
        newline = self._buf.find(b"\n", pos + len(self._begin))
        if newline < 0:
            self._drop_head(pos)
            self._scan = 0
            return False
        self._drop_head(newline + 1)
        self._body_start = 0
        self._scan = 0
        return True

    def _find_end(self) -> CommandOutcome | None:
        if self._end_at is None:
            pos = self._buf.find(self._end, self._scan)
            if pos < 0:
                self._scan = max(0, len(self._buf) - len(self._end) + 1)
                self._limit_output()
                return None
            self._end_at = pos
        newline = self._buf.find(b"\n", self._end_at + len(self._end))
        if newline < 0:
            return None
        digits = bytes(self._buf[self._end_at + len(self._end) : newline])
        match = _END_DIGITS.fullmatch(digits)
        if match is None:
            raise ConsoleError(f"malformed end marker {digits!r} for command {self.command!r}")
        output = normalize_newlines(bytes(self._buf[: self._end_at]))
        return CommandOutcome(
            exit_code=int(match.group(1)),
            output=output,
            consumed=self._fed - (len(self._buf) - newline - 1),
            dropped=self._dropped,
        )

    def _limit_output(self) -> None:
        if self.max_output is None:
            return
        excess = len(self._buf) - self.max_output - len(self._end)
        if excess > 0:
            self._dropped += excess
            self._drop_head(excess)

    def _drop_head(self, count: int) -> None:
        if count <= 0:
            return
        del self._buf[:count]
        self._scan = max(0, self._scan - count)


def normalize_newlines(data: bytes) -> bytes:
    """``\\r\\n`` -> ``\\n`` (the tty's output processing adds the ``\\r``)."""
    return data.replace(b"\r\n", b"\n")


class EchoSkipper:
    """Finds where a terminal's echo of a typed line ends (sans-IO).

    Line editors decorate the echo when it wraps (``\\r``, spaces, ESC sequences, extra
    newlines), so the echo is matched as a subsequence: the line's printable characters in
    order, with anything in between, then the next ``\\n``.
    """

    def __init__(self, line: str) -> None:
        self._want = bytes(b for b in line.encode("utf-8") if b in _PRINTABLE)
        self._matched = 0
        self.done = False

    def feed(self, data: bytes) -> int | None:
        """Feed bytes; once the echo's newline is in ``data``, the index just past it."""
        if self.done:
            return 0
        for index, byte in enumerate(data):
            if self._matched < len(self._want):
                if byte == self._want[self._matched]:
                    self._matched += 1
            elif byte == 0x0A:
                self.done = True
                return index + 1
        return None
