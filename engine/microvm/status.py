"""The life of a VM as the user sees it: capsa's VmStatus in Python.

Each state is a small frozen dataclass, so callers can compare (``status == VmStatus.Running()``),
test the kind (``isinstance(status, VmStatus.Stopped)``) or pattern-match
(``case VmStatus.Failed(message=m)``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VmStatus:
    """Base of every VM state; use the nested names (VmStatus.Running, ...)."""

    @property
    def is_terminal(self) -> bool:
        return False

    @property
    def name(self) -> str:
        return type(self).__name__

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Created(VmStatus):
    """Configured but not started."""


@dataclass(frozen=True)
class Starting(VmStatus):
    """The machine runs and the guest is booting."""


@dataclass(frozen=True)
class Running(VmStatus):
    """The guest is up (for the default guest: its shell answered)."""


@dataclass(frozen=True)
class Stopping(VmStatus):
    """A stop was requested and the machine has not exited yet."""


@dataclass(frozen=True)
class Stopped(VmStatus):
    """The machine exited as asked or as the guest chose; ``exit_code`` is QEMU's exit status.

    After ``kill()`` it is the negative signal number (-9), as :mod:`subprocess` reports it.
    """

    exit_code: int = 0

    @property
    def is_terminal(self) -> bool:
        return True

    def __str__(self) -> str:
        return f"Stopped(exit_code={self.exit_code})"


@dataclass(frozen=True)
class Failed(VmStatus):
    """The machine or the guest failed; ``message`` says how (panic, crash, killed)."""

    message: str = ""

    @property
    def is_terminal(self) -> bool:
        return True

    def __str__(self) -> str:
        return f"Failed({self.message.splitlines()[0] if self.message else ''})"


# capsa names the states VmStatus::Created and so on; keep that spelling available.
VmStatus.Created = Created  # type: ignore[attr-defined]  # set once the subclasses exist
VmStatus.Starting = Starting  # type: ignore[attr-defined]  # set once the subclasses exist
VmStatus.Running = Running  # type: ignore[attr-defined]  # set once the subclasses exist
VmStatus.Stopping = Stopping  # type: ignore[attr-defined]  # set once the subclasses exist
VmStatus.Stopped = Stopped  # type: ignore[attr-defined]  # set once the subclasses exist
VmStatus.Failed = Failed  # type: ignore[attr-defined]  # set once the subclasses exist
