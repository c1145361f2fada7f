"""Debian packages for the guest image, fetched with apt but never installed on the host.

``apt-cache show`` resolves names and versions, ``apt-get download`` fetches the ``.deb`` into
a cache directory, ``dpkg-deb -x`` unpacks it into a scratch directory.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ImageError

NO_APT_HELP = (
    "The default guest image is built from Debian packages and needs a Debian or Ubuntu host "
    "with apt-get, apt-cache and dpkg-deb. Otherwise boot your own kernel and initramfs: "
    'engine.LinuxDirectBoot("/path/vmlinuz", "/path/initrd") in code, or set CAPSA_KERNEL and '
    "CAPSA_INITRD to their paths."
)
UPDATE_HELP = "Run `apt-get update` first (fresh machines start with empty package lists)."
_STDERR_TAIL = 800


@dataclass(frozen=True)
class PackageRef:
    """One exact version of a binary package."""

    name: str
    version: str
    arch: str

    @property
    def deb_filename(self) -> str:
        """The file name ``apt-get download`` gives it (an epoch's ':' is written as %3a)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def require_tools() -> None:
    """Raise ImageError with the way out if the apt/dpkg tools are missing."""
    missing = [tool for tool in ("apt-cache", "apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise ImageError(f"{', '.join(missing)} not found. {NO_APT_HELP}")


def show(names: list[str]) -> dict[str, dict[str, str]]:
    """Candidate-version control fields of each package, by package name."""
    require_tools()
    out = _run(["apt-cache", "show", "--no-all-versions", *names], what=f"look up {', '.join(names)}")
    records: dict[str, dict[str, str]] = {}
    for stanza in out.split("\n\n"):
        fields = _fields(stanza)
        if "Package" in fields:
            records.setdefault(fields["Package"], fields)
    missing = [name for name in names if name not in records]
    if missing:
        raise ImageError(f"apt knows no package {', '.join(missing)}. {UPDATE_HELP}")
    return records


def ref(fields: dict[str, str]) -> PackageRef:
    """A PackageRef from an ``apt-cache show`` record."""
    return PackageRef(fields["Package"], fields["Version"], fields.get("Architecture", "amd64"))


def resolve_metapackage(meta: str, prefix: str, extra: list[str]) -> tuple[PackageRef, list[PackageRef]]:
    """Resolve ``meta`` to the dependency whose name starts with ``prefix``, plus ``extra`` packages.

    Metapackages pin the real package with ``(= version)``; then one apt-cache call does it all.
    """
    records = show([meta, *extra])
    depends = records[meta].get("Depends", "")
    match = re.search(rf"(?:^|,)\s*({re.escape(prefix)}[^\s,|(]+)\s*(?:\(=\s*([^)\s]+)\s*\))?", depends)
    if match is None:
        raise ImageError(f"{meta} does not depend on a {prefix}* package (Depends: {depends!r})")
    name, pinned = match.group(1), match.group(2)
    if pinned:
        real = PackageRef(name, pinned, records[meta].get("Architecture", "amd64"))
    else:
        real = ref(show([name])[name])
    return real, [ref(records[name]) for name in extra]


def download(package: PackageRef, downloads: Path) -> Path:
    """The package's .deb in ``downloads``, fetched with ``apt-get download`` unless already there."""
    target = downloads / package.deb_filename
    if target.exists():
        return target
    require_tools()
    downloads.mkdir(parents=True, exist_ok=True)
    # Download into a private directory and rename, so a concurrent builder never sees half a file.
    with tempfile.TemporaryDirectory(prefix=".dl-", dir=downloads) as scratch:
        os.chmod(scratch, 0o755)  # lets apt's unprivileged _apt user write when we run as root
        _run(["apt-get", "download", f"{package.name}={package.version}"], what=f"download {package}", cwd=scratch)
        fetched = sorted(Path(scratch).glob("*.deb"))
        if not fetched:
            raise ImageError(f"apt-get download {package} reported success but left no .deb file")
        os.replace(fetched[0], target)
    return target


def unpack(deb: Path, destination: Path) -> None:
    """Extract the package's files under ``destination`` (nothing is installed)."""
    require_tools()
    destination.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(destination)], what=f"unpack {deb.name}")


def _fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _run(argv: list[str], *, what: str, cwd: str | None = None) -> str:
    env = {**os.environ, "LC_ALL": "C"}  # stable, parseable messages
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    except OSError as err:
        raise ImageError(f"could not run {argv[0]}: {err}. {NO_APT_HELP}") from err
    if done.returncode != 0:
        tail = done.stderr.strip()[-_STDERR_TAIL:]
        hint = f" {UPDATE_HELP}" if _looks_unknown(tail) else ""
        raise ImageError(f"could not {what}: `{' '.join(argv)}` exited with {done.returncode}.{hint}\n{tail}")
    return done.stdout


def _looks_unknown(stderr: str) -> bool:
    markers = ("Unable to locate package", "No packages found", "has no installation candidate",
               "Can't select", "not found")
    return any(marker in stderr for marker in markers)
