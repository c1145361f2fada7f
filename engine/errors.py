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
