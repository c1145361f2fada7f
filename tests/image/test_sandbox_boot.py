"""Guest tests of the sandbox image: boot into Debian, python3, the overlay (tmpfs and scratch
disk), the network through the gateway, and the agent's port and respawn."""
from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import engine
from engine.microvm.boot import LinuxDirectBoot
from tests.sandboxes import FIND_AGENT, running_sandbox
from tests.waiting import until

pytestmark = pytest.mark.guest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_sandbox_boots_into_debian_with_python(sandbox_boot_config: LinuxDirectBoot) -> None:
    async with running_sandbox(sandbox_boot_config) as vm:
        con = await vm.console()
        out = await con.exec("python3 -c 'import json,sys; print(json.dumps(sys.version_info[:2]))'", timeout=120)
        assert out == "[3, 11]\n"
        assert "bookworm" in await con.exec("cat /etc/os-release", timeout=60)
        # PID 1 is busybox init from the image (the initramfs is gone after switch_root).
        assert (await con.exec("readlink /proc/1/exe", timeout=60)).strip() == "/usr/lib/capsa/busybox"
        assert (await con.exec("hostname", timeout=60)).strip() == "capsa"


async def test_writes_go_to_each_vms_own_overlay(sandbox_boot_config: LinuxDirectBoot) -> None:
    assert sandbox_boot_config.root_disk is not None
    rootfs = sandbox_boot_config.root_disk.path
    before = _sha256(rootfs)
    async with running_sandbox(sandbox_boot_config) as one, running_sandbox(sandbox_boot_config) as two:
        con1, con2 = await one.console(), await two.console()
        assert (await con1.run("echo mine > /usr/capsa-test && rm /usr/bin/env", timeout=60)).exit_code == 0
        assert await con1.exec("cat /usr/capsa-test", timeout=60) == "mine\n"
        # The other VM shares the image and sees none of it.
        assert (await con2.run("test -e /usr/capsa-test", timeout=60)).exit_code == 1
        assert (await con2.run("test -x /usr/bin/env", timeout=60)).exit_code == 0
        assert "overlay / overlay" in await con1.exec("grep ' / ' /proc/mounts", timeout=60)
    assert _sha256(rootfs) == before


async def test_scratch_disk_holds_the_overlay(sandbox_boot_config: LinuxDirectBoot) -> None:
    async with running_sandbox(sandbox_boot_config, scratch_disk_mb=256) as vm:
        con = await vm.console()
        # The overlay's upper mount is outside the switched root, so /proc/mounts does not show
        # it: the disk's own write counter proves where a written file went.
        def written_sectors(stat: str) -> int:
            return int(stat.split()[6])

        before = written_sectors(await con.exec("cat /sys/block/vdb/stat", timeout=60))
        assert (await con.run("dd if=/dev/zero of=/usr/big bs=1M count=64 2>/dev/null && sync", timeout=120)).exit_code == 0
        after = written_sectors(await con.exec("cat /sys/block/vdb/stat", timeout=60))
        assert after - before >= 64 * 2048, (before, after)  # 512-byte sectors: all 64 MiB reached vdb
        assert "/dev/vdb" not in await con.exec("cat /proc/mounts", timeout=60)


@contextmanager
def _http_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (the stdlib's name)
            body = b"hello from the host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_network_reaches_a_host_server_by_name(sandbox_boot_config: LinuxDirectBoot) -> None:
    with _http_server() as port:
        policy = engine.NetworkPolicy.deny_all().allow_dns().allow_domain("hostsvc.test")
        nat = engine.NetworkMode.user_nat().host("hostsvc.test", "127.0.0.1").policy(policy).build()
        async with running_sandbox(sandbox_boot_config, network=nat) as vm:
            con = await vm.console()
            # Debian's resolver reads the resolv.conf the initramfs's DHCP wrote.
            assert "nameserver" in await con.exec("cat /etc/resolv.conf", timeout=60)
            script = (
                "import urllib.request as u; "
                f"print(u.urlopen('http://hostsvc.test:{port}/', timeout=30).read().decode(), end='')"
            )
            out = await con.exec(f'python3 -c "{script}"', timeout=120)
            assert out == "hello from the host\n"


async def test_agent_runs_as_root_and_is_respawned(sandbox_boot_config: LinuxDirectBoot) -> None:
    async with running_sandbox(sandbox_boot_config) as vm:
        port = vm.agent_port()
        await port.wait_open(120)
        closes: list[bool] = []
        port.add_close_callback(lambda: closes.append(True))
        con = await vm.console()
        pid = (await con.exec(FIND_AGENT, timeout=60)).strip()
        assert pid.isdigit()
        assert (await con.exec(f"stat -c %u /proc/{pid}", timeout=60)).strip() == "0"
        assert (await con.run(f"kill -9 {pid}", timeout=60)).exit_code == 0
        await until(lambda: bool(closes), 60, "the port closing when the agent died")
        await until(lambda: port.is_open, 120, "busybox init respawning the agent")
        new_pid = (await con.exec(FIND_AGENT, timeout=60)).strip()
        assert new_pid.isdigit() and new_pid != pid

