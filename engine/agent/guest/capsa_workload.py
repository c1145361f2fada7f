"""An OCI sandbox's workload root, run by the capsa agent (``capsa_agent.py``) on request: the
image's layers (read-only block devices, erofs) stacked by overlayfs under a tmpfs for writes,
with /proc, /sys and /dev of the guest, a /run and /tmp of its own, and the guest's resolv.conf, hosts and hostname in place.

The agent itself stays in our system image (its Python is not the image's). While it serves a
workload request (exec, files) it enters the root with ``chroot`` and leaves it after, through
a descriptor of the real root it keeps (:class:`RootSwitch`): every path a request names, and
every process it starts, then resolve inside the image, absolute symlinks included, as they
would in a container. The VM is the boundary; the chroot is not a security measure.

Standard library only, imported as a sibling module in the guest.
"""
from __future__ import annotations

import os
import subprocess

BASE = "/var/lib/capsa-workload"  # not under /run: the workload gets a /run of its own
ROOT = BASE + "/root"
BUSYBOX = "/usr/lib/capsa/busybox"
_BINDS = ("proc", "sys", "dev")
_ETC_FILES = ("resolv.conf", "hosts", "hostname")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class WorkloadError(Exception):
    """The workload root could not be set up (the message says which step)."""


def _mount(*args: str) -> None:
    done = subprocess.run([BUSYBOX, "mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise WorkloadError(f"mount {' '.join(args)}: {(done.stderr or done.stdout).strip() or done.returncode}")


def mount_root(devices: list[str], working_dir: str) -> str:
    """Stack ``devices`` (bottom first) at ROOT; a no-op if it is already mounted (a clone of a
    template that mounted it). Returns ROOT."""
    if os.path.ismount(ROOT):
        return ROOT
    for index, device in enumerate(devices):
        layer = f"{BASE}/layers/{index}"
        os.makedirs(layer, exist_ok=True)
        _mount("-t", "erofs", "-o", "ro", device, layer)
    os.makedirs(f"{BASE}/rw", exist_ok=True)
    _mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", f"{BASE}/rw")
    os.makedirs(f"{BASE}/rw/upper", exist_ok=True)
    os.makedirs(f"{BASE}/rw/work", exist_ok=True)
    os.makedirs(ROOT, exist_ok=True)
    lower = ":".join(f"{BASE}/layers/{index}" for index in reversed(range(len(devices))))
    _mount("-t", "overlay", "-o", f"lowerdir={lower},upperdir={BASE}/rw/upper,workdir={BASE}/rw/work", "overlay", ROOT)
    for name in _BINDS:
        target = f"{ROOT}/{name}"
        _replace_with_dir(target)
        _mount("-o", "rbind", f"/{name}", target)
    for name, mode in (("tmp", "1777"), ("run", "755")):
        target = f"{ROOT}/{name}"
        _replace_with_dir(target)
        _mount("-t", "tmpfs", "-o", f"nosuid,nodev,mode={mode}", "tmpfs", target)
    etc = f"{ROOT}/etc"
    _replace_with_dir(etc)
    for name in _ETC_FILES:
        source, target = f"/etc/{name}", f"{etc}/{name}"
        if not os.path.exists(source):
            continue
        if os.path.islink(target) or os.path.isdir(target):
            _remove(target)  # e.g. resolv.conf -> ../run/systemd/resolve/stub-resolv.conf
        if not os.path.exists(target):
            with open(target, "w"):
                pass
        _mount("-o", "bind", source, target)
    work = ROOT + (working_dir if working_dir.startswith("/") else "/" + working_dir)
    if not os.path.isdir(work):
        if os.path.lexists(work):
            _remove(work)
        os.makedirs(work, exist_ok=True)  # Docker makes a missing WorkingDir too
    return ROOT


def _replace_with_dir(path: str) -> None:
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        _remove(path)
    os.makedirs(path, exist_ok=True)


def _remove(path: str) -> None:
    import shutil
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


class RootSwitch:
    """Enter the workload root and leave it again (``chroot`` both ways, via a descriptor of
    the real root: the agent runs as root with CAP_SYS_CHROOT)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.real = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.inside = False

    def enter(self) -> None:
        if not self.inside:
            os.chroot(self.root)
            os.chdir("/")
            self.inside = True

    def leave(self) -> None:
        if self.inside:
            os.fchdir(self.real)
            os.chroot(".")
            os.chdir("/")
            self.inside = False


def resolve_user(spec: str) -> tuple[int, int, list[int], str]:
    """``user``, ``uid``, ``user:group`` or ``uid:gid`` (OCI's User) as (uid, gid, groups,
    home), read from the current root's /etc/passwd and /etc/group as Docker does: a numeric
    uid with no entry runs with gid 0 and home /. ValueError naming an unknown name."""
    name, _, group = spec.partition(":")
    passwd = _table("/etc/passwd")
    entry = next((row for row in passwd if row[0] == name), None) if not name.isdigit() else \
        next((row for row in passwd if row[2] == name), None)
    if entry is None and not name.isdigit():
        raise ValueError(f"user {name!r} is not in the image's /etc/passwd")
    uid = int(name) if name.isdigit() else int(entry[2])  # type: ignore[index]
    gid = int(entry[3]) if entry is not None and len(entry) > 3 and entry[3].isdigit() else 0
    home = entry[5] if entry is not None and len(entry) > 5 and entry[5] else "/"
    groups_table = _table("/etc/group")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            row = next((r for r in groups_table if r[0] == group), None)
            if row is None or len(row) < 3 or not row[2].isdigit():
                raise ValueError(f"group {group!r} is not in the image's /etc/group")
            gid = int(row[2])
    login = entry[0] if entry is not None else ""
    extra = sorted({int(r[2]) for r in groups_table if len(r) > 3 and r[2].isdigit() and login and login in r[3].split(",")}
                   | {gid})
    return uid, gid, extra, home


def _table(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n").split(":") for line in handle if line.strip() and not line.startswith("#")]
    except OSError:
        return []
