"""Unit tests of AgentPort's open/closed state (fed by the handle from VSERPORT_CHANGE)."""
from __future__ import annotations

import asyncio

import pytest

import engine
from engine.microvm.agent_port import AgentPort


def _port() -> AgentPort:
    reader = asyncio.StreamReader()
    return AgentPort(reader, None)  # type: ignore[arg-type]  # the state logic never touches the writer


async def test_wait_open_wakes_on_open_and_close_callbacks_fire_per_close() -> None:
    port = _port()
    closes: list[int] = []
    port.add_close_callback(lambda: closes.append(1))
    waiter = asyncio.create_task(port.wait_open(10))
    await asyncio.sleep(0)
    assert not waiter.done()
    port.set_open(True)
    await waiter
    assert port.is_open and closes == []
    port.set_open(False)
    port.set_open(False)  # a repeated close is one close
    assert closes == [1]
    port.set_open(True)
    port.end()
    assert closes == [1, 1] and port.ended and not port.is_open
    port.set_open(True)  # a late event after the end changes nothing
    assert not port.is_open


async def test_wait_open_times_out_and_ends_with_clear_errors() -> None:
    port = _port()
    with pytest.raises(engine.AgentUnavailable, match="within 0.05s"):
        await port.wait_open(0.05)
    waiter = asyncio.create_task(port.wait_open(10))
    await asyncio.sleep(0)
    port.end()
    with pytest.raises(engine.AgentUnavailable, match="VM ended"):
        await waiter


async def test_a_faulty_close_callback_does_not_silence_the_others() -> None:
    port = _port()
    heard: list[str] = []
    port.add_close_callback(lambda: 1 / 0)  # type: ignore[func-returns-value]  # deliberately raises
    port.add_close_callback(lambda: heard.append("second"))
    port.end()
    assert heard == ["second"]
