"""engine.image.build: the real default guest image, built once (cached) from Debian packages."""
from __future__ import annotations

import dataclasses
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from engine.image import apt, kmods, vmlinux
from engine.image import build as images
from engine.errors import ImageError
from engine.console.match import READY_MARKER
from engine.image.build import GuestImage, ImageInputs


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return images.default_image()


@pytest.fixture(scope="module")
def initrd_names(image: GuestImage) -> list[str]:
    return _cpio(image.initrd, "-t").decode().split()


def _cpio(archive: Path, *args: str) -> bytes:
    busybox = shutil.which("busybox")
    assert busybox, "reading the initramfs back needs busybox: apt-get install busybox-static"
    with open(archive, "rb") as handle:
        return subprocess.run([busybox, "cpio", *args], stdin=handle, capture_output=True, check=True).stdout


def test_profile_prints_exactly_the_ready_marker() -> None:
    profile = images.guest_files()["etc/profile"][0]
    line = next(line for line in profile.splitlines() if line.startswith("*i*)") and "capsa-ready" in line)
    command = line.split(")", 1)[1].rsplit(";;", 1)[0]  # the printf of "*i*) printf ... ;;"
    busybox = shutil.which("busybox")
    assert busybox
    printed = subprocess.run([busybox, "sh", "-c", command], capture_output=True, check=True).stdout
    assert printed == READY_MARKER == b"\x1b]777;capsa-ready\x07"


def test_image_files_and_metadata(image: GuestImage) -> None:
    assert image.directory == images.images_dir() / image.key
    assert image.kernel.is_file() and image.initrd.is_file() and image.bzimage.is_file()
    assert image.kernel_package.startswith(f"linux-image-{image.kernel_version} ")
    assert image.kernel_version.endswith("-cloud-amd64")
    assert image.busybox_version


def test_kernel_is_pvh_vmlinux(image: GuestImage) -> None:
    assert image.pvh, "Debian's cloud kernel has the PVH entry note; extraction must have failed"
    assert image.kernel.name == "vmlinux"
    data = image.kernel.read_bytes()
    assert data[:4] == b"\x7fELF"
    assert vmlinux.has_pvh_entry(data)
    assert image.bzimage.read_bytes()[0x202:0x206] == b"HdrS"


def test_initrd_has_init_busybox_and_guest_files(initrd_names: list[str]) -> None:
    for name in ("init", "bin/busybox", "bin/sh", "sbin/udhcpc", "bin/capsa-shell", "etc/profile",
                 "etc/udhcpc/default.script", "etc/issue", "etc/acpid.conf", "dev/console"):
        assert name in initrd_names
    for directory in ("dev", "proc", "sys", "tmp", "run", "root", "home", "etc", "mnt"):
        assert directory in initrd_names


def test_initrd_holds_the_net_modules_in_dependency_order(image: GuestImage, initrd_names: list[str]) -> None:
    listing = _cpio(image.initrd, "-i", "--to-stdout", "etc/capsa/modules.net").decode()
    rows = [line.split() for line in listing.splitlines()]
    names = [name for name, _ in rows]
    assert names == ["virtio_ring", "virtio", "virtio_mmio", "failover", "net_failover", "virtio_net"]
    for _, path in rows:
        assert path.startswith(f"/lib/modules/{image.kernel_version}/") and path.endswith(".ko")
        assert path.lstrip("/") in initrd_names


def test_initrd_pci_list_loads_transport_before_net(image: GuestImage) -> None:
    names = [line.split()[0] for line in _cpio(image.initrd, "-i", "--to-stdout", "etc/capsa/modules.pci").decode().splitlines()]
    assert names.index("virtio_pci") < names.index("virtio_net")
    assert names.index("virtio_pci_modern_dev") < names.index("virtio_pci")


def test_cache_key_is_stable(image: GuestImage) -> None:
    first = images.image_key(images.current_inputs())
    assert images.image_key(images.current_inputs()) == first == image.key
    assert images.default_image(build=False).key == first


def test_any_changed_input_changes_the_key() -> None:
    inputs = images.current_inputs()
    key = images.image_key(inputs)
    bumped_busybox = dataclasses.replace(inputs.busybox, version=inputs.busybox.version + "+1")
    variants: list[ImageInputs] = [
        dataclasses.replace(inputs, busybox=bumped_busybox),
        dataclasses.replace(inputs, kernel=dataclasses.replace(inputs.kernel, name="linux-image-9.9.9-cloud-amd64")),
        dataclasses.replace(inputs, files=(*inputs.files, ("etc/extra", "644:x"))),
        dataclasses.replace(inputs, module_lists=(*inputs.module_lists, ("blk", ("virtio_blk",)))),
        dataclasses.replace(inputs, builder_version=inputs.builder_version + 1),
    ]
    keys = {images.image_key(variant) for variant in variants}
    assert key not in keys and len(keys) == len(variants)


def test_missing_capsa_kernel_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-vmlinuz"
    monkeypatch.setenv("CAPSA_KERNEL", str(missing))
    with pytest.raises(ImageError, match="CAPSA_KERNEL") as caught:
        images.default_image()
    assert str(missing) in str(caught.value)


def test_env_overrides_use_the_given_files(monkeypatch: pytest.MonkeyPatch, image: GuestImage) -> None:
    monkeypatch.setenv("CAPSA_KERNEL", str(image.bzimage))
    monkeypatch.setenv("CAPSA_INITRD", str(image.initrd))
    custom = images.default_image(build=False)
    assert (custom.kernel, custom.initrd) == (image.bzimage, image.initrd)
    assert not custom.pvh  # a bzImage is not an ELF


def test_no_apt_error_says_how_to_boot_your_own_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a host without apt, as far as lookups go
    with pytest.raises(ImageError) as caught:
        apt.require_tools()
    message = str(caught.value)
    assert "LinuxDirectBoot" in message and "CAPSA_KERNEL" in message and "Debian" in message


def test_unknown_package_says_run_apt_get_update() -> None:
    with pytest.raises(ImageError, match="apt-get update"):
        apt.show(["capsa-no-such-package-xyz"])


def test_module_tree_orders_dependencies_first(image: GuestImage, tmp_path: Path) -> None:
    deb = images.downloads_dir() / images.current_inputs().kernel.deb_filename
    apt.unpack(deb, tmp_path)
    tree = kmods.ModuleTree(tmp_path / "lib" / "modules" / image.kernel_version)
    order = [module.name for module in tree.load_order(["virtio_net"])]
    assert order[-1] == "virtio_net" and order.index("failover") < order.index("net_failover")
    assert tree.is_builtin("8250") and tree.load_order(["8250"]) == []
    with pytest.raises(ImageError, match="no_such_module"):
        tree.load_order(["no_such_module"])


def test_guest_scripts_parse(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    assert busybox
    for path, (text, mode) in images.guest_files().items():
        if text.startswith("#!/bin/sh") or path == "etc/profile":
            script = tmp_path / path.replace("/", "_")
            script.write_text(text)
            done = subprocess.run([busybox, "sh", "-n", str(script)], capture_output=True, text=True, check=False)
            assert done.returncode == 0, f"{path}: {done.stderr}"


def test_image_info_reports_the_image(image: GuestImage) -> None:
    info = images.image_info()
    assert info["status"] == "built" and info["key"] == image.key
    assert info["pvh"] == "yes" and info["kernel_size"].endswith("MiB")


@pytest.mark.guest
def test_image_boots_to_a_shell_and_powers_off(image: GuestImage) -> None:
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu, "apt-get install qemu-system-x86"
    append = f"console=ttyS0 quiet panic=-1 tsc_early_khz={_tsc_khz()}"
    argv = [qemu, "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-nodefaults",
            "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _read_until(proc, READY_MARKER, 60)
        _read_until(proc, b"# ", 10)
        assert proc.stdin is not None
        proc.stdin.write(b"echo $((6*7))-$(hostname)\n")
        proc.stdin.flush()
        assert b"42-capsa" in _read_until(proc, b"42-capsa", 20)
        proc.stdin.write(b"poweroff\n")
        proc.stdin.flush()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _tsc_khz() -> int:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    raise AssertionError("no 'cpu MHz' in /proc/cpuinfo")


def _read_until(proc: subprocess.Popen[bytes], pattern: bytes, timeout: float) -> bytes:
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while pattern not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{pattern!r} not seen within {timeout}s; last output {seen[-400:]!r}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"qemu exited before {pattern!r}; last output {seen[-400:]!r}"
            seen += chunk
    return seen


@pytest.fixture(scope="module")
def shares_image() -> GuestImage:
    return images.default_image(flavour=images.GENERIC)


def test_the_shares_flavour_is_the_generic_kernel_with_9p(image: GuestImage, shares_image: GuestImage) -> None:
    assert shares_image.flavour == images.GENERIC and image.flavour == images.CLOUD
    assert shares_image.kernel_version.endswith("-amd64") and not shares_image.kernel_version.endswith("cloud-amd64")
    assert shares_image.key != image.key and shares_image.pvh
    names = [line.split()[0] for line in
             _cpio(shares_image.initrd, "-i", "--to-stdout", "etc/capsa/modules.9p").decode().splitlines()]
    assert "crc32c_generic" in names and names.index("virtio_mmio") < names.index("9pnet_virtio") < names.index("9p")
    # The cloud kernel has no 9p: its initramfs has no such list; both load ext4 for disks.
    assert "etc/capsa/modules.9p" not in _cpio(image.initrd, "-t").decode().split()
    disk = [line.split()[0] for line in
            _cpio(shares_image.initrd, "-i", "--to-stdout", "etc/capsa/modules.disk").decode().splitlines()]
    assert disk[-1] == "ext4" and "virtio_blk" in disk
    assert images.image_info()["shares_kernel"].startswith(str(shares_image.kernel))


def test_a_boot_with_shares_swaps_only_the_default_kernel(shares_image: GuestImage, tmp_path: Path) -> None:
    import engine

    boot = engine.default_boot()
    swapped = boot.for_shares()
    assert (swapped.kernel, swapped.initrd, swapped.flavour) == (shares_image.kernel, shares_image.initrd, "generic")
    assert swapped.ready_marker == boot.ready_marker and swapped.capsa_guest
    assert swapped.for_shares() == swapped
    own = engine.LinuxDirectBoot(tmp_path / "my-kernel", tmp_path / "my-initrd")
    assert own.for_shares() is own  # your own kernel: 9p is yours to provide
    (tmp_path / "src").mkdir()
    spec = engine.vm(boot).share(tmp_path / "src", "src").spec()
    assert spec.boot.kernel == shares_image.kernel and engine.vm(boot).spec().boot.kernel == boot.kernel
