"""What a VM is made of, as capsa reports it: ResourceConfig (``vm.resources()``) and GuestOs
(``vm.guest_os()``), plus ``seconds_of``, the one reading of capsa's ``Duration`` arguments."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta

from engine.errors import ConfigError


@dataclass(frozen=True)
class ResourceConfig:
    """A VM's vCPUs, memory (MiB) and accelerator (``"kvm"`` or ``"tcg"``)."""

    cpus: int
    memory_mb: int
    accel: str


class GuestOs(enum.Enum):
    """The guest's operating system; every guest the engine boots is Linux (direct kernel boot)."""

    LINUX = "linux"


def seconds_of(value: float | timedelta, what: str = "timeout") -> float:
    """A duration as seconds: a number or a ``datetime.timedelta`` (capsa's ``Duration``)."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number of seconds or a datetime.timedelta, got {value!r}")
    return float(value)
