"""Unit tests of the builders' pure parts: the spec fields engine.sandbox() and .timeout() set."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

import engine
from engine.microvm.resources import seconds_of


def test_timeout_takes_seconds_or_a_timedelta_on_every_builder() -> None:
    boot = engine.LinuxDirectBoot("/k", "/i")
    assert engine.vm(boot).timeout(12.5).spec().timeout_s == 12.5
    assert engine.vm(boot).timeout(timedelta(minutes=1)).spec().timeout_s == 60.0
    assert engine.vm_pool(boot).timeout(3).spec().timeout_s == 3.0
    assert engine.sandbox().timeout(timedelta(seconds=9))._spec.timeout_s == 9.0


@pytest.mark.parametrize("bad", ["10", None, True])
def test_a_timeout_that_is_no_duration_is_a_config_error(bad: object) -> None:
    with pytest.raises(engine.ConfigError, match="timeout must be a number of seconds"):
        seconds_of(bad)  # type: ignore[arg-type]  # the wrong type is the point


def test_a_non_positive_timeout_is_refused_by_spec() -> None:
    with pytest.raises(engine.ConfigError, match="timeout must be a positive"):
        engine.vm(engine.LinuxDirectBoot("/k")).timeout(0).spec()


def test_sandbox_spec_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, tuple[str, ...], bool]] = []
    fake = engine.LinuxDirectBoot("/k", "/i", capsa_guest=True, has_agent=True,
                                  root_disk=engine.DiskImage("/r.erofs", read_only=True))

    def fake_boot(base: str, packages: tuple[str, ...], *, build: bool, progress: object) -> engine.LinuxDirectBoot:
        seen.append((base, packages, build))
        return fake

    monkeypatch.setattr("engine.microvm.sandbox_builder.sandbox_boot", fake_boot)
    builder = engine.sandbox()
    default = builder.spec()
    assert (default.cpus, default.memory_mb, default.console, default.boot) == (1, 512, True, fake)
    assert seen == [("debian", (), True)]
    spec = (
        engine.sandbox().cpus(2).memory_mb(768).image("debian", packages=["git", "python3"])
        .scratch_disk(64).timeout(30).spec(build=False)
    )
    assert (spec.cpus, spec.memory_mb, spec.scratch_disk_mb, spec.timeout_s) == (2, 768, 64, 30.0)
    assert seen[-1] == ("debian", ("git", "python3"), False)


def test_sandbox_shape_is_checked_before_the_image_is_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: object, **kwargs: object) -> engine.LinuxDirectBoot:
        raise AssertionError("the image was resolved for a bad shape")

    monkeypatch.setattr("engine.microvm.sandbox_builder.sandbox_boot", no_build)
    with pytest.raises(engine.ConfigError, match="cpus must be between"):
        engine.sandbox().cpus(0).spec()
    with pytest.raises(engine.ConfigError, match="scratch_disk_mb must be between"):
        engine.sandbox().scratch_disk(1).spec()


@pytest.mark.parametrize("bad", ["Python3", "no spaces", "-x", "a;rm"])
def test_a_bad_package_name_is_named_before_any_build(bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing may be built or looked up
    with pytest.raises(engine.ImageError, match=repr(bad).replace("(", r"\(")):
        engine.sandbox().image("debian", packages=["python3", bad])
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_base_and_a_string_of_packages_are_refused() -> None:
    with pytest.raises(engine.ImageError, match="'alpine' is not supported"):
        engine.sandbox().image("alpine")
    with pytest.raises(engine.ImageError, match="list of names"):
        engine.sandbox().image("debian", packages="python3")


async def test_create_checks_the_vm_without_starting_it(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    created = await engine.vm(engine.LinuxDirectBoot(kernel)).cpus(2).memory_mb(128).create()
    assert created.status() == engine.Created() and created.handle is None
    resources = created.resources()
    assert (resources.cpus, resources.memory_mb) == (2, 128) and resources.accel in ("kvm", "tcg")
    assert created.guest_os() is engine.GuestOs.LINUX
    with pytest.raises(engine.ConfigError, match=str(tmp_path / "nope")):
        await engine.vm(engine.LinuxDirectBoot(tmp_path / "nope")).create()


def test_resource_config_is_frozen_plain_data() -> None:
    config = engine.ResourceConfig(1, 256, "tcg")
    with pytest.raises(AttributeError):
        config.cpus = 2  # type: ignore[misc]  # frozen: assigning is the point
    assert config == engine.ResourceConfig(cpus=1, memory_mb=256, accel="tcg")
