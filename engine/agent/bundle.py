"""The guest agent's files as the sandbox image installs them, and how the guest starts it.

The agent is Python, standard library only. Its program lives in ``engine/agent/guest/`` and
shares the sans-IO framing module ``engine/agent/wire.py`` with the host; the image builder
copies all of them into one folder of the root filesystem, where they import each other as
top-level modules.
"""
from __future__ import annotations

from importlib import resources

AGENT_DIR = "/usr/lib/capsa/agent"
PORT_NAME = "capsa.agent"  # the virtserialport's name= (the guest reads it from sysfs)
PYTHON = "/usr/bin/python3"
# Through the launcher, so that the agent's modules load from bytecode (see run_capsa_agent.py).
AGENT_COMMAND: tuple[str, ...] = (
    PYTHON, "-E", "-s", f"{AGENT_DIR}/run_capsa_agent.py", "--port-name", PORT_NAME,
)
# What the image builder runs inside the root tree (chroot) to compile the agent's modules with
# the guest's own Python. checked-hash: a pyc serves only while its source is unchanged (the
# files' mtimes in the image are not the sources'; a source replaced in a guest recompiles).
PRECOMPILE_COMMAND: tuple[str, ...] = (
    PYTHON, "-E", "-s", "-m", "compileall", "-q", "--invalidation-mode", "checked-hash", AGENT_DIR,
)

# Modules of engine/agent/ that the guest needs beside its own program.
_SHARED_MODULES = ("wire.py", "paths.py")


def guest_agent_files() -> dict[str, bytes]:
    """Every file of the agent by its name inside ``AGENT_DIR``."""
    package = resources.files("engine.agent")
    files: dict[str, bytes] = {}
    for entry in package.joinpath("guest").iterdir():
        if entry.name.endswith(".py") and entry.is_file():
            files[entry.name] = entry.read_bytes()
    for name in _SHARED_MODULES:
        entry = package.joinpath(name)
        if entry.is_file():
            files[name] = entry.read_bytes()
    return files
