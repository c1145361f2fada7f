"""An image's run config (the OCI image config's ``config`` object): Entrypoint, Cmd, Env,
WorkingDir and User, and the platform it was built for. Sans-IO: JSON in, checked data out."""
from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.errors import ImageError

# Docker's default when an image sets no PATH.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "i686": "386", "i386": "386"}


def host_architecture() -> str:
    """This machine's architecture in OCI's (Go's) words: ``amd64``, ``arm64``, ..."""
    machine = platform.machine()
    return _GO_ARCH.get(machine, machine)


@dataclass(frozen=True)
class ImageConfig:
    """What an image says about running it."""

    architecture: str
    os: str = "linux"
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str = "/"
    user: str = ""
    labels: tuple[tuple[str, str], ...] = field(default=())

    def command(self, args: Sequence[str] | None = None) -> list[str]:
        """The argv the image runs: Entrypoint + ``args``, or Entrypoint + Cmd without args
        (``docker run IMAGE ARGS`` semantics)."""
        return [*self.entrypoint, *(self.cmd if args is None else args)]

    def environment(self) -> dict[str, str]:
        """The image's Env as a mapping, with Docker's default PATH when it sets none."""
        env = dict(self.env)
        env.setdefault("PATH", DEFAULT_PATH)
        return env

    def check_platform(self, where: str) -> None:
        """ImageError unless this image runs on this host (linux, this architecture)."""
        host = host_architecture()
        if self.os != "linux":
            raise ImageError(f"{where} is an image for {self.os!r}, not linux: it cannot run in a Linux microVM")
        if self.architecture != host:
            raise ImageError(f"{where} is an image for the {self.architecture} architecture; this host is {host} "
                             f"(pull the {host} variant, e.g. skopeo's --override-arch {host})")

    def to_json(self) -> dict[str, object]:
        return {"architecture": self.architecture, "os": self.os, "entrypoint": list(self.entrypoint),
                "cmd": list(self.cmd), "env": [f"{k}={v}" for k, v in self.env], "working_dir": self.working_dir,
                "user": self.user, "labels": dict(self.labels)}


def _strings(value: object, what: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ImageError(f"{where}: config field {what} is not a list of strings")
    return tuple(value)


def _env(value: object, where: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for item in _strings(value, "Env", where):
        name, sep, val = item.partition("=")
        if not sep or not name:
            raise ImageError(f"{where}: Env entry {item!r} is not NAME=VALUE")
        pairs.append((name, val))
    return tuple(pairs)


def parse_config(document: object, where: str) -> ImageConfig:
    """The OCI image config JSON (``application/vnd.oci.image.config.v1+json``, or Docker's
    equivalent) as an ImageConfig; ImageError naming ``where`` and the field on bad input."""
    if not isinstance(document, Mapping):
        raise ImageError(f"{where}: the image config is not a JSON object")
    architecture = document.get("architecture")
    if not isinstance(architecture, str) or not architecture:
        raise ImageError(f"{where}: the image config names no architecture")
    os_name = document.get("os", "linux")
    if not isinstance(os_name, str):
        raise ImageError(f"{where}: config field os is not a string")
    run = document.get("config") or {}
    if not isinstance(run, Mapping):
        raise ImageError(f"{where}: config field config is not an object")
    working_dir = run.get("WorkingDir") or "/"
    if not isinstance(working_dir, str) or not working_dir.startswith("/"):
        raise ImageError(f"{where}: WorkingDir {working_dir!r} is not an absolute path")
    user = run.get("User") or ""
    if not isinstance(user, str):
        raise ImageError(f"{where}: User is not a string")
    labels = run.get("Labels") or {}
    if not isinstance(labels, Mapping):
        raise ImageError(f"{where}: Labels is not an object")
    return ImageConfig(
        architecture=architecture, os=os_name,
        entrypoint=_strings(run.get("Entrypoint"), "Entrypoint", where), cmd=_strings(run.get("Cmd"), "Cmd", where),
        env=_env(run.get("Env"), where), working_dir=working_dir, user=user,
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
    )


def config_from_json(stored: Mapping[str, object]) -> ImageConfig:
    """The inverse of :meth:`ImageConfig.to_json` (what the cache keeps)."""
    env_items = stored.get("env") or []
    labels = stored.get("labels") or {}
    assert isinstance(env_items, list) and isinstance(labels, dict)
    return ImageConfig(
        architecture=str(stored["architecture"]), os=str(stored.get("os", "linux")),
        entrypoint=tuple(str(a) for a in stored.get("entrypoint") or []),  # type: ignore[attr-defined]
        cmd=tuple(str(a) for a in stored.get("cmd") or []),  # type: ignore[attr-defined]
        env=tuple((str(e).partition("=")[0], str(e).partition("=")[2]) for e in env_items),
        working_dir=str(stored.get("working_dir") or "/"), user=str(stored.get("user") or ""),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
    )
