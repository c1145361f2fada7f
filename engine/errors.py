"""Errors raised by the engine.

Every failure a user can meet is an :class:`EngineError` subclass whose message says what went
wrong and what to do about it, so callers can catch one type and show ``str(err)`` as it is.
"""
from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(EngineError):
    """A VM specification or argument is invalid (names the field and the value)."""


class ImageError(EngineError):
    """The guest kernel or initramfs cannot be found or built."""


class QemuNotFound(EngineError):
    """The QEMU binary is missing; the message names the Debian package to install."""


class MachineError(EngineError):
    """The machine process failed to start or died; carries the tail of its stderr."""

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(message if not stderr_tail else f"{message}\n--- qemu stderr (tail) ---\n{stderr_tail}")
        self.stderr_tail = stderr_tail


class VmNotRunning(EngineError):
    """An operation needs a running VM but the VM has stopped or failed."""


class ConsoleError(EngineError):
    """The console is not enabled, not connected, or was closed."""


class ConsoleClosed(ConsoleError):
    """The console stream ended (the machine stopped or was killed); ``seen`` holds the output
    read while waiting, when the close ended a wait."""

    seen: str = ""


class ConsoleTimeout(ConsoleError, TimeoutError):
    """A console wait ran out of time; ``seen`` holds the last output read while waiting."""

    def __init__(self, message: str, seen: str = "") -> None:
        tail = seen[-500:]
        super().__init__(f"{message}; last output seen: {tail!r}" if seen else f"{message}; no output seen")
        self.seen = seen


class BootTimeout(EngineError, TimeoutError):
    """The guest did not become ready in time; the message carries its last console lines."""


class PoolError(EngineError):
    """Base class of the errors a VM pool raises."""


class PoolEmpty(PoolError):
    """``try_reserve`` found no idle VM (the pool is still booting replacements)."""


class PoolTimeout(PoolError, TimeoutError):
    """``reserve`` waited its whole timeout without a VM becoming free."""


class PoolClosed(PoolError):
    """The pool was closed (before or while the caller waited for a VM)."""


class PoolBootError(PoolError):
    """The pool's VMs keep failing to boot; the message carries the last failure."""


class SnapshotError(EngineError):
    """A snapshot or template cannot be made, found, or restored; the message says why."""


class AgentError(EngineError):
    """Base class of the errors the guest agent (a sandbox's RPC service) raises."""


class AgentUnavailable(AgentError):
    """The VM has no agent, or its agent did not answer in time (the message says which)."""


class AgentDied(AgentError):
    """The agent went away (it died in the guest, or the VM stopped) while a call waited."""


class AgentProtocolError(AgentError):
    """The guest sent bytes that are not our protocol; the VM that sent them is failed."""


class ExecTimeout(AgentError, TimeoutError):
    """A command ran past its timeout; its whole process group was killed. ``stdout`` and
    ``stderr`` hold what it wrote before."""

    def __init__(self, message: str, stdout: bytes = b"", stderr: bytes = b"") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


class TransferTooLarge(AgentError):
    """A read or an output went past the cap the caller set (never silently cut)."""


class GuestFileError(AgentError):
    """A file operation failed in the guest; ``path`` names it, ``errno`` says why (or 0)."""

    def __init__(self, message: str, path: str, errno: int = 0) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class GuestFileNotFound(GuestFileError):
    """The guest path (or a folder on the way to it) does not exist."""


class GuestPermissionError(GuestFileError):
    """The guest refused access to the path."""


class GuestPathError(GuestFileError):
    """The path is not an absolute, normalised guest path (relative, or with ``..``)."""


class IdentityError(AgentError):
    """A snapshot clone's identity fix-up failed or was refused; ``failed`` maps each step
    (reseed, clock, mac, address, hostname, hosts, or an argument) to why."""

    def __init__(self, message: str, failed: dict[str, str]) -> None:
        super().__init__(message)
        self.failed = failed
