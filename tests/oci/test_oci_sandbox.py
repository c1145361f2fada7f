"""OCI sandboxes on real guests: an image pulled from the loopback registry, run with its config
honoured; exec, files and copies inside the image's root; an image without /bin/sh; a share
mounted inside the image; and a snapshot pool of an OCI profile whose clones hold the image."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import engine
from engine.agent.client import Agent
from engine.microvm.share import MountMode
from tests.oci.conftest import Registry
from tests.oci.images import APP_UID, MAIN_PY
from tests.template_store import private_template_store
from tests.waiting import pool_settled, until

pytestmark = pytest.mark.guest
_READY_S = 180


@pytest.fixture(scope="module")
async def app_vm(registry: Registry) -> AsyncIterator[engine.VmHandle]:
    vm = await (engine.sandbox().oci(registry.app, tls_verify=False)
                .network(engine.NetworkMode.user_nat().build()).build())
    try:
        await vm.wait_ready(_READY_S)
        yield vm
    finally:
        await vm.kill()


@pytest.fixture
async def agent(app_vm: engine.VmHandle) -> Agent:
    return await app_vm.agent(timeout=_READY_S)


async def test_the_image_config_is_honoured(app_vm: engine.VmHandle, agent: Agent) -> None:
    workload = app_vm.spec.workload
    assert workload is not None and workload.command == ("python3", "/app/main.py")
    r = await agent.exec([*workload.command, "arg"], timeout=120)
    assert (r.exit_code, r.stdout.decode()) == (0, f"main /app {APP_UID} hello from the image arg\n"), r
    r = await agent.exec("id -un; echo $HOME; pwd", timeout=60)
    assert r.stdout.decode().split() == ["app", "/home/app", "/app"], r
    r = await agent.exec(["id", "-u"], user="root", env={"GREETING": "override"}, cwd="/", timeout=60)
    assert r.stdout.decode().strip() == "0", r
    r = await agent.exec("echo $GREETING", env={"GREETING": "override"}, timeout=60)
    assert r.stdout.decode() == "override\n"
    with pytest.raises(engine.EngineError, match="nobody-here"):
        await agent.exec(["true"], user="nobody-here", timeout=60)


async def test_commands_and_files_see_the_image_root(agent: Agent) -> None:
    assert await agent.read_file("/app/main.py") == MAIN_PY
    assert not await agent.exists("/etc/issue")  # whited out by the app layer
    assert not await agent.exists("/usr/lib/capsa/agent")  # our system image is not the workload's
    stat = await agent.stat("/usr/local/bin/setuid-marker")
    assert (stat.mode, stat.uid) == (0o4755, 0)
    await agent.write_file("/app/written.txt", b"from the host\n")
    r = await agent.exec("cat /app/written.txt; ls /app; test -c /dev/null && echo dev; test -d /proc/self && echo proc; "
                         "stat -c %a /tmp; touch /tmp/x && echo tmp", timeout=60, user="root")
    assert r.stdout.decode().split() == ["from", "the", "host", "main.py", "written.txt", "dev", "proc", "1777", "tmp"], r
    names = [entry.name for entry in await agent.list_dir("/app")]
    assert names == ["main.py", "written.txt"]
    inside = await agent.exec(["cat", "/etc/resolv.conf"], timeout=60)
    system = await agent.exec(["cat", "/etc/resolv.conf"], timeout=60, system=True)
    assert inside.stdout == system.stdout and b"nameserver" in inside.stdout, (inside, system)


async def test_copies_in_and_out_land_in_the_image_root(agent: Agent, tmp_path: Path) -> None:
    source = tmp_path / "data"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "f.txt").write_text("copied\n")
    await agent.copy_in(source, "/srv/data")
    r = await agent.exec(["cat", "/srv/data/sub/f.txt"], timeout=60)
    assert r.stdout == b"copied\n"
    back = tmp_path / "back"
    await agent.copy_out("/app", back)
    assert (back / "main.py").read_bytes() == MAIN_PY


async def test_an_image_without_a_shell_runs_argv_and_mounts_a_share_inside(registry: Registry, tmp_path: Path) -> None:
    host = tmp_path / "share"
    host.mkdir()
    (host / "hello.txt").write_text("from the share\n")
    vm = await engine.sandbox().oci(registry.noshell, tls_verify=False).share(host, "/mnt/src", MountMode.ReadOnly).build()
    try:
        await vm.wait_ready(_READY_S)
        agent = await vm.agent(timeout=_READY_S)
        r = await agent.exec(["python3", "-c", "print(open('/srv/marker').read().strip())"], timeout=120)
        assert (r.exit_code, r.stdout) == (0, b"no shell here\n"), r
        with pytest.raises(engine.GuestFileNotFound, match="/bin/sh"):
            await agent.exec("echo hi", timeout=60)
        r = await agent.exec(["python3", "-c", "print(open('/mnt/src/hello.txt').read().strip())"], timeout=120)
        assert r.stdout == b"from the share\n", r
        assert vm.spec.workload is not None and vm.spec.workload.command == ("python3", "-c", "print('noshell')")
    finally:
        await vm.kill()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    with private_template_store(tmp_path / "templates", "oci") as root:
        yield root


async def test_a_snapshot_pool_of_an_oci_profile_hands_out_clones_in_the_image(registry: Registry, store: Path) -> None:
    text = (f"name: ocipool\nkind: sandbox\nimage:\n  oci: {registry.app}\n  tls_verify: false\n"
            "pool:\n  size: 2\n  max_size: 2\n  snapshot: true\n")
    profile = engine.parse_profile(text, "ocipool.yaml")
    assert profile.describe_boot() == f"OCI image {registry.app}"
    builder = profile.pool_builder()
    async with await builder.build(2) as pool:
        seen = set()
        for _ in range(3):
            vm = await pool.reserve(timeout=_READY_S)
            agent = await vm.agent(timeout=60)
            r = await agent.exec("python3 /app/main.py; hostname; cat /proc/sys/kernel/random/boot_id", timeout=120)
            lines = r.stdout.decode().splitlines()
            assert lines[0] == f"main /app {APP_UID} hello from the image", r
            assert lines[1] == vm.id
            seen.add(lines[2])
            await vm.release()
        await until(lambda: pool_settled(pool), timeout=_READY_S * 2, what="the pool refilled")
        stats = pool.stats()
        assert (stats.snapshot, stats.fallbacks, stats.snapshot_error) == ("ready", 0, None), stats
    (template,) = [p for p in store.iterdir() if not p.name.startswith(".")]
    from engine.snapshot.snapshot import Snapshot
    info = Snapshot.load(template).info
    assert info.guest.workload is not None and registry.app in info.guest.workload
    assert os.path.basename(info.guest.disks[0][0]).endswith(".erofs")


def test_sandbox_run_oci_replaces_the_cmd_and_exits_with_its_status(registry: Registry) -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "capsatui.cli", "sandbox", "run", "--oci", f"oci:{registry.app_layout}:1", "--",
         "-c", "import os, sys; print(os.getcwd(), os.environ['GREETING']); sys.exit(3)"],
        capture_output=True, timeout=600, cwd=root, stdin=subprocess.DEVNULL)
    # Entrypoint python3 kept, the words after -- replace Cmd (docker run IMAGE ARGS).
    assert (done.returncode, done.stdout) == (3, b"/app hello from the image\n"), done.stderr.decode()
