"""Where a pool service is: a Unix socket on this machine, or ``capsa-tui serve`` on another one over ssh.

    ServiceAddress.parse("ssh://me@box:2222")     # the remote's default socket, through `ssh`
    ServiceAddress.parse("unix:///run/x/pool.sock")
    ServiceAddress.parse("/run/x/pool.sock")      # the same
    ServiceAddress.parse("local")                 # engine.service.paths.service_socket_path()

The remote transport is the conventional one (``docker -H ssh://``, git over ssh): the client
runs the user's own ``ssh``, which runs ``capsa-tui serve --stdio`` on the other machine, and
that relays the bytes to the service's socket there (:mod:`engine.service.stdio`). So
authentication, keys, agents, ``~/.ssh/config`` and host trust all stay OpenSSH's; this module
only builds the command line. ``$CAPSA_SSH`` replaces the ``ssh`` program (split like a shell
would, as ``GIT_SSH_COMMAND`` is), e.g. ``ssh -F ~/.ssh/lab_config``; ``$CAPSA_HOST`` is the
address a client uses when it is given none.
"""
from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.service.errors import ServiceError
from engine.service.paths import service_socket_path

SSH_ENV = "CAPSA_SSH"
HOST_ENV = "CAPSA_HOST"
DEFAULT_COMMAND = "capsa-tui"

_FORMS = "ssh://[user@]host[:port], unix:///path/to/socket, an absolute socket path, or 'local'"
# A host name or ssh config alias; IPv6 addresses come in brackets and are checked apart. A
# leading '-' is refused although '--' precedes the host on ssh's command line: it can only
# be a mistake, and the message says so better than ssh would.
_HOST = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(%[A-Za-z0-9_.-]+)?")
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.\\$-]*")


@dataclass(frozen=True)
class ServiceAddress:
    """A pool service to connect to.

    ``kind="unix"``: ``path`` is the socket (None: :func:`service_socket_path` when connecting).
    ``kind="ssh"``: ``host`` (a name, an address or an alias of the user's ssh config) with an
    optional ``user`` and ``port``; ``path`` is the socket *on the remote* (None: the remote's
    default) and ``command`` the program run there, a shell fragment the remote login shell
    reads as written (so ``~/venv/bin/capsa-tui`` or ``/opt/venv/bin/python -m capsatui.cli``
    work); only the arguments appended to it are quoted.
    """

    kind: Literal["unix", "ssh"]
    path: Path | None = None
    host: str | None = None
    user: str | None = None
    port: int | None = None
    command: str = DEFAULT_COMMAND

    @classmethod
    def local(cls, socket: Path | str | None = None) -> ServiceAddress:
        """This machine's service: ``socket``, or the default socket when connecting."""
        return cls("unix", Path(socket) if socket is not None else None)

    @classmethod
    def parse(cls, text: str, *, command: str | None = None, socket: Path | str | None = None) -> ServiceAddress:
        """Read an address as a user writes it (``--host``, ``$CAPSA_HOST``).

        ``command`` is the remote program of an ssh address; ``socket`` the socket of an ssh
        address (on the remote) or of ``local``. Anything else than the forms above is a
        :class:`ServiceError` naming ``text`` and listing the forms.
        """
        spelled = text.strip()
        socket_path = Path(socket) if socket is not None else None
        if spelled == "local":
            return cls.local(socket_path)
        if spelled.startswith("ssh://"):
            host, user, port = _parse_ssh(text, spelled[len("ssh://") :])
            return cls("ssh", socket_path, host, user, port, command if command is not None else DEFAULT_COMMAND)
        if spelled.startswith("unix://"):
            path = spelled[len("unix://") :]
            if not path.startswith("/"):
                raise _bad(text, "a unix:// address names an absolute path (unix:///path/to/socket, three slashes)")
            return cls._unix(text, Path(path), socket_path)
        if spelled.startswith("/"):
            return cls._unix(text, Path(spelled), socket_path)
        if "://" in spelled:
            scheme = spelled.split("://", 1)[0]
            raise _bad(text, f"{scheme}:// is not a transport capsa-tui speaks")
        raise _bad(text, "it is empty" if not spelled else "it is not an address")

    @classmethod
    def _unix(cls, text: str, path: Path, socket: Path | None) -> ServiceAddress:
        if path == Path("/"):
            raise _bad(text, "it names no socket")
        if socket is not None and socket != path:
            raise _bad(text, f"it names the socket {path} and the socket option names {socket}; give one")
        return cls.local(path)

    def describe(self) -> str:
        """How messages name this address: ``ssh://me@box:2222`` or the socket's path."""
        if self.kind == "unix":
            return str(self.path if self.path is not None else service_socket_path())
        host = self.host or "?"
        text = "ssh://" + (f"{self.user}@" if self.user else "") + (f"[{host}]" if ":" in host else host)
        if self.port is not None:
            text += f":{self.port}"
        if self.path is not None:
            text += f" (socket {self.path})"
        return text

    def remote_command(self) -> str:
        """What ssh asks the remote to run: ``<command> serve --stdio [--socket <path>]``."""
        words = ["serve", "--stdio"]
        if self.path is not None:
            words += ["--socket", str(self.path)]
        return " ".join([self.command, *(shlex.quote(word) for word in words)])

    def ssh_argv(self, connect_timeout: float | None = None) -> list[str]:
        """The command that reaches this service: ``$CAPSA_SSH`` (default ``ssh``), then
        ``-T -o BatchMode=yes [-o ConnectTimeout=N] [-p PORT] [-l USER] -- HOST COMMAND``.

        ``BatchMode=yes``: the app owns the terminal and cannot answer ssh's password,
        passphrase or host-key prompts, so only keys (files or an agent) and hosts already in
        known_hosts work; anything else fails at once with ssh's own message rather than
        waiting on a prompt nobody sees. ``-T``: no terminal on the remote, so the bytes pass
        unchanged and no escape character is read. The remote command is one string (ssh
        hands it to the remote shell) with its arguments quoted.
        """
        if self.kind != "ssh" or not self.host:
            raise ServiceError(f"{self.describe()} is not an ssh address")
        spelled = os.environ.get(SSH_ENV, "")
        try:
            program = shlex.split(spelled)
        except ValueError as err:
            raise ServiceError(f"cannot read ${SSH_ENV} ({spelled!r}): {err}") from None
        argv = [*(program or ["ssh"]), "-T", "-o", "BatchMode=yes"]
        if connect_timeout is not None:
            # ssh's own limit on reaching the host, so an unreachable one fails with its message
            argv += ["-o", f"ConnectTimeout={max(1, math.ceil(connect_timeout))}"]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        return [*argv, "--", self.host, self.remote_command()]


def address_from_env() -> ServiceAddress | None:
    """``$CAPSA_HOST`` parsed, or None when it is unset or empty."""
    text = os.environ.get(HOST_ENV, "")
    if not text.strip():
        return None
    try:
        return ServiceAddress.parse(text)
    except ServiceError as err:
        raise ServiceError(f"${HOST_ENV}: {err}") from None


def _parse_ssh(text: str, rest: str) -> tuple[str, str | None, int | None]:
    """Host, user and port of the part of an ssh URL after ``ssh://``."""
    if rest.endswith("/"):
        rest = rest[:-1]  # ssh://box/ is ssh://box
    if any(mark in rest for mark in "/?#"):
        raise _bad(text, "an ssh address has no path or query; name the remote socket with the socket option")
    user: str | None = None
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
        if ":" in user:
            raise _bad(text, "an ssh address carries no password; ssh authenticates with keys or an agent")
        if not _USER.fullmatch(user):
            raise _bad(text, f"{user!r} is not a user name")
    port_text: str | None = None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise _bad(text, "the '[' of an IPv6 address is not closed")
        host, after = rest[1:end], rest[end + 1 :]
        if after:
            if not after.startswith(":"):
                raise _bad(text, f"{after!r} follows the IPv6 address")
            port_text = after[1:]
        if not _IPV6.fullmatch(host):
            raise _bad(text, f"{host!r} is not an IPv6 address")
    else:
        if rest.count(":") > 1:
            raise _bad(text, "an IPv6 address goes in brackets (ssh://[::1]:22)")
        host, colon, port_text_found = rest.partition(":")
        port_text = port_text_found if colon else None
        if not host:
            raise _bad(text, "it names no host")
        if not _HOST.fullmatch(host):
            raise _bad(text, f"{host!r} is not a host name")
    port: int | None = None
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _bad(text, f"the port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    return host, user, port


def _bad(text: str, why: str) -> ServiceError:
    return ServiceError(f"cannot use {text!r} as a service address: {why}; use {_FORMS}")
