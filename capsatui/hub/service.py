"""ServiceHub: the app's hub over a running ``capsa-tui serve``, on this host or over ssh.

Start-up stays fast: :func:`capsatui.hub.make_hub` only probes a local socket synchronously and
builds a :class:`ServiceHub` without talking to it. The client connects on the app's own event
loop in :meth:`ServiceHub.reload_profiles`, which the dashboard calls when it mounts. From then
on nothing polls: the serve pushes every pool's state after each change (protocol v2's
``watch_pools``), its profiles come as their own YAML (parsed here, so the dashboard and the
policy editor see the very profile the serve runs), and its flow events arrive through one
``watch_flows`` that this hub fans out to every open flow log.

Everything the local hub does works attached: start, stop and resize a pool; apply a policy to
a running pool and save it to the serve's profile file (its comments kept); reserve a VM, open
its console, run commands through its agent (``engine.RemoteAgent``).

When the link drops (the serve stopped, the ssh connection broke) the hub says so on its row
and reconnects every :data:`RETRY_S` seconds with the session's token: VMs the serve held for
us through its grace period come back (their consoles reopen on the next look), the others are
marked lost.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import engine
from capsatui.hub.base import HISTORY, Hub, PoolState
from capsatui.hub.flows import FlowFanout

log = logging.getLogger(__name__)

RETRY_S = 1.0  # seconds between reconnection attempts
REATTACH_POLL_S = 0.2  # how often a console waiting for the link looks again
CONNECT_TIMEOUT = 15.0  # an ssh link takes a while to come up


@functools.cache
def _stats_fields() -> frozenset[str]:
    # On first use, not at import: the app's first frame comes before the engine loads.
    return frozenset(f.name for f in fields(engine.PoolStats))


def _member(m: dict[str, Any]) -> engine.PoolMember:
    return engine.PoolMember(m["id"], m["state"], m["pid"], float(m["age_s"]))


def _trust_paths(_path: Path) -> bool:
    return True  # the profile's files are on the serve's host: it checked them, we cannot


class ServiceVm:
    """A VM this app reserved from the serve (an ``engine.ReservedVm``)."""

    def __init__(self, hub: ServiceHub, vm_id: str, pool: str) -> None:
        self._hub = hub
        self.id = vm_id
        self.pool_name = pool
        self.lost: str | None = None
        self.released = False
        self.open_console: engine.Console | None = None  # the attachment's, once opened

    @property
    def pid(self) -> int | None:
        member = self._hub.member(self.pool_name, self.id)
        return member.pid if member is not None else None

    def status(self) -> str:
        if self.lost is not None:
            return "lost"
        member = self._hub.member(self.pool_name, self.id)
        return member.state if member is not None else "gone"

    async def console(self) -> engine.Console:
        """The VM's console (one writable attachment per VM, shared by every reopen; a new one
        after the link came back)."""
        if self.open_console is None or self.open_console.closed:
            client = self._hub.require_client()
            self.open_console = await engine.remote_console(client, self.id, from_start=True, write=True)
        return self.open_console

    @property
    def has_agent(self) -> bool:
        return bool(self._hub.pool_has_agent(self.pool_name))

    async def set_console_size(self, cols: int, rows: int) -> bool:
        return await self._hub.require_client().set_console_size(self.id, cols, rows)

    async def agent(self) -> engine.AgentLike:
        if not self.has_agent:
            raise engine.AgentUnavailable(f"pool {self.pool_name!r} runs no guest agent (not a sandbox)")
        return engine.RemoteAgent(self._hub.require_client(), self.id)

    async def release(self) -> None:
        await self._hub.release(self)


class ServiceHub(Hub):
    """The pools of a running ``capsa-tui serve`` at ``address``; ``label`` names it on screen."""

    def __init__(self, address: engine.ServiceAddress | Path | str, label: str | None = None) -> None:
        super().__init__()
        self.mode = "service"
        self.address = address if isinstance(address, engine.ServiceAddress) else \
            engine.ServiceAddress(kind="unix", path=Path(address))
        self.socket_path = self.address.path  # None for ssh (and for the default local socket)
        self.where = label or self.address.describe()
        self.accel = self.accel_name = "serve's"  # until the hello says which
        self._client: engine.ServiceClient | None = None
        self._session: str | None = None
        self._grace_s = 0.0  # how long the serve holds our VMs after the link drops
        self._error: str | None = None
        self._states: dict[str, dict[str, Any]] = {}
        self._profiles: dict[str, engine.Profile] = {}
        self._hist_idle: dict[str, deque[int]] = {}
        self._hist_boot: dict[str, deque[float]] = {}
        self._created: dict[str, int] = {}
        self._reserved: dict[str, ServiceVm] = {}
        self._flows = FlowFanout()
        self._tasks: set[asyncio.Task[None]] = set()
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    # -- the link ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (once; while the link is down, the reconnect loop does it again)."""
        if self._client is not None or self._closed:
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect_once(), name="service-hub-connect")
        await asyncio.shield(self._connecting)

    async def _connect_once(self) -> None:
        try:
            client = await engine.ServiceClient.connect(self.address, CONNECT_TIMEOUT, resume=self._session)
        except engine.ServiceError as err:
            self._error = str(err)
            self._changed()
            self._spawn(self._reconnect(), "service-hub-reconnect")
            return
        await self._attached(client)

    async def _attached(self, client: engine.ServiceClient) -> None:
        resumed = set(client.resumed)
        self._client, self._session, self._error = client, client.session, None
        self._grace_s = client.grace_s
        self.accel = self.accel_name = client.accel or "serve's"
        for vm in self._reserved.values():
            if vm.id in resumed:
                vm.lost = None  # held by the serve through its grace period: ours again
            elif vm.lost is None:
                vm.lost = "released by the serve while the link was down (its grace period ended)"
        try:
            await self._read_profiles(await client.profiles())
            watch = await client.watch_pools()
            first = await asyncio.wait_for(watch.next(-1), CONNECT_TIMEOUT)  # states() is whole from here on
            if first is not None:
                self._take_states(first)
            if self._flows.readers:
                await self._start_flows(client)
        except (engine.ServiceError, TimeoutError) as err:
            await self._lost(client, str(err) or "the serve sent no pool state")
            return
        self._spawn(self._follow(client, watch), "service-hub-pools")

    async def _follow(self, client: engine.ServiceClient, watch: engine.PoolWatch) -> None:
        seen = watch.version
        while (states := await watch.next(seen)) is not None:
            seen = watch.version
            self._take_states(states)
        await self._lost(client, watch.ended or "the serve closed the connection")

    async def _lost(self, client: engine.ServiceClient, reason: str) -> None:
        if self._client is not client or self._closed:
            return
        self._client = None
        self._error = f"lost the serve at {self.where}: {reason}; reconnecting"
        for vm in self._reserved.values():
            vm.open_console = None  # its attachment ended with the link
        self._changed()
        with contextlib.suppress(engine.ServiceError):
            await client.close()
        self._spawn(self._reconnect(), "service-hub-reconnect")

    async def _reconnect(self) -> None:
        while not self._closed and self._client is None:
            await asyncio.sleep(RETRY_S)
            try:
                client = await engine.ServiceClient.connect(self.address, CONNECT_TIMEOUT, resume=self._session)
            except engine.ServiceError as err:
                self._error = f"cannot reach the serve at {self.where}: {err}; retrying"
                self._changed()
                continue
            await self._attached(client)
            return

    def require_client(self) -> engine.ServiceClient:
        if self._client is None:
            raise engine.ServiceUnavailable(self._error or f"not connected to the serve at {self.where}")
        return self._client

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- state -------------------------------------------------------------------------------

    async def _read_profiles(self, reply: dict[str, Any]) -> None:
        profiles = {}
        for item in reply.get("profiles", []):
            profile = self._parse_profile(item)
            if profile is not None:
                profiles[profile.name] = profile
        self._profiles = profiles
        self._changed()

    def _parse_profile(self, item: dict[str, Any]) -> engine.Profile | None:
        text, path = item.get("text"), item.get("path")
        if not isinstance(text, str):
            return None
        where = Path(path) if isinstance(path, str) else None
        try:
            return engine.parse_profile(text, f"{self.where}:{path}", base_dir=where.parent if where else None,
                                        source=item.get("source", "file"), path=where, is_file=_trust_paths)
        except engine.EngineError as err:  # a newer serve's field we do not know: show it, go on
            log.warning("profile %s of %s: %s", item.get("name"), self.where, err)
            return None

    def _take_states(self, states: list[dict[str, Any]]) -> None:
        self._states = {str(s["name"]): s for s in states}
        for name, state in self._states.items():
            raw = state.get("stats")
            if raw is None:
                continue
            idle = self._hist_idle.setdefault(name, deque(maxlen=HISTORY))
            if not idle or idle[-1] != raw["idle"]:
                idle.append(int(raw["idle"]))
            # No per-boot times over the wire: sample the median each time a boot finished.
            if raw["created"] != self._created.get(name) and raw.get("boot_p50_s") is not None:
                self._hist_boot.setdefault(name, deque(maxlen=HISTORY)).append(float(raw["boot_p50_s"]))
            self._created[name] = raw["created"]
        for vm in self._reserved.values():
            if self.member(vm.pool_name, vm.id) is None and not vm.released and vm.lost is None:
                vm.lost = "no longer in the serve's pool"
        self._changed()

    def member(self, pool: str, vm_id: str) -> engine.PoolMember | None:
        """The serve's member ``vm_id`` of ``pool`` as last pushed (None: gone)."""
        for m in self._states.get(pool, {}).get("members", []):
            if m["id"] == vm_id:
                return _member(m)
        return None

    def pool_has_agent(self, pool: str) -> bool | None:
        state = self._states.get(pool)
        return state.get("has_agent") if state is not None else None

    def states(self) -> list[PoolState]:
        result = []
        for name, raw in sorted(self._states.items()):
            stats = None
            if raw.get("stats") is not None:
                stats = engine.PoolStats(**{k: v for k, v in raw["stats"].items() if k in _stats_fields()})
            result.append(PoolState(
                name, self._profiles.get(name), raw.get("error"), bool(raw.get("running")), stats,
                [_member(m) for m in raw.get("members", [])],
                list(self._hist_idle.get(name, ())), list(self._hist_boot.get(name, ())),
                starting=bool(raw.get("starting")), size=raw.get("size"), has_agent=raw.get("has_agent")))
        if self._error is not None:
            result.append(PoolState(self.where, None, self._error, False, None, [], [], []))
        return result

    def profile(self, name: str) -> engine.Profile | None:
        return self._profiles.get(name)

    def policy(self, name: str) -> engine.NetworkPolicy | None:
        profile = self._profiles.get(name)
        if profile is not None and isinstance(profile.network, engine.UserNatConfig):
            return profile.network.policy
        return None

    def reserved(self) -> list[engine.ReservedVm]:
        return list(self._reserved.values())

    # -- actions -----------------------------------------------------------------------------

    async def reload_profiles(self) -> None:
        """Connect on first call; then make the serve read its profiles again."""
        if self._client is None:
            await self.connect()
            return
        await self._read_profiles(await self.require_client().reload())

    async def start_pool(self, name: str, size: int | None = None) -> None:
        state = self._states.get(name)
        if state is not None and (state.get("running") or state.get("starting")) and size is None:
            return  # already running, like LocalHub.start_pool of a running pool
        await self.require_client().start_pool(name, size)

    async def stop_pool(self, name: str) -> None:
        await self.require_client().stop_pool(name)

    async def resize(self, name: str, size: int) -> None:
        engine.check_pool_size(size)
        await self.require_client().resize_pool(name, size)

    async def set_policy(self, name: str, policy: engine.NetworkPolicy) -> None:
        await self.require_client().set_policy(name, policy, apply=True, save=False)

    async def save_policy(self, name: str, policy: engine.NetworkPolicy) -> engine.Profile:
        reply = await self.require_client().set_policy(name, policy, apply=False, save=True)
        saved = self._parse_profile(reply.get("profile") or {})
        if saved is None:
            raise engine.ServiceError(f"the serve at {self.where} saved the policy but sent no profile back")
        await self._read_profiles(await self.require_client().profiles())
        return saved

    async def reserve(self, name: str, timeout: float = 120) -> ServiceVm:
        vm_id = await self.require_client().reserve(name, timeout)  # ServiceError says why not
        vm = self._reserved[vm_id] = ServiceVm(self, vm_id, name)
        self._changed()
        return vm

    async def reattach_console(self, vm: engine.ReservedVm) -> engine.ConsoleLike | None:
        """Wait for the link (up to the serve's grace period and a connection's time) and attach
        again, from now on (the serve's scrollback is not replayed into a view that has it)."""
        own = self._reserved.get(vm.id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace_s + CONNECT_TIMEOUT
        while own is not None and not own.released and not self._closed:
            client = self._client
            if own.lost is not None:
                return None  # the serve released it while the link was down
            if client is not None and client.lost is None:
                if own.open_console is None or own.open_console.closed:
                    own.open_console = await engine.remote_console(client, own.id, from_start=False, write=True)
                return own.open_console
            if loop.time() > deadline:
                return None
            await asyncio.sleep(REATTACH_POLL_S)
        return None

    async def release(self, vm: engine.ReservedVm) -> None:
        own = vm if isinstance(vm, ServiceVm) else self._reserved.get(vm.id)
        if own is None:
            return  # not one of ours (or already forgotten by close())
        try:
            if own.open_console is not None:
                await own.open_console.stream.close()  # detaches
            if not own.released and own.lost is None and self._client is not None:
                await self._client.release(own.id)
        finally:
            own.released = True
            self._reserved.pop(own.id, None)
            self._changed()

    # -- flow events -------------------------------------------------------------------------

    async def _start_flows(self, client: engine.ServiceClient) -> None:
        watch = await client.watch_flows()
        seen = set(self._flows.backlog)  # a reconnection's backlog repeats what came before
        for _pool, event in watch.backlog:
            if event not in seen:
                self._flows.publish(event)
        self._spawn(self._pump_flows(watch), "service-hub-flows")

    async def _pump_flows(self, watch: engine.FlowWatch) -> None:
        async for _pool, event in watch:
            self._flows.publish(event)

    def recent_events(self) -> list[engine.FlowEvent]:
        return list(self._flows.backlog)

    def flow_events(self) -> AsyncIterator[engine.FlowEvent]:
        # the serve sends flows only once asked: the first flow log asks
        return self._flows.subscribe(self._first_reader)

    async def _first_reader(self) -> None:
        if self._client is not None:
            await self._start_flows(self._client)

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Disconnect (saying bye: the serve releases every VM this app reserved). Idempotent."""
        self._closed = True
        tasks = [t for t in (*self._tasks, self._connecting) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._reserved.clear()  # closing the client ends every attachment, so every console pump
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
        self._flows.close()
        self._changed()


__all__ = ["CONNECT_TIMEOUT", "RETRY_S", "ServiceHub", "ServiceVm"]
