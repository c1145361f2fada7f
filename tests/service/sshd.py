"""A real OpenSSH server on loopback for the tests of the ssh transport (no VM needed).

:func:`running_sshd` starts Debian's ``/usr/sbin/sshd`` (``scripts/install.sh`` installs
openssh-server) in the foreground on 127.0.0.1 and a free port, with a throwaway host key, a
throwaway user key and its authorized_keys, all in a temporary folder; it writes a client
config naming it as the alias :data:`ALIAS` (host key pinned, StrictHostKeyChecking yes), so
``$CAPSA_SSH="ssh -F <config>"`` (:attr:`Sshd.env`) reaches it and nothing else on the machine
(the user's ~/.ssh is never read). The ``sshd`` session fixture shares one server per run.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import engine

SSHD = Path("/usr/sbin/sshd")  # sshd re-executes itself, so it must be run by absolute path
ALIAS = "capsa-test-sshd"
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without its privilege separation folder
START_TIMEOUT = 10.0
# The remote command: this venv's own code, so the tests run the serve --stdio being tested
REMOTE_COMMAND = f"{shlex.quote(sys.executable)} -m capsatui.cli"


@dataclass
class Sshd:
    """A running test sshd: its port, the client config reaching it and what ran it."""

    folder: Path
    port: int
    user: str
    config: Path  # the client's ssh config (Host ALIAS)
    log: Path  # sshd's own log (-e: its stderr)
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The environment that makes the engine's ssh use this server's config."""
        return {"CAPSA_SSH": f"ssh -F {shlex.quote(str(self.config))}"}

    def address(self, socket_path: Path | None, command: str = REMOTE_COMMAND) -> engine.ServiceAddress:
        """The ssh address of a service whose socket (on "the remote": here) is ``socket_path``."""
        return engine.ServiceAddress(kind="ssh", path=socket_path, host=ALIAS, command=command)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""


@contextlib.contextmanager
def running_sshd() -> Iterator[Sshd]:
    """An sshd on 127.0.0.1 for the length of the block; killed and its files removed after."""
    if not SSHD.exists():
        pytest.fail(f"{SSHD} is missing: install openssh-server (./scripts/install.sh does)")
    folder = Path(tempfile.mkdtemp(prefix="capsa-sshd-"))
    try:
        with _started(folder) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _started(folder: Path) -> Iterator[Sshd]:
    user = pwd.getpwuid(os.getuid()).pw_name
    host_key, user_key = folder / "host_ed25519", folder / "user_ed25519"
    for key in (host_key, user_key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "capsa-test", "-f", str(key)],
            check=True, capture_output=True,
        )  # fmt: skip
    shutil.copy(f"{user_key}.pub", folder / "authorized_keys")
    if os.getuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    # A port taken between our probe and sshd's bind makes sshd exit at once: try another.
    for _attempt in range(3):
        port = _free_port()
        server_config = _write_server_config(folder, port, host_key)
        log = folder / "sshd.log"
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(server_config)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True,  # its per-connection children die with it (killpg)
            )  # fmt: skip
        try:
            if _wait_accepting(port, process):
                config = _write_client_config(folder, port, user, user_key, host_key)
                yield Sshd(folder, port, user, config, log, process)
                return
        finally:
            _stop(process)
    pytest.fail(f"sshd did not start on 127.0.0.1:\n{log.read_text(errors='replace')}")


def _write_server_config(folder: Path, port: int, host_key: Path) -> Path:
    config = folder / "sshd_config"
    config.write_text(
        f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
AuthorizedKeysFile {folder / "authorized_keys"}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
# the temporary folder is not the user's home: sshd's ownership checks would refuse it
StrictModes no
UsePAM no
PidFile none
LogLevel INFO
AcceptEnv none
X11Forwarding no
AllowTcpForwarding no
"""
    )
    return config


def _write_client_config(folder: Path, port: int, user: str, user_key: Path, host_key: Path) -> Path:
    known_hosts = folder / "known_hosts"
    key_type, key = Path(f"{host_key}.pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{port} {key_type} {key}\n")
    config = folder / "ssh_config"
    config.write_text(
        f"""\
Host {ALIAS}
    HostName 127.0.0.1
    Port {port}
    User {user}
    IdentityFile {user_key}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    PasswordAuthentication no
    ControlMaster no
    ControlPath none
    LogLevel ERROR
Host *
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    IdentitiesOnly yes
    IdentityFile {user_key}
    LogLevel ERROR
"""
    )
    return config


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_accepting(port: int, process: subprocess.Popen[bytes]) -> bool:
    """True once sshd answers on ``port`` with its banner; False if it exited first."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
            if probe.recv(64).startswith(b"SSH-"):
                return True
        time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    """One test sshd for the whole run."""
    with running_sshd() as server:
        yield server
