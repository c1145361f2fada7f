"""The pool size rules, written once: ``size`` VMs kept warm, at most ``max_size`` alive.

A pool keeps 0 or more VMs warm and may hold at least one, and never fewer than it keeps warm:
``0 <= size <= max_size`` and ``max_size >= 1``. A profile bounds both further
(:data:`PROFILE_SIZE`, :data:`PROFILE_MAX_SIZE`). The builder, ``VmPool.resize``, the profile
parser and the app all ask here.
"""
from __future__ import annotations

from engine.errors import ConfigError

# A profile's pool.size and pool.max_size (inclusive ranges): beyond them a typo, not a plan.
PROFILE_SIZE = (0, 64)
PROFILE_MAX_SIZE = (1, 256)


def pool_sizes_fit(size: int, max_size: int) -> bool:
    """Whether a pool may keep ``size`` VMs warm with ``max_size`` alive at most."""
    return size >= 0 and max_size >= max(size, 1)


def fit_max_size(size: int, max_size: int) -> int:
    """``max_size`` raised (if need be) until ``size`` fits: what a resize to ``size`` allows."""
    return max(max_size, size, 1)


def check_pool_size(size: int, max_size: int | None = None) -> None:
    """ConfigError unless ``size`` (and ``max_size``, when given) follow the rules above."""
    if size < 0:
        raise ConfigError(f"pool size must be 0 or more, got {size}")
    if max_size is not None and not pool_sizes_fit(size, max_size):
        raise ConfigError(f"max_size ({max_size}) must be at least the pool size ({size}) and at least 1")
