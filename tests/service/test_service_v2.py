"""Protocol v2 against a real ``capsa-tui serve``: pools started, resized and stopped by clients,
pushed state, lazy pools, flow events and policies, the agent over the wire, the grace period.

One serve process (the CLI, with its own profiles folder) serves the whole module: ``net`` (a
busybox VM behind a deny-all gateway) warm, ``spare`` (a busybox VM) and ``box`` (a sandbox with
the guest agent) started by the tests. Each test leaves the serve as it found it.
"""
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

import engine
from engine.service import protocol
from tests.service.profiles import BLOCKED, guarded, plain
from tests.service.serve_process import ServeProcess, running_serve

pytestmark = pytest.mark.guest

GRACE_S = 4.0
NET = guarded("net", "the net pool: its policy is edited by the tests (this comment must survive a save)")
SPARE = plain("spare")
BOX = """\
name: box
kind: sandbox
image: {base: debian, packages: []}
cpus: 1
memory_mb: 512
pool: {size: 1, max_size: 1, snapshot: false}
network: none
"""


@pytest.fixture(scope="module")
async def serve(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServeProcess]:
    root = tmp_path_factory.mktemp("servev2")
    (root / "profiles").mkdir()
    for name, text in (("net", NET), ("spare", SPARE), ("box", BOX)):
        (root / "profiles" / f"{name}.yaml").write_text(text)
    async with running_serve(root, root / "run" / "pool.sock", "--warm", "net=1", "--grace", str(GRACE_S)) as serve:
        yield serve


async def _client(serve: ServeProcess, resume: str | None = None) -> engine.ServiceClient:
    return await engine.ServiceClient.connect(serve.socket, resume=resume)


async def _state(watch: engine.PoolWatch, name: str, ready: object, timeout: float = 120) -> dict[str, object]:
    """The pushed state of pool ``name`` once ``ready(state)`` holds."""
    seen = -1
    async with asyncio.timeout(timeout):
        while True:
            states = await watch.next(seen)
            assert states is not None, f"the watch ended: {watch.ended}"
            seen = watch.version
            state = next((s for s in states if s["name"] == name), None)
            if state is not None and ready(state):  # type: ignore[operator]
                return state


def _idle(state: dict[str, object]) -> int:
    return sum(1 for m in state["members"] if m["state"] == "idle")  # type: ignore[attr-defined, index]


async def test_hello_says_who_serves_and_v1_is_refused(serve: ServeProcess) -> None:
    async with await _client(serve) as client:
        assert client.host == socket.gethostname() and client.accel
        assert client.grace_s == GRACE_S and client.session and client.resumed == []
        assert {"net", "spare", "box"} <= set(client.pools)  # lazy: profiles a client may ask for
    reader, writer = await asyncio.open_unix_connection(str(serve.socket))
    try:
        writer.write(protocol.encode({"op": "hello", "version": 1}))
        await writer.drain()
        decoder = protocol.FrameDecoder()
        while not (messages := decoder.feed(await asyncio.wait_for(reader.read(65536), 10))):
            pass
        refusal = messages[0]
        assert refusal["ok"] is False and refusal["version"] == 2
        assert "client speaks version 1" in refusal["error"] and "server speaks version 2" in refusal["error"]
        assert await asyncio.wait_for(reader.read(), 10) == b""  # and it closes the connection
    finally:
        writer.close()


async def test_clients_start_resize_and_stop_a_pool_and_see_it_pushed(serve: ServeProcess) -> None:
    async with await _client(serve) as client:
        watch = await client.watch_pools()
        first = await _state(watch, "spare", lambda s: True, 30)
        assert first["running"] is False and first["members"] == [] and first["kind"] == "vm"
        await client.start_pool("spare", 1)
        running = await _state(watch, "spare", lambda s: s["running"] and _idle(s) == 1)
        assert running["size"] == 1 and running["owned"] is True and running["error"] is None
        await client.resize_pool("spare", 0)
        await _state(watch, "spare", lambda s: s["size"] == 0 and not s["members"], 60)
        await client.stop_pool("spare")
        stopped = await _state(watch, "spare", lambda s: not s["running"], 60)
        assert stopped["members"] == [] and stopped["stats"] is None
        with pytest.raises(engine.ServiceError, match="no pool or profile 'nope'") as info:
            await client.start_pool("nope")
        assert info.value.kind == "UnknownPool"
        with pytest.raises(engine.ServiceError, match="'size' must be 0 or more") as info:
            await client.resize_pool("spare", -1)
        assert info.value.kind == "BadRequest"
    await serve.wait_logged("event=pool_stopped pool=spare")


async def test_a_reserve_of_a_profile_no_pool_holds_starts_one(serve: ServeProcess) -> None:
    async with await _client(serve) as client, await _client(serve) as other:
        assert "spare" not in [p["name"] for p in await client.status()]
        # lazy: the pool starts for the first request; the second, meanwhile, waits for the same pool
        vm, second = await asyncio.gather(client.reserve("spare", timeout=120), other.reserve("spare", timeout=120))
        assert vm != second
        result = await client.exec(vm, "echo lazy-$((6*7))", timeout=30)
        assert result.exit_code == 0 and "lazy-42" in result.output
        await client.release(vm)
        await other.release(second)
        [spare] = [p for p in await client.status() if p["name"] == "spare"]
        assert spare["size"] == 1 and spare["created"] >= 2
        await client.stop_pool("spare")


async def test_flows_are_pushed_and_a_policy_applied_and_saved_turns_deny_into_allow(serve: ServeProcess) -> None:
    profile = serve.config_dir / "profiles" / "net.yaml"
    async with await _client(serve) as client:
        vm = await client.reserve("net", timeout=120)
        try:
            denied = await client.watch_flows(pool="net", action="deny")
            result = await client.exec(vm, f"timeout 5 wget -qO- http://{BLOCKED}/", timeout=30)
            assert result.exit_code != 0
            async with asyncio.timeout(30):
                pool, event = await anext(aiter(denied))
            assert pool == "net" and event.vm == vm and event.dst == BLOCKED and event.port == 80
            assert event.action == "deny" and event.rule == "default deny"

            policy = engine.NetworkPolicy.deny_all().allow_dns().allow_ip(BLOCKED)
            reply = await client.set_policy("net", policy, apply=True, save=True)
            assert reply["saved_to"] == str(profile)
            text = profile.read_text()
            assert BLOCKED in text and "this comment must survive a save" in text
            assert engine.load_profile(profile).network.policy == policy  # type: ignore[union-attr]

            allowed = await client.watch_flows(pool="net", action="allow")
            await client.exec(vm, f"timeout 5 wget -qO- http://{BLOCKED}/", timeout=30)
            async with asyncio.timeout(30):
                while True:
                    _, event = await anext(aiter(allowed))
                    if event.dst == BLOCKED:
                        break
            assert event.action == "allow" and event.port == 80 and BLOCKED in event.rule
            with pytest.raises(engine.ServiceError, match="'action' must be one of") as info:
                await client.watch_flows(action="maybe")
            assert info.value.kind == "BadRequest"
        finally:
            await client.set_policy("net", engine.NetworkPolicy.deny_all().allow_dns(), save=True)
            await client.release(vm)


async def test_the_agent_over_the_wire_streams_apart_and_files(serve: ServeProcess) -> None:
    async with await _client(serve) as client:
        vm = await client.reserve("box", timeout=240)  # lazy: the sandbox pool starts
        try:
            result = await client.agent_exec(vm, "echo out; echo err >&2; exit 3", timeout=60)
            assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
            payload = bytes(range(256)) * 64
            await client.write_file(vm, "/tmp/blob", payload, 0o600)
            assert await client.read_file(vm, "/tmp/blob") == payload
            listed = await client.agent_exec(vm, ["stat", "-c", "%a %s", "/tmp/blob"], timeout=30)
            assert listed.stdout == b"600 16384\n"
            echoed = await client.agent_exec(vm, ["cat"], stdin=b"through stdin", timeout=30)
            assert echoed.stdout == b"through stdin"
            with pytest.raises(engine.ExecTimeout) as info:
                await client.agent_exec(vm, "echo before; sleep 30", timeout=2)
            assert info.value.stdout == b"before\n"
            assert await client.set_console_size(vm, 100, 30) is True  # the view's size, out of band
            assert (await client.agent_exec(vm, "stty size < /dev/ttyS0", timeout=30)).stdout == b"30 100\n"
            async with await _client(serve) as other:  # another client cannot resize a VM it does not hold
                with pytest.raises(engine.ServiceError) as refused:
                    await other.set_console_size(vm, 20, 5)
                assert refused.value.kind == "NotReserved"
            assert (await client.agent_exec(vm, "stty size < /dev/ttyS0", timeout=30)).stdout == b"30 100\n"
        finally:
            await client.release(vm)
        net = await client.reserve("net", timeout=120)
        try:
            with pytest.raises(engine.ServiceError) as refused:
                await client.agent_exec(net, "true")
            assert refused.value.kind == "AgentUnavailable"
            assert await client.set_console_size(net, 100, 30) is False  # no agent: the shell must be told
            with pytest.raises(engine.ServiceError) as refused:
                await client.set_console_size("net-999", 100, 30)
            assert refused.value.kind == "NotReserved"
        finally:
            await client.release(net)
        await client.stop_pool("box")


async def test_a_dropped_link_keeps_the_vm_for_the_grace_period(serve: ServeProcess) -> None:
    first = await _client(serve)
    vm = await first.reserve("net", timeout=120)
    await first.exec(vm, "echo mark > /tmp/kept", timeout=30)
    session = first.session
    first._link.writer.transport.abort()  # the link breaks: no bye
    await first.close()

    async with await _client(serve, resume=session) as again:
        assert again.resumed == [vm] and again.session == session
        kept = await again.exec(vm, "cat /tmp/kept", timeout=30)
        assert "mark" in kept.output  # the very same VM, still ours
        again._link.writer.transport.abort()  # and drops again: this time nobody comes back
    await serve.wait_logged(f"event=grace_over vms={vm}", timeout=GRACE_S + 30)
    async with await _client(serve, resume=session) as late:
        assert late.resumed == []
        with pytest.raises(engine.ServiceError) as info:
            await late.exec(vm, "true")
        assert info.value.kind == "NotReserved"
        members = next(p for p in await late.status() if p["name"] == "net")["members"]
        assert vm not in [m["id"] for m in members if m["state"] != "stopping"]


async def test_bye_releases_at_once(serve: ServeProcess) -> None:
    async with await _client(serve) as client:
        vm = await client.reserve("net", timeout=120)
    async with await _client(serve) as watcher:
        members = next(p for p in await watcher.status() if p["name"] == "net")["members"]
        assert vm not in [m["id"] for m in members if m["state"] == "reserved"]

