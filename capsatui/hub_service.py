"""ServiceHub: the app's hub over a running ``capsa-tui serve`` (``engine.ServiceClient``).

Start-up stays fast: :func:`capsatui.hub.make_hub` only probes the socket synchronously (a
Unix-socket connect answers at once: accepted, refused or missing) and builds a
:class:`ServiceHub` without talking to it. The real client connects on the app's own event loop
in :meth:`ServiceHub.reload_profiles`, which the dashboard calls when it mounts; from then on a
poll task asks the server for ``status`` every :data:`POLL_S` seconds and tells subscribers only
when something other than the members' ages changed.

Gaps of protocol v1 (documented, not hidden):

* the pools belong to the serve: ``start_pool`` of a served pool is a no-op (it already runs),
  anything else, ``stop_pool`` and ``resize`` raise :class:`engine.ConfigError`;
* there are no flow events over the wire: ``flow_events`` ends at once, ``recent_events`` is empty;
* the policy is read-only (the local profile's of the same name); ``set_policy`` raises;
* ``login``/``wait_for`` are done here on the attachment's bytes, not by the engine's matcher.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import engine
from capsatui.hub import HISTORY, Hub, PoolState

POLL_S = 0.5
SCROLLBACK = 1024 * 1024  # bytes a ServiceConsole keeps
NOT_HERE = "the pools belong to `capsa-tui serve`; start/stop them there"
_STATS_FIELDS = {f.name for f in fields(engine.PoolStats)}
Pattern = str | bytes | re.Pattern[str] | re.Pattern[bytes]


def _member(m: dict[str, Any]) -> engine.PoolMember:
    return engine.PoolMember(m["id"], m["state"], m["pid"], float(m["age_s"]))


def _find(pattern: Pattern, data: bytes) -> tuple[int, int] | None:
    """(start, end) of the first match of ``pattern`` in ``data`` (str patterns on UTF-8 text)."""
    if isinstance(pattern, (bytes, str)):
        needle = pattern.encode() if isinstance(pattern, str) else pattern
        return None if (at := data.find(needle)) < 0 else (at, at + len(needle))
    if isinstance(pattern.pattern, str):
        text = data.decode("utf-8", "replace")
        m = pattern.search(text)  # type: ignore[arg-type]
        return None if m is None else (len(text[: m.start()].encode()), len(text[: m.end()].encode()))
    m = pattern.search(data)  # type: ignore[arg-type]
    return None if m is None else (m.start(), m.end())


class ServiceReader:
    """Output of a :class:`ServiceConsole` from one position on: iterate it, or ``wait_for``."""

    def __init__(self, console: ServiceConsole, offset: int) -> None:
        self._console = console
        self._offset = offset
        self._leftover = b""  # read past a wait_for's match: the next read returns it first

    async def __aiter__(self) -> AsyncIterator[bytes]:  # type: ignore[misc]
        while chunk := await self._next():
            yield chunk

    async def _next(self) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return data
        console = self._console
        while True:
            start = console._base
            if self._offset < start:  # fell out of the bounded scrollback: skip ahead
                self._offset = start
            end = start + len(console._buffer)
            if self._offset < end:
                data = bytes(console._buffer[self._offset - start:])
                self._offset = end
                return data
            if console.closed_reason is not None:
                return b""
            await console._changed.wait()

    async def wait_for(self, pattern: Pattern, timeout: float | None = None) -> str:
        """Consume through the first match of ``pattern``; the text consumed is returned."""
        seen = bytearray()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = _find(pattern, bytes(seen))
                    if found is not None:
                        self._leftover = bytes(seen[found[1]:])
                        return bytes(seen[: found[1]]).decode("utf-8", "replace")
                    chunk = await self._next()
                    if not chunk:
                        raise engine.ConsoleClosed(f"console closed while waiting for {pattern!r}: "
                                                   f"{self._console.closed_reason}")
                    seen += chunk
                    del seen[: max(0, len(seen) - 65536)]  # the matcher's window, like the engine's
        except TimeoutError:
            raise engine.ConsoleTimeout(f"{pattern!r} not seen in {timeout}s",
                                        seen=bytes(seen).decode("utf-8", "replace")) from None


class ServiceConsole:
    """A served VM's console with the methods the console screen uses (see engine.Console).

    One writable attachment feeds a bounded scrollback; every reader reads from it.
    """

    def __init__(self, client: engine.ServiceClient, attachment: Any) -> None:
        self._client = client
        self._attachment = attachment
        self.vm_id: str = attachment.vm_id
        self._buffer = bytearray()
        self._base = 0  # offset of the first byte still in _buffer
        self._changed = asyncio.Event()
        self.closed_reason: str | None = None
        self._pump_task = asyncio.create_task(self._pump(), name=f"service-console-{self.vm_id}")

    async def _pump(self) -> None:
        try:
            async for chunk in self._attachment:
                self._buffer += chunk
                overflow = len(self._buffer) - SCROLLBACK
                if overflow > 0:
                    del self._buffer[:overflow]
                    self._base += overflow
                self._wake()
        finally:
            self.closed_reason = self._attachment.closed_reason or "the stream ended"
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()  # waiters hold the old one: each wakes exactly once

    def reader(self, from_start: bool = False) -> ServiceReader:
        return ServiceReader(self, self._base if from_start else self._base + len(self._buffer))

    def scrollback(self) -> bytes:
        return bytes(self._buffer)

    async def write(self, data: bytes) -> None:
        try:
            await self._attachment.write(data)
        except engine.ServiceError as err:
            raise engine.ConsoleError(str(err)) from None

    async def send_interrupt(self) -> None:
        await self.write(b"\x03")

    async def send_eof(self) -> None:
        await self.write(b"\x04")

    async def wait_for(self, pattern: Pattern, timeout: float | None = None) -> str:
        """Wait for ``pattern`` in output that arrives from now on."""
        return await self.reader().wait_for(pattern, timeout)

    async def run(self, command: str, timeout: float | None = 30) -> engine.CommandResult:
        """The service's ``exec``: the command runs in the guest shell, framed by the engine."""
        try:
            return await self._client.exec(self.vm_id, command, timeout)
        except engine.ServiceError as err:
            if getattr(err, "kind", "") == "ConsoleTimeout":
                raise engine.ConsoleTimeout(str(err)) from None
            raise engine.ConsoleError(str(err)) from None

    async def login(self, user: str, password: str | None = None, timeout: float = 30) -> None:
        """Log in at a getty, like engine.Console.login but on the attachment's bytes."""
        deadline = asyncio.get_running_loop().time() + timeout
        remaining = lambda: max(0.0, deadline - asyncio.get_running_loop().time())  # noqa: E731
        reader = self.reader()
        await self.write(b"\n")  # ask getty for a fresh prompt: the old one may have scrolled by
        await reader.wait_for("login: ", remaining())
        await self.write(user.encode() + b"\n")
        if password is not None:
            await reader.wait_for("Password: ", remaining())
            await self.write(password.encode() + b"\n")
        text = await reader.wait_for(re.compile(r"[#$] |Login incorrect"), remaining())
        if text.endswith("Login incorrect"):
            raise engine.ConsoleError(f"login as {user!r} failed: Login incorrect")

    async def close(self) -> None:
        """Stop watching (the VM itself is released by the hub)."""
        with contextlib.suppress(engine.ServiceError):
            await self._attachment.detach()
        self._pump_task.cancel()
        await asyncio.wait([self._pump_task])


class ServiceVm:
    """A VM this app reserved from the serve: ``id``, ``pool.name``, ``pid``, ``lost``, ``status()``."""

    def __init__(self, hub: ServiceHub, vm_id: str, pool: str) -> None:
        self._hub = hub
        self.id = vm_id
        self.pool = SimpleNamespace(name=pool)  # the dashboard reads vm.pool.name
        self.lost: str | None = None
        self.released = False
        self._console: ServiceConsole | None = None

    @property
    def pid(self) -> int | None:
        return getattr(self._hub._member(self.pool.name, self.id), "pid", None)

    def status(self) -> str:
        return getattr(self._hub._member(self.pool.name, self.id), "state", "gone")

    async def console(self) -> ServiceConsole:
        """The VM's console (one attachment per VM, shared by every reopen)."""
        if self._console is None or self._console.closed_reason is not None:
            client = self._hub._require_client()
            self._console = ServiceConsole(client, await client.attach(self.id, from_start=True, write=True))
        return self._console


class ServiceHub(Hub):
    """The pools of a running ``capsa-tui serve``; see the module docstring for what it cannot do."""

    def __init__(self, socket_path: Path | str) -> None:
        super().__init__()
        self.mode = "service"
        self.socket_path = Path(socket_path)
        self.accel = self.accel_name = "serve's"  # the serve chose it; protocol v1 does not say
        self._client: engine.ServiceClient | None = None
        self._error: str | None = None
        self._pools: dict[str, dict[str, Any]] = {}
        self._profiles: dict[str, engine.Profile] = {}
        self._hist_idle: dict[str, deque[int]] = {}
        self._hist_boot: dict[str, deque[float]] = {}
        self._created: dict[str, int] = {}
        self._reserved: dict[str, ServiceVm] = {}
        self._poller: asyncio.Task[None] | None = None
        self._last: Any = None
        self._closed = False

    async def connect(self) -> None:
        """Connect (once) and start polling; errors are shown as the hub's error row."""
        if self._client is not None or self._closed:
            return
        try:
            self._client = await engine.ServiceClient.connect(self.socket_path, timeout=2.0)
        except engine.ServiceError as err:
            self._error = str(err)
            self._changed()
            return
        self._error = None
        await self._poll_once()
        self._poller = asyncio.create_task(self._poll(), name="service-hub-poll")

    def _require_client(self) -> engine.ServiceClient:
        if self._client is None:
            raise engine.ServiceUnavailable(self._error or f"not connected to the serve at {self.socket_path}")
        return self._client

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self._poll_once()
            except engine.ServiceError as err:  # the serve went away: say so and stop polling
                self._error = f"lost the serve at {self.socket_path}: {err}"
                self._pools.clear()
                for vm in self._reserved.values():
                    vm.lost = "the serve went away"
                self._changed()
                return

    async def _poll_once(self) -> None:
        pools = await self._require_client().status()
        # Ages change every poll: leave them out of the comparison so an idle serve costs nothing.
        key = [(p, [(m["id"], m["state"], m["pid"]) for m in p.get("members", [])]) for p in
               ({k: v for k, v in pool.items() if k != "members"} for pool in pools)]
        self._pools = {str(p["name"]): p for p in pools}
        if key == self._last:
            return
        self._last = key
        for name, raw in self._pools.items():
            idle = self._hist_idle.setdefault(name, deque(maxlen=HISTORY))
            if not idle or idle[-1] != raw["idle"]:
                idle.append(int(raw["idle"]))
            # No per-boot times over the wire: sample the median each time a boot finished.
            if raw["created"] != self._created.get(name) and raw.get("boot_p50_s") is not None:
                self._hist_boot.setdefault(name, deque(maxlen=HISTORY)).append(float(raw["boot_p50_s"]))
            self._created[name] = raw["created"]
        for vm in self._reserved.values():
            if self._member(vm.pool.name, vm.id) is None and not vm.released:
                vm.lost = vm.lost or "no longer in the serve's pool"
        self._changed()

    def _member(self, pool: str, vm_id: str) -> engine.PoolMember | None:
        for m in self._pools.get(pool, {}).get("members", []):
            if m["id"] == vm_id:
                return _member(m)
        return None

    def states(self) -> list[PoolState]:
        result = []
        for name, raw in sorted(self._pools.items()):
            stats = engine.PoolStats(**{k: v for k, v in raw.items() if k in _STATS_FIELDS})
            members = [_member(m) for m in raw.get("members", [])]
            result.append(PoolState(name, self._profiles.get(name), stats.last_error, True, stats, members,
                                    list(self._hist_idle.get(name, ())), list(self._hist_boot.get(name, ())),
                                    size=stats.size))
        if self._error is not None:
            result.append(PoolState(str(self.socket_path), None, self._error, False, None, [], [], []))
        return result

    def profile(self, name: str) -> engine.Profile | None:
        return self._profiles.get(name)

    def policy(self, name: str) -> engine.NetworkPolicy | None:
        profile = self._profiles.get(name)
        if profile is not None and isinstance(profile.network, engine.UserNatConfig):
            return profile.network.policy
        return None

    def reserved(self) -> list[ServiceVm]:  # type: ignore[override]
        return list(self._reserved.values())

    async def reload_profiles(self) -> None:
        """Connect on first call, then read the local profiles (for names and read-only policies)."""
        await self.connect()
        try:
            profiles = await asyncio.to_thread(engine.load_profiles)
        except engine.ProfileError as err:
            profiles = err.profiles
        # Only the served pools: a profile the serve does not hold cannot be started from here.
        self._profiles = {p.name: p for p in profiles if p.name in self._pools}
        self._changed()

    async def start_pool(self, name: str, size: int | None = None) -> None:
        if name in self._pools and size is None:
            return  # already running in the serve, like LocalHub.start_pool of a running pool
        raise engine.ConfigError(NOT_HERE)

    async def stop_pool(self, name: str) -> None:
        raise engine.ConfigError(NOT_HERE)

    async def resize(self, name: str, size: int) -> None:
        raise engine.ConfigError(NOT_HERE)

    def set_policy(self, name: str, policy: engine.NetworkPolicy) -> None:
        raise engine.ConfigError("the pools belong to `capsa-tui serve`: their policy comes from its profiles")

    def recent_events(self) -> list[engine.FlowEvent]:
        return []  # protocol v1 carries no flow events

    async def flow_events(self) -> AsyncIterator[engine.FlowEvent]:  # type: ignore[override]
        return
        yield  # an async generator that ends at once

    async def reserve(self, name: str, timeout: float = 120) -> ServiceVm:  # type: ignore[override]
        vm_id = await self._require_client().reserve(name, timeout)  # ServiceError says why not
        vm = self._reserved[vm_id] = ServiceVm(self, vm_id, name)
        with contextlib.suppress(engine.ServiceError):
            await self._poll_once()  # pid and state right away, not half a second later
        self._changed()
        return vm

    async def release(self, vm: ServiceVm) -> None:  # type: ignore[override]
        try:
            if vm._console is not None:
                await vm._console.close()
            if not vm.released and vm.lost is None:
                await self._require_client().release(vm.id)
        finally:
            vm.released = True
            self._reserved.pop(vm.id, None)
            if self._client is not None and not self._closed:
                with contextlib.suppress(engine.ServiceError):
                    await self._poll_once()
            self._changed()

    async def close(self) -> None:
        """Stop polling and disconnect; the serve releases every VM this app reserved. Idempotent."""
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.wait([self._poller])
            self._poller = None
        self._reserved.clear()  # closing the client ends every attachment, so every console pump
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
        self._changed()


__all__ = ["NOT_HERE", "ServiceConsole", "ServiceHub", "ServiceReader", "ServiceVm"]
