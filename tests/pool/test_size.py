"""The pool size rules (engine/pool/size.py), with no VM: the messages every caller shows."""
from __future__ import annotations

import pytest

import engine
from engine.pool.size import pool_sizes_fit


def test_sizes_fit_when_max_size_holds_size_and_one() -> None:
    assert pool_sizes_fit(0, 1) and pool_sizes_fit(3, 3)
    assert not pool_sizes_fit(0, 0) and not pool_sizes_fit(4, 3) and not pool_sizes_fit(-1, 5)


def test_fit_max_size_raises_max_size_until_size_fits() -> None:
    assert (engine.fit_max_size(5, 2), engine.fit_max_size(0, 0), engine.fit_max_size(1, 8)) == (5, 1, 8)


def test_check_pool_size_messages() -> None:
    engine.check_pool_size(2, 2)
    engine.check_pool_size(7)
    with pytest.raises(engine.ConfigError, match=r"^pool size must be 0 or more, got -1$"):
        engine.check_pool_size(-1)
    with pytest.raises(engine.ConfigError, match=r"^max_size \(2\) must be at least the pool size \(3\) and at least 1$"):
        engine.check_pool_size(3, 2)


def test_the_builder_and_resize_keep_their_messages(fake_guest: engine.LinuxDirectBoot) -> None:
    with pytest.raises(engine.ConfigError, match="pool size must be 0 or more, got -2"):
        engine.vm_pool(fake_guest).settings(-2)
    with pytest.raises(engine.ConfigError, match=r"max_size \(1\) must be at least the pool size \(2\)"):
        engine.vm_pool(fake_guest).max_size(1).settings(2)
