"""The registry's pure parts: profiles as served, flow filters and subscriptions, ``--warm``.

The pools themselves are started, resized and stopped on real guests in test_service_v2.py.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

import engine
from capsatui.commands.serve import warm_counts
from engine.service.flows import FLOW_QUEUE, FlowFilter, FlowSubscription


def _event(vm: str = "vm-1", action: str = "deny") -> engine.FlowEvent:
    return engine.FlowEvent(time.time(), vm, "tcp", "10.0.2.15", "203.0.113.7", 80, None, "default deny", action)


def test_flow_filters_match_pool_vm_and_action() -> None:
    event = _event(vm="net-1")  # the gateway names the VM by its host name
    assert FlowFilter().matches("net", "vm-1", event)
    assert FlowFilter(pool="net", vm="vm-1", action="deny").matches("net", "vm-1", event)
    assert FlowFilter(vm="net-1").matches("net", "vm-1", event)
    assert not FlowFilter(pool="other").matches("net", "vm-1", event)
    assert not FlowFilter(vm="vm-2").matches("net", "vm-1", event)
    assert not FlowFilter(action="allow").matches("net", "vm-1", event)
    with pytest.raises(ValueError, match="one of allow, deny, log"):
        FlowFilter(action="maybe")


async def test_a_subscription_batches_drops_the_oldest_and_ends() -> None:
    gone: list[FlowSubscription] = []
    subscription = FlowSubscription(FlowFilter(action="deny"), gone.append)
    subscription.offer(("net", "vm-0", _event(action="allow")))  # filtered out
    for n in range(FLOW_QUEUE + 5):
        subscription.offer(("net", f"vm-{n}", _event(vm=f"vm-{n}")))
    assert subscription.dropped == 5
    batch = await subscription.batch()
    assert batch[0][1] == "vm-5" and all(pool == "net" for pool, _, _ in batch)  # the oldest five went
    subscription.end()
    assert gone == [subscription]
    rest = 0
    while more := await subscription.batch():
        rest += len(more)
    assert len(batch) + rest == FLOW_QUEUE
    subscription.offer(("net", "vm-1", _event()))
    assert await subscription.batch() == []  # nothing is queued after the end


async def test_the_registry_serves_profiles_with_their_own_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path))
    (tmp_path / "profiles").mkdir()
    text = "# mine\nname: mine\nboot: default\npool: {size: 1, max_size: 3}\n"
    (tmp_path / "profiles" / "mine.yaml").write_text(text)
    (tmp_path / "profiles" / "bad.yaml").write_text("name: bad\ncpus: lots\n")
    registry = engine.PoolRegistry(profiles=engine.load_profiles, lazy=True)
    await registry.reload()
    assert "mine" in registry.names() and registry.profile_text("mine") == text
    assert any(issue.field == "cpus" and issue.file.endswith("bad.yaml") for issue in registry.broken)
    state = next(s for s in registry.states() if s["name"] == "mine")
    assert state["running"] is False and state["members"] == [] and state["network"] is False
    with pytest.raises(engine.ServiceError, match="no pool or profile 'other'") as info:
        await registry.ensure("other")
    assert info.value.kind == "UnknownPool"
    with pytest.raises(engine.ServiceError, match="is not running") as info:
        registry.set_policy("mine", engine.NetworkPolicy.allow_all())
    assert info.value.kind == "NotRunning"
    saved = await registry.save_policy("mine", engine.NetworkPolicy.deny_all().allow_dns())
    assert isinstance(saved.network, engine.UserNatConfig)  # a policy needs a network: user_nat
    written = (tmp_path / "profiles" / "mine.yaml").read_text()
    assert written.startswith("# mine") and "user_nat" in written
    assert registry.profile_text("mine") == written  # read again after the save
    await registry.close()
    with pytest.raises(engine.PoolClosed):
        await registry.start("mine")


def test_serve_warm_counts_are_checked() -> None:
    assert warm_counts("default=4,sandbox=2") == {"default": 4, "sandbox": 2}
    for bad, message in (("default", "expected NAME=N"), ("a=x", "whole number"), ("a=-1", "0 or more"),
                         ("a=1,a=2", "named twice"), (",", "expected NAME=N")):
        with pytest.raises(Exception, match=message):
            warm_counts(bad)
